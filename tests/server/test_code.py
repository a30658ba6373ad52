"""The code interpreter over HTTP: the SDK's run_code and contexts, raw NDJSON, errors,
tenants, and ``corral sandbox run-code``. Every response is checked against the OpenAPI
document by the server fixture."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import pytest
from typer.testing import CliRunner

from corral import (
    AsyncSandbox,
    Execution,
    InvalidArgumentError,
    NotFoundError,
    Result,
    Sandbox,
)
from corral.api import models
from corral.cli import app

from .conftest import Server, assert_error


def test_run_code_state_results_and_errors(default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    ex = sb.run_code("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\ndf")
    assert isinstance(ex, Execution) and ex.error is None and ex.context == "default"
    assert ex.results[0].is_main_result and "<table" in (ex.results[0].html or "")
    assert sb.run_code("df.a.sum()").text == "3"  # state kept between calls

    ex = sb.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    assert base64.b64decode(ex.results[0].png or "")[:8] == b"\x89PNG\r\n\x1a\n"
    assert ex.results[0].formats() == ["text", "png"]

    ex = sb.run_code("print('out')\nraise ValueError('bad value')")
    assert ex.logs.stdout == ["out\n"] and ex.error is not None
    assert (ex.error.name, ex.error.value) == ("ValueError", "bad value")
    assert "raise ValueError" in ex.error.traceback

    ex = sb.run_code("import time; time.sleep(60)", timeout=1)
    assert ex.error is not None and ex.error.name == models.TIMEOUT_ERROR
    assert sb.run_code("df.a.max()").text == "2"


def test_streaming_callbacks_and_contexts(default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    ctx = sb.code.create_context(cwd="/tmp", env={"WHO": "ctx"})
    assert ctx.cwd == "/tmp" and ctx.language == "python"
    first = threading.Event()
    chunks: list[str] = []
    results: list[Result] = []
    errors: list[str] = []

    def on_stdout(text: str) -> None:
        chunks.append(text)
        first.set()

    cell = ("import os, time\nprint(os.environ['WHO'], flush=True)\n"
            "for _ in range(600):\n    if os.path.exists('/tmp/go'): break\n"
            "    time.sleep(0.05)\nprint('end')\nfrom IPython.display import display\n"
            "display({'x': 1}, raw=False)\n1/0")
    outcome: list[Execution] = []
    worker = threading.Thread(target=lambda: outcome.append(sb.run_code(
        cell, context=ctx, on_stdout=on_stdout, on_result=results.append,
        on_error=lambda e: errors.append(e.name))))
    worker.start()
    assert first.wait(60), "stdout did not stream while the cell ran"
    assert not outcome
    sb.files.write("/tmp/go", b"")
    worker.join(60)
    [ex] = outcome
    assert "".join(chunks) == "ctx\nend\n" and errors == ["ZeroDivisionError"]
    assert [r.text for r in results] == ["{'x': 1}"]
    assert ex.error is not None and ex.error.name == "ZeroDivisionError"

    # The default context is separate from ctx and appears once used.
    sb.run_code("only_default = 1")
    assert sb.run_code("'only_default' in dir()", context=ctx.id).text == "False"
    assert {c.id for c in sb.code.list_contexts()} == {ctx.id, "default"}
    assert sb.code.restart_context(ctx).id == ctx.id
    assert sb.run_code("'os' in dir()", context=ctx).text == "False"
    sb.code.delete_context(ctx)
    with pytest.raises(NotFoundError):
        sb.run_code("1", context=ctx)


def test_interrupt_over_http(default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    started = threading.Event()
    outcome: list[Execution] = []
    worker = threading.Thread(target=lambda: outcome.append(sb.run_code(
        "kept = 5\nprint('go', flush=True)\nwhile True: pass", timeout=120,
        on_stdout=lambda _: started.set())))
    worker.start()
    assert started.wait(60)
    sb.code.interrupt()
    worker.join(60)
    [ex] = outcome
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
    assert sb.run_code("kept").text == "5"


def test_async_sandbox_runs_code(server: Server) -> None:
    async def main() -> None:
        async with await AsyncSandbox.create("python", timeout=300, **server.sdk()) as sb:
            seen: list[str] = []
            ex = await sb.run_code("for i in range(3): print(i)", on_stdout=seen.append)
            assert "".join(seen) == "0\n1\n2\n" and ex.error is None
            assert (await sb.code.run("6 * 7")).text == "42"

    asyncio.run(main())


def test_raw_http_ndjson_and_errors(server: Server, default_sandbox: Sandbox) -> None:
    base = f"/v1/sandboxes/{default_sandbox.id}/code"
    with server.http(server.key) as http:
        response = http.post(base, json={"code": "print('a')\n7", "stream": True})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.text.splitlines() if line]
        assert [e["type"] for e in events] == ["stdout", "result", "end"]
        assert events[1]["result"]["text"] == "7" and events[1]["result"]["is_main_result"]
        assert events[2]["context"] == "default"

        body = http.post(base, json={"code": "x = 1"}).json()
        assert body["error"] is None and body["results"] == []

        assert_error(http.post(base, json={"code": "1", "context": "ctx-0000000000000000"}),
                     404, "not_found")
        message = assert_error(http.post(base, json={"code": "1", "language": "cobol"}),
                               400, "invalid_argument")
        assert "unknown language" in message
        assert_error(http.post(base, json={"code": "#" * (models.MAX_CODE + 1)}),
                     400, "invalid_argument")
        assert_error(http.post(base, json={"code": "1", "timeout": -1}), 400,
                     "invalid_argument")
        assert_error(http.post(base, json={"cmd": "1"}), 400, "invalid_argument")
        assert_error(http.post(f"{base}/contexts", json={"language": "cobol"}), 400,
                     "invalid_argument")
        assert_error(http.post(f"{base}/contexts/nope/restart"), 404, "not_found")
        assert_error(http.delete(f"{base}/contexts/nope"), 404, "not_found")

    # Another tenant sees nothing of it, exactly as if it did not exist.
    with server.http(server.other_key) as http:
        assert_error(http.get(f"{base}/contexts"), 404, "not_found")
        assert_error(http.post(base, json={"code": "1"}), 404, "not_found")
    with pytest.raises(InvalidArgumentError):
        default_sandbox.run_code("1", timeout=0)


def test_cli_run_code(server: Server, default_sandbox: Sandbox) -> None:
    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key})
    sid = default_sandbox.id
    ran = cli.invoke(app, ["sandbox", "run-code", sid, "total = 40\nprint('hi')\ntotal + 2"])
    assert ran.exit_code == 0, ran.output
    assert ran.stdout == "hi\n42\n"
    failed = cli.invoke(app, ["sandbox", "run-code", sid, "total / 0"])
    assert failed.exit_code == 1 and "ZeroDivisionError" in failed.stderr
    slow = cli.invoke(app, ["sandbox", "run-code", "--timeout", "1", sid,
                            "import time; time.sleep(30)"])
    assert slow.exit_code == 124
    piped = cli.invoke(app, ["sandbox", "run-code", "--json", sid, "-"], input="total\n")
    assert piped.exit_code == 0 and json.loads(piped.stdout)["results"][0]["text"] == "40"


def test_bash_contexts_over_http(server: Server, default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    seen: list[str] = []
    ex = sb.run_code("x=5; cd /tmp; echo $x; echo warn >&2", language="bash",
                     on_stdout=seen.append)
    assert (ex.error, ex.context, ex.results, seen) == (None, "default-bash", [], ["5\n"])
    assert ex.logs.stderr == ["warn\n"]
    ex = sb.run_code("echo $x $PWD; false", language="bash")
    assert ex.logs.stdout == ["5 /tmp\n"] and ex.error is not None
    assert (ex.error.name, ex.error.value) == (models.EXIT_STATUS, "1")
    ctx = sb.code.create_context("bash", cwd="/work")
    assert ctx.language == "bash"
    assert sb.run_code("echo \"[$x]\"", context=ctx).logs.stdout == ["[]\n"]
    assert {(c.id, c.language) for c in sb.code.list_contexts()} == {
        ("default-bash", "bash"), (ctx.id, "bash")}

    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key})
    ran = cli.invoke(app, ["sandbox", "run-code", "--language", "bash", sb.id, "echo $x"])
    assert (ran.exit_code, ran.stdout) == (0, "5\n"), ran.output
    failed = cli.invoke(app, ["sandbox", "run-code", "--language", "bash", sb.id, "(exit 4)"])
    assert failed.exit_code == 1 and "ExitStatus: 4" in failed.stderr

    with server.http() as http:  # the published document names the languages
        schemas = http.get("/openapi.json").json()["components"]["schemas"]
    for name in ("RunCodeRequest", "ContextCreate", "CodeContext"):
        assert "bash" in json.dumps(schemas[name]["properties"]["language"]), name


def test_a_cells_own_env_and_a_stream_left_mid_cell(server: Server,
                                                     default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    show = "import os\nos.environ.get('ONE')"
    assert sb.run_code(show, env={"ONE": "1"}).text == "'1'"
    assert sb.run_code(show).text is None
    base = f"/v1/sandboxes/{sb.id}/code"
    with server.http(server.key) as http:
        message = assert_error(http.post(base, json={"code": "1", "env": {"A-B": "x"}}),
                               400, "invalid_argument")
        assert "environment variable name" in message
        sleeper = ("import time\nstopped = False\ntry:\n    print('go', flush=True)\n"
                   "    time.sleep(3600)\nexcept KeyboardInterrupt:\n    stopped = True\n")
        with http.stream("POST", base, json={"code": sleeper, "stream": True}) as answer:
            assert json.loads(next(answer.iter_lines()))["text"] == "go\n"
        # Leaving interrupted the cell, and the next one waited for it to stop.
        assert http.post(base, json={"code": "stopped"}).json()["results"][0]["text"] == "True"


def test_other_languages_through_the_api_and_sdk(server: Server,
                                                 code_interpreter_image: str) -> None:
    with Sandbox.create(code_interpreter_image, timeout=600, resources={"memory": "2G"},
                        **server.sdk()) as sb:
        ex = sb.run_code("v <- c(1, 2, 3)\nsum(v)", language="r")
        assert ex.error is None and ex.results[0].text == "[1] 6"
        ctx = sb.code.create_context("java")
        assert (ctx.language, ctx.id) == ("java", ctx.id)
        assert sb.run_code("var s = \"ab\".repeat(2);\ns", context=ctx).text == "abab"
        seen: list[str] = []
        ex = sb.run_code("for (const i of [1, 2]) console.log(i)", language="typescript",
                         on_stdout=seen.append)
        assert ex.error is None and "".join(seen) == "1\n2\n"
        ex = sb.run_code("JSON.parse('{')", language="javascript")
        assert ex.error is not None and ex.error.name == "SyntaxError"
        # tslab checks JavaScript's names as TypeScript's, before it runs anything.
        ex = sb.run_code("undefinedName + 1", language="javascript")
        assert ex.error is not None and "Cannot find name 'undefinedName'" in ex.error.value
        languages = sorted(c.language for c in sb.code.list_contexts())
        assert languages == ["java", "javascript", "r", "typescript"]
    with Sandbox.create("python", timeout=600, **server.sdk()) as sb:
        with pytest.raises(InvalidArgumentError, match="the code-interpreter image has it"):
            sb.run_code("1", language="java")
