"""E2B's code interpreter under ``/e2b`` (docs/research/e2b-protocol.md §6): ``/execute``
as NDJSON lines and ``/contexts``, by hand over HTTP (tokens, refusals, the lines' shape,
a client leaving mid-cell) and by the real ``e2b-code-interpreter`` SDKs, sync and async,
on both release lines (each in the virtualenv of test_e2b_sdk.py, with the code
interpreter package added).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server
from .test_e2b_control import assert_e2b_error, e2b_client, e2b_sandbox
from .test_e2b_sdk import sdk_python

DRIVER = Path(__file__).with_name("e2b_interpreter_drive.py")
#: The code interpreter release each e2b line pairs with (its ``Requires-Dist``).
INTERPRETER = {"2.45.1": "2.10.0", "2.63.0": "2.11.5"}
PNG_SIGNATURE = "89504e470d0a1a0a"


@pytest.fixture
def box(server: Server) -> Iterator[dict[str, Any]]:
    """A sandbox of tenant alpha's made through E2B's create, as the code interpreter SDK
    makes it: its id and tokens."""
    with e2b_sandbox(server, "code-interpreter-v1") as body:
        yield body


def jupyter(server: Server, box: dict[str, Any], **tokens: str) -> httpx.Client:
    """A client as the SDK's code interpreter one: no key, the sandbox's id and port, and
    ``tokens`` (header: value) — by default the traffic token alone, as ``/contexts``."""
    headers = {"E2b-Sandbox-Id": box["sandboxID"], "E2b-Sandbox-Port": "49999"}
    headers.update(tokens or {"E2B-Traffic-Access-Token": box["trafficAccessToken"]})
    return httpx.Client(base_url=server.url + "/e2b", timeout=180.0, headers=headers)


def lines(answer: httpx.Response) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in answer.text.splitlines()]


def test_execute_answers_e2b_lines(server: Server, box: dict[str, Any]) -> None:
    with jupyter(server, box, **{"X-Access-Token": box["envdAccessToken"]}) as client:
        seen = lines(client.post("/execute", json={
            "code": "print('hi')\nimport os\nos.environ['ONE']", "context_id": None,
            "language": None, "env_vars": {"ONE": "1"}}))
        assert [line["type"] for line in seen] == [
            "stdout", "result", "number_of_executions", "end_of_execution"]
        assert seen[0]["text"] == "hi\n" and isinstance(seen[0]["timestamp"], int)
        assert seen[1] == {"type": "result", "text": "'1'", "is_main_result": True}
        assert seen[2] == {"type": "number_of_executions", "execution_count": 1}
        seen = lines(client.post("/execute", json={
            "code": "from IPython.display import JSON, HTML, display\n"
                    "display(HTML('<b>b</b>'))\nJSON({'a': [1, 2]})", "language": "python"}))
        assert seen[0] == {"type": "result", "html": "<b>b</b>", "text": seen[0]["text"],
                           "is_main_result": False}
        assert seen[1]["json"] == {"a": [1, 2]} and seen[1]["is_main_result"] is True
        seen = lines(client.post("/execute", json={"code": "1 / 0"}))
        [error] = [line for line in seen if line["type"] == "error"]
        assert (error["name"], error["value"]) == ("ZeroDivisionError", "division by zero")
        assert "1 / 0" in error["traceback"]
        seen = lines(client.post("/execute", json={"code": "echo $((1 + 1))",
                                                   "language": "bash"}))
        assert seen[0]["type"] == "stdout" and seen[0]["text"] == "2\n"


def test_contexts_take_the_traffic_token_alone(server: Server, box: dict[str, Any]) -> None:
    with jupyter(server, box) as client:
        created = client.post("/contexts", json={"language": "python", "cwd": "/tmp"})
        assert created.status_code == 200, created.text
        context = created.json()
        assert set(context) == {"id", "language", "cwd"}
        assert (context["language"], context["cwd"]) == ("python", "/tmp")
        listed = client.get("/contexts")
        assert listed.status_code == 200 and context in listed.json()
        run = lines(client.post("/execute", json={"code": "import os; os.getcwd()",
                                                  "context_id": context["id"]}))
        assert run[0]["text"] == "'/tmp'"
        assert client.post(f"/contexts/{context['id']}/restart").status_code == 204
        assert client.delete(f"/contexts/{context['id']}").status_code == 204
        assert context not in client.get("/contexts").json()
        assert_e2b_error(client.delete(f"/contexts/{context['id']}"), 404)
        assert_e2b_error(client.post("/execute", json={"code": "1",
                                                       "context_id": context["id"]}), 404)
    # Only the sandbox's own tokens open it: not another's, not none, not a key.
    with jupyter(server, box, **{"E2B-Traffic-Access-Token": box["envdAccessToken"]}) as c:
        assert_e2b_error(c.get("/contexts"), 401)
    with jupyter(server, box, **{"X-Api-Key": server.key}) as client:
        assert_e2b_error(client.get("/contexts"), 401)
    with e2b_client(server, server.key) as control:
        other = control.post("/v2/sandboxes", json={"templateID": "base"}).json()
        try:
            with jupyter(server, box, **{"E2B-Traffic-Access-Token":
                                         other["trafficAccessToken"]}) as client:
                assert_e2b_error(client.post("/execute", json={"code": "1"}), 401)
        finally:
            control.delete(f"/sandboxes/{other['sandboxID']}")


@pytest.mark.parametrize(("body", "says"), [
    ({"code": "1", "language": "cobol"}, "language 'cobol' is not supported"),
    ({"code": "1", "language": "python", "context_id": "default"}, "exclusive"),
    ({"code": "1", "env_vars": {"A=B": "x"}}, "environment variable name"),
    ({"code": "1", "env_vars": {"A": 1}}, "env_vars"),
    ({"code": 1}, "code"),
    ({"code": "#" * (512 * 1024 + 1)}, "code"),
])
def test_execute_refusals_are_e2b_400s(server: Server, box: dict[str, Any],
                                       body: dict[str, Any], says: str) -> None:
    with jupyter(server, box) as client:
        answer = client.post("/execute", json=body)
        assert_e2b_error(answer, 400)
        assert says in answer.json()["message"]


def test_context_refusals(server: Server, box: dict[str, Any]) -> None:
    with jupyter(server, box) as client:
        answer = client.post("/contexts", json={"language": "cobol"})
        assert_e2b_error(answer, 400)
        assert "supported languages: python, bash, r, javascript, typescript, java" \
            in answer.json()["message"]
        assert_e2b_error(client.post("/contexts", json={"cwd": "/no/such/dir"}), 404)
        assert_e2b_error(client.post("/contexts", json={"cwd": "rel\0"}), 400)
        assert_e2b_error(client.post("/contexts/ctx-0000000000000000/restart"), 404)
    gone = dict(box, sandboxID="sbx-0000000000000000")
    with jupyter(server, gone) as client:
        assert_e2b_error(client.get("/contexts"), 401)  # its token is not this one's


def test_the_python_image_names_the_image_with_the_other_kernels(server: Server) -> None:
    with e2b_client(server, server.key) as control:
        base = control.post("/v2/sandboxes", json={"templateID": "base"}).json()
        try:
            with jupyter(server, base) as client:
                for language in ("r", "java", "typescript", "javascript"):
                    answer = client.post("/contexts", json={"language": language})
                    assert_e2b_error(answer, 400)
                    assert (f"this image has no {language} kernel" in answer.json()["message"]
                            and "the code-interpreter image has it" in answer.json()["message"])
                answer = client.post("/execute", json={"code": "1", "language": "r"})
                assert_e2b_error(answer, 400)
                assert "the code-interpreter image has it" in answer.json()["message"]
        finally:
            control.delete(f"/sandboxes/{base['sandboxID']}")


def test_a_client_leaving_interrupts_the_cell(server: Server, box: dict[str, Any]) -> None:
    sleeper = ("import time\ninterrupted = False\ntry:\n    time.sleep(3600)\n"
               "except KeyboardInterrupt:\n    interrupted = True\n    raise\n")
    with jupyter(server, box) as client:
        with client.stream("POST", "/execute", json={"code": "print('go', flush=True)\n"
                                                             + sleeper}) as answer:
            first = json.loads(next(answer.iter_lines()))
            assert first["text"] == "go\n"
        # The context waits for the cell before it runs the next one: only an interrupt
        # lets this one run within the sandbox's lifetime.
        seen = lines(client.post("/execute", json={"code": "interrupted"}))
        assert seen[0].get("text") == "True", seen


@pytest.mark.parametrize("version", ["2.45.1", "2.63.0"])
def test_the_real_code_interpreter_sdk(server: Server, version: str,
                                       code_interpreter_image: str) -> None:
    python = sdk_python(version)
    if subprocess.run([str(python), "-c", "import e2b_code_interpreter"]).returncode:
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"e2b=={version}", f"e2b-code-interpreter=={INTERPRETER[version]}"],
            capture_output=True, text=True, timeout=600)
        if installed.returncode:
            pytest.skip(f"could not install e2b-code-interpreter (offline?): "
                        f"{installed.stderr.strip()[-300:]}")
    key = server.keys.create("alpha", e2b=True).key
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "E2B_API_URL": server.url + "/e2b", "E2B_SANDBOX_URL": server.url + "/e2b",
           "E2B_API_KEY": key, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    ran = subprocess.run([str(python), str(DRIVER)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-4000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])

    sync = seen["sync"]
    # code-interpreter-v1 starts the code-interpreter image where it is built.
    assert sync["template"] == "code-interpreter"  # get_info names the image it started
    assert sync["first"] == {"stdout": ["hi\n"], "stderr": [], "text": "42", "count": 1,
                             "error": None, "results": [["text"]]}
    assert sync["streamed"] == ["hi\n"]
    name, value, traceback = sync["error"]["error"]
    assert (name, value) == ("ZeroDivisionError", "division by zero")
    assert "return 1 / 0" in traceback and sync["error"]["count"] == 2
    assert sync["plot"] == [[["png", "text"]], PNG_SIGNATURE]
    with_env, without = sync["env"]
    assert (with_env["stdout"], with_env["text"]) == (["a b\n"], "'a b'")
    assert (without["stdout"], without["text"]) == (["\n"], None)
    language, cwd, context_id = sync["context"]
    assert (language, cwd) == ("python", "/tmp")
    assert sync["in_context"] == "(5, '/tmp')"
    assert sync["not_across"][0] == "NameError"
    assert context_id in sync["listed"] and "default" in sync["listed"]
    assert sync["restarted"][0] == "NameError"
    assert context_id not in sync["listed_after"]
    assert sync["removed_run"][0] == "NotFoundException"
    assert sync["bash"]["stdout"] == ["5\n"] and sync["bash"]["error"] is None
    assert sync["bash_again"]["stdout"] == ["2 /tmp\n"]
    assert sync["bash_again"]["error"][:2] == ["ExitStatus", "1"]
    assert sync["bash_context"] == ["bash", ["1\n"]]
    for refusal in sync["unsupported"]:
        assert refusal[0] == "SandboxException" and "400" in refusal[1]
        assert "is not supported" in refusal[1], refusal
    assert sync["cancelled"][0] == "TimeoutException"
    assert sync["after_cancel"]["text"] == "(True, 41)"

    done = seen["async"]
    assert done["first"]["text"] == "42" and done["first"]["stdout"] == ["hi\n"]
    assert done["env"][0]["text"] == "'a b'" and done["env"][1]["text"] is None
    assert done["in_context"] == "5" and done["not_across"][0] == "NameError"
    assert done["listed"] is True and done["listed_after"] is False
    assert done["restarted"][0] == "NameError"
    assert done["bash"]["stdout"] == ["5\n"]
    assert done["unsupported"][0] == "SandboxException"
    assert "language 'cobol' is not supported" in done["unsupported"][1]
    assert done["cancelled"][0] == "TimeoutException"
    assert done["after_cancel"]["text"] == "(True, 41)"

    other = seen["languages"]
    assert other["template"] == "code-interpreter"
    declared, value, printed, failed, again = other["r"]
    assert declared["error"] is None and value["error"] is None
    # IRkernel shows values as display data: a result, but not the main one (no text).
    assert value["text"] is None and value["results"] == [["html", "latex", "markdown", "text"]]
    assert printed["stdout"] == ['[1] "hi"\n']
    assert failed["error"][0] == "ERROR" and "boom" in failed["error"][1]
    assert again["results"] == value["results"]
    for language in ("javascript", "typescript"):
        declared, value, printed, failed, again = other[language]
        assert declared["error"] is None and value["stdout"] == ["42\n"]  # tslab prints it
        assert printed["stdout"] == ["hi\n"] and again["stdout"] == ["41\n"]
    assert other["javascript"][3]["error"][:2] == ["Error", "boom"]
    assert "not assignable to type 'string'" in other["typescript"][3]["error"][1]
    declared, value, printed, failed, again = other["java"]
    assert declared["error"] is None and (value["text"], value["count"]) == ("42", 2)
    assert printed["stdout"] == ["hi\n"] and again["text"] == "41"
    assert failed["error"][0] == "RuntimeException" and "boom" in failed["error"][1]
    assert other["r_context"] == ["r", '[1] "/tmp"']
