"""``sandbox.pty``: interactive terminals (a shell on a pseudo-terminal) in a sandbox.

A terminal is a command started with ``pty`` (:meth:`corral.sdk.commands.AsyncCommands.start`):
what it writes goes to ``on_data`` as raw bytes (escape sequences included), keys go in with
:meth:`AsyncPtyHandle.send_input` (``"\\x03"`` is Ctrl-C, ``"\\x04"`` Ctrl-D), and
:meth:`AsyncPtyHandle.resize` follows the size of the window showing it.

Example::

    chunks = []
    term = await sb.pty.create(cols=100, rows=30, on_data=chunks.append)
    await term.send_input("stty size; exit\\n")
    result = await term.wait()          # the shell's exit; output went to on_data
    assert b"30 100" in b"".join(chunks)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from corral.api import contract, models
from corral.api.command_events import OutputCapture
from corral.api.errors import SandboxError

from ._http import checked
from .commands import AsyncCommandHandle

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox

#: What :meth:`AsyncPty.create` runs unless told otherwise: a login shell, bash where the
#: image has it.
DEFAULT_SHELL = models.TERMINAL_SHELL
#: A terminal's output, as bytes: called on the SDK's event loop (the blocking face's
#: thread), in order.
DataCallback = Callable[[bytes], object]


class AsyncPtyHandle:
    """A running terminal: type into it, resize it, kill it, wait for its end.

    Its output is read from the moment it starts and handed to ``on_data``; closing the
    handle (or leaving ``async with``) before the command ends kills it.
    """

    def __init__(self, handle: AsyncCommandHandle, on_data: DataCallback | None) -> None:
        self._handle = handle
        self._on_data = on_data
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def id(self) -> int:
        """The command's id (for :meth:`corral.sdk.commands.AsyncCommands.resize` etc.)."""
        return self._handle.id

    @property
    def pid(self) -> int:
        return self._handle.pid

    async def _read(self) -> models.CommandResult:
        capture = OutputCapture()
        async for chunk in self._handle:
            capture.feed(chunk)
            if self._on_data is not None:
                self._on_data(chunk.data)
        result = await self._handle.wait()
        return capture.result(models.ExitEvent(
            exit_code=result.exit_code, signal=result.signal, reason=result.reason,
            duration=result.duration))

    async def send_input(self, data: bytes | str) -> None:
        """Type ``data`` into the terminal, as keys (``"\\r"`` or ``"\\n"`` ends a line)."""
        await self._handle.send_stdin(data)

    async def resize(self, cols: int, rows: int) -> None:
        """Set the terminal's size in characters (1 to 1000 each); the program on it gets
        SIGWINCH."""
        await self._handle.resize(cols, rows)

    async def kill(self) -> None:
        """SIGKILL the terminal's command and every process it started."""
        await self._handle.kill()

    async def wait(self) -> models.CommandResult:
        """The command's end: its exit code (``stdout`` holds the output, as text, up to the
        capture limit). Raises what ``on_data`` raised, if it did."""
        return await asyncio.shield(self._reader)

    async def aclose(self) -> None:
        """Stop reading; a terminal still running is killed."""
        if not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, SandboxError):
                await self._reader
        await self._handle.aclose()

    async def __aenter__(self) -> AsyncPtyHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncPty:
    """``sandbox.pty`` of an :class:`corral.AsyncSandbox`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._commands = sandbox.commands

    async def create(self, cols: int = 80, rows: int = 24, *,
                     on_data: DataCallback | None = None,
                     cmd: contract.Cmd = DEFAULT_SHELL,
                     env: Mapping[str, str] | None = None, cwd: str | None = None,
                     user: str | int | None = None, timeout: float | None = None
                     ) -> AsyncPtyHandle:
        """Start a terminal of ``cols`` x ``rows`` characters (1 to
        :data:`~corral.api.agent_protocol.MAX_PTY_SIZE` each) running
        ``cmd`` (default: a login shell, bash where the image has it), once it runs.

        Args:
            on_data: gets the terminal's output, raw bytes, as it comes.
            env: extra environment variables (``TERM`` is ``xterm-256color`` unless set).
            cwd: working directory (default: the image's).
            user: user name or uid inside the sandbox.
            timeout: seconds after which it is killed (default: none).
        """
        size: models.PtySize = checked(models.PtySize, cols=cols, rows=rows)
        handle = await self._commands.start(cmd, env=env, cwd=cwd, user=user, timeout=timeout,
                                            pty=size)
        return AsyncPtyHandle(handle, on_data)

