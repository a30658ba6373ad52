"""``sandbox.commands``: run a command and get its result, or start one and hold a handle.

Example::

    r = await sb.commands.run("python3 -c 'print(2+2)'")
    assert (r.exit_code, r.stdout) == (0, "4\\n")

    r = await sb.commands.run("for i in 1 2 3; do echo $i; sleep 1; done",
                              on_stdout=lambda text: print("got", text, end=""))

    h = await sb.commands.start(["cat"], stdin=True)
    await h.send_stdin("hello", eof=True)
    assert (await h.wait()).stdout == "hello"
"""

from __future__ import annotations

import base64
import builtins
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import httpx
from pydantic import TypeAdapter

from corral.api import contract, models
from corral.api.agent_protocol import REASON_TIMEOUT
from corral.api.command_events import Output, OutputCallback, OutputCapture
from corral.api.errors import (CommandTimeoutError, InvalidArgumentError, SandboxError,
                               error_from_code)
from corral.api.limits import DEFAULT_COMMAND_TIMEOUT

from ._http import checked, segment, transport_errors

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox

#: Stdin sent per request (the server takes JSON and stdin bodies up to 1 MiB).
STDIN_CHUNK = 512 * 1024
_EVENT: TypeAdapter[models.CommandEvent] = TypeAdapter(models.CommandEvent)


