"""``sandbox.code`` and ``sandbox.run_code``: stateful code contexts on Jupyter kernels
(Python) and persistent shells (Bash).

Example::

    ex = await sb.run_code("import pandas as pd; pd.DataFrame({'a': [1, 2]})")
    print(ex.results[0].html)                 # the DataFrame as HTML, like a notebook
    ex = await sb.run_code("1/0")
    print(ex.error.name, ex.error.value)      # ZeroDivisionError division by zero

    ctx = await sb.code.create_context(cwd="/tmp")       # a kernel of its own
    await sb.run_code("x = 1", context=ctx)
    await sb.run_code("for i in range(3): print(i)", context=ctx,
                      on_stdout=lambda text: print("got", text, end=""))

    await sb.run_code("cd /tmp; n=5", language="bash")   # the default-bash context
    ex = await sb.run_code("echo $n $PWD; false", language="bash")
    print(ex.logs.stdout, ex.error.name, ex.error.value)  # ['5 /tmp\n'] ExitStatus 1

A cell's exception is :attr:`Execution.error`, not raised; so is a timeout
(``TimeoutError``: the cell was interrupted, the context keeps its state), a kernel that
died (``KernelDied``: :meth:`AsyncCodeInterpreter.restart_context`) and a Bash cell whose
last command failed (``ExitStatus``, the value its exit status).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from corral.api import contract, models
from corral.api.code_events import ErrorCallback, ResultCallback, TextCallback, collect
from corral.api.errors import SandboxError, error_from_code
from corral.api.limits import DEFAULT_CODE_TIMEOUT as DEFAULT_TIMEOUT
from corral.api.models import CodeContext as Context
from corral.api.models import Execution, ExecutionError, Logs, Result

from ._http import checked, segment, transport_errors

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox

__all__ = ["AsyncCodeInterpreter", "Context", "Execution", "ExecutionError", "Logs", "Result"]

_EVENT: TypeAdapter[models.CodeEvent] = TypeAdapter(models.CodeEvent)
ContextArg = Context | str | None


class AsyncCodeInterpreter:
    """``sandbox.code`` of an :class:`corral.AsyncSandbox`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._api = sandbox._api
        self._base = f"/v1/sandboxes/{segment(sandbox.id)}/code"

    async def run(self, code: str, *, language: str | None = None,
                  context: ContextArg = None, timeout: float = DEFAULT_TIMEOUT,
                  env: Mapping[str, str] | None = None,
                  on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None,
                  on_result: ResultCallback | None = None,
                  on_error: ErrorCallback | None = None) -> Execution:
        """Run a cell and return its :class:`Execution`.

        ``context`` is a :class:`Context` (or its id); default: the sandbox's default
        context for ``language`` (``"python"``: ``default``; another, as ``"bash"`` or,
        in the ``code-interpreter`` image, ``"r"``, ``"javascript"``, ``"typescript"``,
        ``"java"``: ``default-<language>``), created on first use. At ``timeout`` seconds
        the cell is interrupted. ``env``: environment variables for this cell alone
        (afterwards each is back to what it was). Callbacks get output while the cell
        runs.
        """
        request = checked(models.RunCodeRequest, code=code, language=language,
                          context=_context_id(context), timeout=float(timeout),
                          env=dict(env or {}),
                          stream=any((on_stdout, on_stderr, on_result, on_error)))
        if not request.stream:
            reply = await self._api.json("POST", self._base, body=request,
                                         read_timeout=timeout + 60.0)
            return Execution.model_validate(reply)
        async with self._api.stream("POST", self._base, body=request) as response:
            return await collect(_events(response.aiter_lines(), self._api.url), on_stdout,
                                 on_stderr, on_result, on_error)

    async def create_context(self, language: str = "python", *, cwd: str | None = None,
                             env: Mapping[str, str] | None = None) -> Context:
        """Start a new context: a kernel of its own (variables, imports, working dir);
        ``language`` is one of :data:`corral.api.models.CODE_LANGUAGES` (``"r"``,
        ``"javascript"``, ``"typescript"`` and ``"java"`` where the image has their
        kernels, as ``code-interpreter``)."""
        request = checked(models.ContextCreate, language=language, cwd=cwd,
                          env=dict(env or {}))
        reply = await self._api.json("POST", f"{self._base}/contexts", body=request,
                                     read_timeout=180.0)
        return Context.model_validate(reply)

    async def list_contexts(self) -> list[Context]:
        """This sandbox's contexts (``default`` once a cell ran without one)."""
        reply = await self._api.json("GET", f"{self._base}/contexts")
        return models.ContextList.model_validate(reply).contexts

    async def restart_context(self, context: Context | str) -> Context:
        """A fresh kernel for the context: its state is lost, its id kept."""
        reply = await self._api.json("POST", f"{self._base}/contexts/{_context_segment(context)}"
                                     "/restart", read_timeout=180.0)
        return Context.model_validate(reply)

    async def interrupt(self, context: Context | str = "default") -> None:
        """Interrupt the cell the context runs (it ends with ``KeyboardInterrupt``)."""
        await self._api.call("POST", f"{self._base}/contexts/{_context_segment(context)}/interrupt")

    async def delete_context(self, context: Context | str) -> None:
        """Stop the context's kernel and forget it."""
        await self._api.call("DELETE", f"{self._base}/contexts/{_context_segment(context)}")


def _context_id(context: ContextArg) -> str | None:
    return context.id if isinstance(context, Context) else context


def _context_segment(context: Context | str) -> str:
    return segment(_context_id(context), "context id")


async def _events(lines: AsyncIterator[str], url: str) -> AsyncIterator[models.CodeEvent]:
    while True:
        with transport_errors(url):
            line = await anext(lines, None)
        if line is None:
            raise SandboxError("the server ended the cell's output early")
        if not line.strip():
            continue
        event = _EVENT.validate_json(line)
        if isinstance(event, models.ErrorEvent):
            raise error_from_code(event.error.code, event.error.message)
        yield event


if TYPE_CHECKING:
    _conforms: type[contract.CodeContract] = AsyncCodeInterpreter
