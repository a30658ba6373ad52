"""Run by test_e2b_interpreter.py inside a virtualenv holding one e2b and one
e2b-code-interpreter release, never by pytest: drives Corral's E2B code interpreter
(``run_code``, code contexts) with the SDK's sync and async classes and prints what it saw
as one JSON object on the last line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from typing import Any

from e2b import TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox

#: Waits forever unless interrupted, then notes it (the next cell reads ``interrupted``).
SLEEPER = ("import time\ninterrupted = False\ntry:\n    time.sleep(3600)\n"
           "except KeyboardInterrupt:\n    interrupted = True\n    raise\n")
PLOT = ("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()")
#: Prints ONE as a subprocess sees it; the cell's value is ONE as Python sees it.
ENV = ("import os, subprocess\n"
       "out = subprocess.run('echo $ONE', shell=True, capture_output=True, text=True)\n"
       "print(out.stdout, end='')\nos.environ.get('ONE')")


#: For each other language: a declaration, a value, a print, an error, the value again.
LANGUAGE_CELLS = {
    "r": ["x <- 41", "x + 1", 'print("hi")', 'stop("boom")', "x"],
    "javascript": ["let x = 41", "x + 1", 'console.log("hi")', 'throw new Error("boom")', "x"],
    "typescript": ["let x: number = 41", "x + 1", 'console.log("hi")', "const s: string = 1",
                   "x"],
    "java": ["int x = 41;", "x + 1", 'System.out.println("hi");',
             'throw new RuntimeException("boom");', "x"],
}


def refused(call: Any) -> list[str] | None:
    """The exception ``call()`` raised, as [type name, message], or None."""
    try:
        call()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None


def execution(ex: Any) -> dict[str, Any]:
    error = ex.error
    return {"stdout": ex.logs.stdout, "stderr": ex.logs.stderr, "text": ex.text,
            "count": ex.execution_count,
            "error": None if error is None else [error.name, error.value, error.traceback],
            "results": [sorted(r.formats()) for r in ex.results]}


def sync_flow() -> dict[str, Any]:
    sb = Sandbox.create(timeout=300)
    try:
        seen: dict[str, Any] = {"template": sb.get_info().template_id}
        streamed: list[str] = []
        seen["first"] = execution(sb.run_code("print('hi')\nx = 41\nx + 1",
                                              on_stdout=lambda m: streamed.append(m.line)))
        seen["streamed"] = streamed
        seen["error"] = execution(sb.run_code("def f():\n    return 1 / 0\nf()"))
        plot = sb.run_code(PLOT)
        png = plot.results[0].png if plot.results else None
        seen["plot"] = [execution(plot)["results"],
                        base64.b64decode(png)[:8].hex() if png else None]
        seen["env"] = [execution(sb.run_code(ENV, envs={"ONE": "a b"})),
                       execution(sb.run_code(ENV))]

        ctx = sb.create_code_context(cwd="/tmp")
        seen["context"] = [ctx.language, ctx.cwd, ctx.id]
        sb.run_code("y = 5", context=ctx)
        seen["in_context"] = sb.run_code("import os\ny, os.getcwd()", context=ctx).text
        seen["not_across"] = execution(sb.run_code("y"))["error"]
        seen["listed"] = sorted(c.id for c in sb.list_code_contexts())
        sb.restart_code_context(ctx)
        seen["restarted"] = execution(sb.run_code("y", context=ctx))["error"]
        sb.remove_code_context(ctx.id)
        seen["listed_after"] = sorted(c.id for c in sb.list_code_contexts())
        seen["removed_run"] = refused(lambda: sb.run_code("1", context=ctx))

        seen["bash"] = execution(sb.run_code("n=2; echo $((n + 3)); cd /tmp", language="bash"))
        seen["bash_again"] = execution(sb.run_code("echo $n $PWD; false", language="bash"))
        shell = sb.create_code_context(language="bash")
        seen["bash_context"] = [shell.language,
                                sb.run_code("echo $ONE", context=shell,
                                            envs={"ONE": "1"}).logs.stdout]
        seen["unsupported"] = [refused(lambda: sb.run_code("1", language="cobol")),
                               refused(lambda: sb.create_code_context(language="cobol"))]

        seen["cancelled"] = refused(lambda: sb.run_code(SLEEPER, timeout=3))
        seen["after_cancel"] = execution(sb.run_code("interrupted, x", timeout=120))
    finally:
        sb.kill()
    return seen


async def async_flow() -> dict[str, Any]:
    sb = await AsyncSandbox.create(timeout=300)
    try:
        seen: dict[str, Any] = {}
        seen["first"] = execution(await sb.run_code("print('hi')\nx = 41\nx + 1"))
        seen["env"] = [execution(await sb.run_code(ENV, envs={"ONE": "a b"})),
                       execution(await sb.run_code(ENV))]
        ctx = await sb.create_code_context()
        await sb.run_code("y = 5", context=ctx)
        seen["in_context"] = (await sb.run_code("y", context=ctx)).text
        seen["not_across"] = execution(await sb.run_code("y"))["error"]
        seen["listed"] = ctx.id in [c.id for c in await sb.list_code_contexts()]
        await sb.restart_code_context(ctx)
        seen["restarted"] = execution(await sb.run_code("y", context=ctx))["error"]
        await sb.remove_code_context(ctx)
        seen["listed_after"] = ctx.id in [c.id for c in await sb.list_code_contexts()]
        seen["bash"] = execution(await sb.run_code("echo $((2 + 3))", language="bash"))
        try:
            await sb.run_code("1", language="cobol")
            seen["unsupported"] = None
        except Exception as exc:
            seen["unsupported"] = [type(exc).__name__, str(exc)]
        try:
            await sb.run_code(SLEEPER, timeout=3)
            seen["cancelled"] = None
        except TimeoutException as exc:
            seen["cancelled"] = [type(exc).__name__, str(exc)]
        seen["after_cancel"] = execution(await sb.run_code("interrupted, x", timeout=120))
    finally:
        await sb.kill()
    return seen


def languages_flow() -> dict[str, Any]:
    """R, JavaScript, TypeScript and Java by ``run_code(language=...)``, each context
    removed after its cells (a sandbox's 512 MiB hold one such kernel at a time)."""
    sb = Sandbox.create(timeout=300)
    try:
        seen: dict[str, Any] = {"template": sb.get_info().template_id}
        for language, cells in LANGUAGE_CELLS.items():
            seen[language] = [execution(sb.run_code(cell, language=language, timeout=180))
                              for cell in cells]
            sb.remove_code_context(f"default-{language}")
        ctx = sb.create_code_context(language="r", cwd="/tmp")
        seen["r_context"] = [ctx.language, sb.run_code("getwd()", context=ctx).results[0].text]
    finally:
        sb.kill()
    return seen


def main() -> None:
    result = {"sync": sync_flow(), "async": asyncio.run(async_flow()),
              "languages": languages_flow()}
    print(json.dumps(result, default=str), flush=True)
    os._exit(0)  # as e2b_sdk_drive.py: e2b 2.45 can crash in interpreter finalization


if __name__ == "__main__":
    sys.exit(main())