class AsyncCommandHandle:
    """A running command. Iterate it for :class:`Output`, or :meth:`wait` for the result.

    The command's output arrives over one open response; closing the handle (or leaving
    ``async with``) before the command ends kills the command.
    """

    def __init__(self, commands: AsyncCommands, started: models.StartedEvent,
                 response: AbstractAsyncContextManager[httpx.Response],
                 lines: AsyncIterator[str]) -> None:
        self._commands = commands
        self.id = started.id
        self.pid = started.pid
        self._response = response
        self._lines = lines
        self._exit: models.ExitEvent | None = None
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Output]:
        try:
            while self._exit is None:
                with transport_errors(self._commands._api.url):
                    line = await anext(self._lines, None)
                if line is None:
                    raise SandboxError(f"the server ended command {self.id}'s output early")
                if not line.strip():
                    continue
                event = _EVENT.validate_json(line)
                if isinstance(event, models.OutputEvent):
                    yield Output(event.type, event.payload())
                elif isinstance(event, models.ExitEvent):
                    self._exit = event
                elif isinstance(event, models.ErrorEvent):
                    raise error_from_code(event.error.code, event.error.message)
        finally:
            if self._exit is not None:
                await self.aclose()

    async def wait(self, on_stdout: OutputCallback | None = None,
                   on_stderr: OutputCallback | None = None) -> models.CommandResult:
        """Wait for the end; callbacks get output as text as it arrives.

        A timeout is a result here (``reason == "timeout"``), not an exception.
        """
        capture = OutputCapture(on_stdout, on_stderr)
        async for chunk in self:
            capture.feed(chunk)
        if self._exit is None:
            raise SandboxError(f"command {self.id}'s output was already read")
        return capture.result(self._exit)

    async def send_stdin(self, data: bytes | str, eof: bool = False) -> None:
        """Write to the command's stdin (start it with ``stdin=True``)."""
        await self._commands._send_stdin(self.id, data, eof)

    async def close_stdin(self) -> None:
        await self.send_stdin(b"", eof=True)

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process group."""
        await self._commands._api.call("POST", f"{self._commands._base}/{self.id}/signal",
                                       body=checked(models.SignalRequest, signal=signum))

    async def kill(self) -> None:
        """SIGKILL the command and every process it started."""
        await self.signal(9)

    async def resize(self, cols: int, rows: int) -> None:
        """Set the size of the command's terminal (start it with ``pty``); it gets
        SIGWINCH."""
        await self._commands.resize(self.id, cols, rows)

    async def aclose(self) -> None:
        """Stop reading; a command still running is killed by the server (one followed with
        :meth:`AsyncCommands.connect` runs on)."""
        if not self._closed:
            self._closed = True
            await self._response.__aexit__(None, None, None)

    async def __aenter__(self) -> AsyncCommandHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncCommands:
    """``sandbox.commands`` of an :class:`corral.AsyncSandbox`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._api = sandbox._api
        self._base = f"/v1/sandboxes/{segment(sandbox.id)}/commands"

    async def run(self, cmd: contract.Cmd, *, env: Mapping[str, str] | None = None,
                  cwd: str | None = None, user: str | int | None = None,
                  timeout: float = DEFAULT_COMMAND_TIMEOUT,
                  stdin: bytes | str | None = None,
                  on_stdout: OutputCallback | None = None,
                  on_stderr: OutputCallback | None = None) -> models.CommandResult:
        """Run a command to its end and return its :class:`~corral.api.models.CommandResult`.

        ``cmd`` is a shell string or an argv list (no shell). A non-zero exit is not an
        error; a timeout raises :class:`corral.CommandTimeoutError` carrying ``.result``.
        With ``on_stdout``/``on_stderr`` the output streams to them (as text) while the
        command runs.
        """
        streamed = on_stdout is not None or on_stderr is not None
        data = stdin.encode() if isinstance(stdin, str) else stdin
        if streamed or (data is not None and len(data) > models.MAX_INLINE_STDIN):
            handle = await self.start(cmd, env=env, cwd=cwd, user=user, timeout=timeout,
                                      stdin=data is not None)
            async with handle:
                if data is not None:
                    await handle.send_stdin(data, eof=True)
                result = await handle.wait(on_stdout, on_stderr)
        else:
            request = self._request(cmd, env, cwd, user, timeout, stdin_base64=_b64(data))
            result = models.CommandResult.model_validate(await self._api.json(
                "POST", self._base, body=request, read_timeout=timeout + 30.0))
        if result.reason == REASON_TIMEOUT:
            raise CommandTimeoutError(
                f"command timed out after {timeout:g} s and was killed", result)
        return result

    async def start(self, cmd: contract.Cmd, *, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, user: str | int | None = None,
                    timeout: float | None = None, stdin: bool = False,
                    pty: models.PtySize | None = None) -> AsyncCommandHandle:
        """Start a command and return its handle once it runs (``handle.pid`` is set).

        ``stdin=True`` keeps its stdin open for :meth:`AsyncCommandHandle.send_stdin`.
        ``pty=PtySize(cols=80, rows=24)`` runs it on a pseudo-terminal of that size: its
        output all comes as stdout, its stdin is open, and
        :meth:`AsyncCommandHandle.resize` changes the size (:attr:`AsyncSandbox.pty
        <corral.sdk.pty.AsyncPty>` makes an interactive shell of it).
        """
        request = self._request(cmd, env, cwd, user, timeout, stdin_open=stdin, stream=True,
                                pty=pty)
        return await self._follow(self._api.stream("POST", self._base, body=request))

    async def connect(self, command_id: int) -> AsyncCommandHandle:
        """Follow a running command again, by the id :meth:`list` shows: one started with
        :meth:`run_background`, or one whose output stream ended while it ran on (at a
        pause of the sandbox, or a server restart). Its output from now on (what it wrote
        while nobody followed it is gone), its exit, stdin and signals. Closing this handle
        before the command ends only stops following it: the command runs on.

        Example::

            h = await sb.commands.start("python3 train.py")
            await sb.pause()                     # h's output ends here; train.py waits
            await sb.resume()
            h = await sb.commands.connect(h.id)  # and goes on
            result = await h.wait()
        """
        if isinstance(command_id, bool) or not isinstance(command_id, int) or command_id < 0:
            raise InvalidArgumentError("a command id is a whole number (see commands.list())")
        return await self._follow(self._api.stream("POST", f"{self._base}/{command_id}/connect"))

    async def _follow(self, response: AbstractAsyncContextManager[httpx.Response]
                      ) -> AsyncCommandHandle:
        """The handle on a command's NDJSON events, once its ``started`` event came."""
        opened = await response.__aenter__()
        try:
            lines = opened.aiter_lines()
            with transport_errors(self._api.url):
                first = await anext(lines, "")
            started = _EVENT.validate_json(first) if first else None
            if isinstance(started, models.ErrorEvent):
                raise error_from_code(started.error.code, started.error.message)
            if not isinstance(started, models.StartedEvent):
                raise SandboxError("the server did not report the command's start")
        except BaseException:
            await response.__aexit__(None, None, None)
            raise
        return AsyncCommandHandle(self, started, response, lines)

    async def run_background(self, cmd: contract.Cmd, *,
                             env: Mapping[str, str] | None = None, cwd: str | None = None,
                             user: str | int | None = None, timeout: float | None = None
                             ) -> models.CommandStarted:
        """Start a command that runs on its own; its output is discarded.

        Returns its ``id`` and ``pid`` at once. Find it again with :meth:`list` (it survives
        a server restart), stop it with :meth:`kill`::

            started = await sb.commands.run_background("python3 -m http.server 8000")
            ...
            await sb.commands.kill(started.id)
        """
        request = self._request(cmd, env, cwd, user, timeout, background=True)
        return models.CommandStarted.model_validate(
            await self._api.json("POST", self._base, body=request))

    async def signal(self, command_id: int, signum: int) -> None:
        """Send ``signum`` to a running command, by the id :meth:`list` shows."""
        await self._api.call("POST", f"{self._base}/{command_id}/signal",
                             body=checked(models.SignalRequest, signal=signum))

    async def kill(self, command_id: int) -> None:
        """SIGKILL a running command, and every process it started, by its id."""
        await self.signal(command_id, 9)

    async def resize(self, command_id: int, cols: int, rows: int) -> None:
        """Set the size of a running command's terminal (one started with ``pty``), by id."""
        await self._api.call("POST", f"{self._base}/{command_id}/resize",
                             body=checked(models.PtySize, cols=cols, rows=rows))

    async def list(self) -> list[models.ProcessInfo]:
        """Commands started through the API that still run."""
        reply = await self._api.json("GET", self._base)
        return models.ProcessList.model_validate(reply).processes

    async def history(self) -> builtins.list[models.CommandRecord]:
        """The last 100 commands started through the API in this sandbox, newest first:
        each :class:`~corral.api.models.CommandRecord` has ``cmd`` (as given), ``started_at``
        and ``ended_at`` (None while it runs), ``exit_code``, ``signal``, ``reason``, the
        first 16 KiB of ``stdout`` and ``stderr``, and ``truncated``. Kept a while after
        the sandbox stopped (the server's ``CORRAL_METRICS_RETENTION``). Reading it is
        not activity.

        Example::

            for c in await sb.commands.history():
                print(c.exit_code, c.cmd)
        """
        reply = await self._api.json("GET", f"{self._base}/history")
        return models.CommandHistory.model_validate(reply).commands

    async def _send_stdin(self, command_id: int, data: bytes | str, eof: bool) -> None:
        payload = data.encode() if isinstance(data, str) else bytes(data)
        for start in range(0, max(len(payload), 1), STDIN_CHUNK):
            last = start + STDIN_CHUNK >= len(payload)
            await self._api.call("POST", f"{self._base}/{command_id}/stdin",
                                 params={"eof": "true" if eof and last else "false"},
                                 content=payload[start:start + STDIN_CHUNK])

    def _request(self, cmd: contract.Cmd, env: Mapping[str, str] | None,
                 cwd: str | None, user: str | int | None, timeout: float | None,
                 **extra: object) -> models.CommandRequest:
        argv = cmd if isinstance(cmd, str) else list(cmd)
        request: models.CommandRequest = checked(
            models.CommandRequest, cmd=argv, env=dict(env or {}), cwd=cwd, user=user,
            timeout=None if timeout is None else float(timeout), **extra)
        return request


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


if TYPE_CHECKING:
    _handle: type[contract.CommandHandleContract] = AsyncCommandHandle
    _commands: type[contract.CommandsContract] = AsyncCommands
