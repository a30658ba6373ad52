"""Running commands in a sandbox: one-shot with captured output, or in the background.

The output is gathered by :mod:`corral.api.command_events`, as the SDK gathers it, so a
result reads the same on both sides (see :mod:`corral.api.contract`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signals
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from corral.api import agent_protocol as proto
from corral.api import contract, models
from corral.api.command_events import Output, OutputCallback, OutputCapture
from corral.api.errors import (CommandTimeoutError, InvalidArgumentError, NotFoundError,
                               SandboxError)
from corral.api.limits import DEFAULT_COMMAND_TIMEOUT, MAX_ARGV
from corral.api.resources import check_timeout

from .agent_client import Stream
from .validation import check_env, resolve_path

if TYPE_CHECKING:
    from .sandbox import NodeSandbox

#: Seconds past a command's own timeout before the node stops trusting its agent.
AGENT_GRACE = 30.0
#: Seconds the agent has to report a command started (its pid) before the node stops
#: trusting it: a wedged or stopped agent must not hold the caller forever.
START_DEADLINE = 60.0


class NodeCommandHandle:
    """A command started with :meth:`NodeCommands.start`.

    Iterate it for output (``async for event in handle``) or :meth:`wait` for the result.
    """

    def __init__(self, sandbox: NodeSandbox, stream: Stream, pid: int, counters: tuple[int, int],
                 started: float, owned: bool = True) -> None:
        """``owned``: the handle's caller started the command (closing the handle early
        kills it); else it only follows one that runs on (closing stops its output)."""
        self._owned = owned
        self._sandbox = sandbox
        self._stream = stream
        self.pid = pid
        self.id = stream.id
        self._counters = counters
        self._started = started
        self._exit: models.ExitEvent | None = None
        self._closed = False

    @property
    def exit(self) -> models.ExitEvent | None:
        """How the command ended, once its output was read to the end; None before."""
        return self._exit

    async def __aiter__(self) -> AsyncIterator[Output]:
        while self._exit is None:
            try:
                header, data = await self._stream.next()
            except BaseException:
                self._stream.close()
                raise
            event = header.get("ev")
            if event == proto.EV_STDOUT:
                yield Output("stdout", data)
            elif event == proto.EV_STDERR:
                yield Output("stderr", data)
            elif event == proto.EV_EXIT:
                self._exit = self._end(header)
                self._stream.close()

    async def wait(self, on_stdout: OutputCallback | None = None,
                   on_stderr: OutputCallback | None = None) -> models.CommandResult:
        """Wait for the command to end; callbacks get its output as text as it arrives.

        Keeps up to :data:`corral.api.limits.MAX_CAPTURE` bytes per stream. A
        timeout is a result here (``reason == "timeout"``), not an exception.
        """
        capture = OutputCapture(on_stdout, on_stderr)
        async for chunk in self:
            capture.feed(chunk)
        assert self._exit is not None  # the iteration ends at the exit, or raises
        return capture.result(self._exit)

    def _end(self, header: dict[str, Any]) -> models.ExitEvent:
        """The exit the agent reported (untrusted: anything off-shape reads as unknown)."""
        exit_code = header.get("exit_code")
        sig = header.get("signal")
        reason = header.get("reason")
        if not isinstance(reason, str):
            reason = None
            if sig == signals.SIGKILL:
                reason = self._sandbox.limit_hit(self._counters)
        return models.ExitEvent(
            exit_code=exit_code if isinstance(exit_code, int) else -1,
            signal=sig if isinstance(sig, int) else None, reason=reason,
            duration=time.monotonic() - self._started)

    async def send_stdin(self, data: bytes | str, eof: bool = False) -> None:
        """Write to the command's stdin (it must have been started with ``stdin=True``)."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        for start in range(0, max(len(payload), 1), proto.CHUNK):
            last = start + proto.CHUNK >= len(payload)
            # No deadline: a command may legitimately leave its stdin unread for long.
            await self._sandbox.channel().call(proto.OP_STDIN, payload[start:start + proto.CHUNK],
                                              deadline=None, target=self.id, eof=eof and last)

    async def close_stdin(self) -> None:
        await self.send_stdin(b"", eof=True)

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process group."""
        await self._sandbox.channel().call(proto.OP_SIGNAL, target=self.id, signal=int(signum))

    async def resize(self, cols: int, rows: int) -> None:
        """Set the size of the command's terminal (it must have been started with ``pty``);
        the command gets SIGWINCH."""
        await self._sandbox.commands.resize(self.id, cols, rows)

    async def kill(self) -> None:
        """SIGKILL the command and every process it started."""
        await self.signal(signals.SIGKILL)

    async def aclose(self) -> None:
        """Stop following the command; one still running is killed, unless this handle
        only follows it (:meth:`NodeCommands.connect`): then its output stops, and it runs
        on."""
        if self._closed:
            return
        self._closed = True
        if self._exit is None:
            with contextlib.suppress(SandboxError):
                if self._owned:
                    await self.kill()
                else:
                    await self._sandbox.channel().send(
                        {"id": 0, "op": proto.OP_CANCEL, "target": self.id})
        self._stream.close()

    def detach(self) -> None:
        """Stop following the command here and now, leaving it running and its output
        flowing (for :meth:`NodeCommands.connect` to take over); an iteration under way ends
        with an error."""
        self._closed = True
        self._stream.close()

    async def __aenter__(self) -> NodeCommandHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class NodeCommands:
    """``sandbox.commands``: start processes inside the sandbox."""

    def __init__(self, sandbox: NodeSandbox) -> None:
        self._sandbox = sandbox
        self._drains: set[asyncio.Task[None]] = set()

    async def start(self, cmd: contract.Cmd, *, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, user: str | int | None = None,
                    timeout: float | None = None, stdin: bool = False,
                    pty: models.PtySize | None = None) -> NodeCommandHandle:
        """Start a command in the background and return its handle.

        Args:
            cmd: a shell string (run by ``/bin/sh -c``) or an argv list (no shell).
            env: extra environment variables, on top of the sandbox's.
            cwd: working directory (default: the image's, usually ``/work``).
            user: user name or uid inside the sandbox (default: the image's user, root
                for the public images).
            timeout: seconds after which the command and all its descendants are killed.
            stdin: keep stdin open for :meth:`NodeCommandHandle.send_stdin`.
            pty: run it on a pseudo-terminal of this size (stdin, stdout and stderr; its
                output all stdout; stdin open; ``TERM=xterm-256color`` unless ``env`` sets
                it); :meth:`NodeCommandHandle.resize` changes the size.
        """
        fields: dict[str, Any] = {"stdin": stdin}
        if pty is not None:
            if not isinstance(pty, models.PtySize):
                raise InvalidArgumentError("pty must be a PtySize(cols=..., rows=...)")
            fields["pty"] = {"cols": pty.cols, "rows": pty.rows}
        if isinstance(cmd, str):
            fields["cmd"] = cmd
        elif isinstance(cmd, Sequence) and all(isinstance(a, str) for a in cmd) and cmd:
            fields["argv"] = list(cmd)
        else:
            raise InvalidArgumentError("cmd must be a string or a non-empty list of strings")
        sandbox = self._sandbox
        fields["env"] = {**sandbox.env, **check_env(env)}
        fields["cwd"] = resolve_path(cwd or sandbox.workdir, sandbox.workdir)
        if user is None:
            user = sandbox.user
        if user is not None:
            if isinstance(user, bool) or not isinstance(user, (str, int)):
                raise InvalidArgumentError("user must be a name or a uid")
            fields["user"] = user
        if timeout is not None:
            fields["timeout"] = check_timeout(timeout, "command timeout")
        counters = sandbox.counters()
        started = time.monotonic()
        agent = sandbox.channel()
        stream = await agent.open(proto.OP_EXEC, credited=True, **fields)
        try:
            header, _ = await agent.within(START_DEADLINE, stream.next(), "a command's start")
        except BaseException:
            stream.close()
            raise
        pid = header.get("pid")
        return NodeCommandHandle(sandbox, stream, pid if isinstance(pid, int) else -1, counters,
                             started)

    async def run(self, cmd: contract.Cmd, *, env: Mapping[str, str] | None = None,
                  cwd: str | None = None, user: str | int | None = None,
                  timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
                  stdin: bytes | str | None = None, on_stdout: OutputCallback | None = None,
                  on_stderr: OutputCallback | None = None) -> models.CommandResult:
        """Run a command to completion and return its
        :class:`~corral.api.models.CommandResult`; ``None`` as ``timeout`` lets it run.

        A non-zero exit is not an error. Raises :class:`CommandTimeoutError` (with the
        partial result as ``.result``) when ``timeout`` passes.

        Example::

            r = await sb.commands.run("python3 -c 'print(2+2)'")
            assert r.stdout == "4\\n"
        """
        handle = await self.start(cmd, env=env, cwd=cwd, user=user, timeout=timeout,
                                  stdin=stdin is not None)
        try:
            if stdin is not None:
                await handle.send_stdin(stdin, eof=True)
            # The agent enforces the timeout; the node does not rely on it: past the timeout
            # and a grace period the agent is wedged or subverted, and the sandbox is stopped.
            deadline = None if timeout is None else timeout + AGENT_GRACE
            result = await self._sandbox.channel().within(
                deadline, handle.wait(on_stdout, on_stderr), "a command's end")
        except BaseException:
            # The caller gave up, or feeding it failed: it must not run on unobserved.
            with contextlib.suppress(SandboxError):
                await asyncio.shield(handle.aclose())
            raise
        if result.reason == proto.REASON_TIMEOUT:
            raise CommandTimeoutError(
                f"command timed out after {timeout:g} s and was killed", result)
        return result

    async def run_background(self, cmd: contract.Cmd, *, env: Mapping[str, str] | None = None,
                             cwd: str | None = None, user: str | int | None = None,
                             timeout: float | None = None) -> models.CommandStarted:
        """Start a command that runs on its own; its output is read and dropped.

        Returns its ``id`` and ``pid`` at once; :meth:`list` finds it, :meth:`kill` ends it.
        """
        handle = await self.start(cmd, env=env, cwd=cwd, user=user, timeout=timeout)
        task = asyncio.get_running_loop().create_task(_drain(handle))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return models.CommandStarted(id=handle.id, pid=handle.pid)

    async def signal(self, command_id: int, signum: int) -> None:
        """Signal a running command by id, one a previous node started included.

        Raises NotFoundError if no command with that id is running.
        """
        await self._sandbox.channel().call(proto.OP_SIGNAL, target=int(command_id),
                                          signal=int(signum))

    async def kill(self, command_id: int) -> None:
        """SIGKILL a running command, and every process it started, by its id."""
        await self.signal(command_id, signals.SIGKILL)

    async def resize(self, command_id: int, cols: int, rows: int) -> None:
        """Set the size of a running command's terminal, by its id (see ``pty`` of
        :meth:`start`). InvalidArgumentError for a size out of bounds (1 to
        :data:`~corral.api.agent_protocol.MAX_PTY_SIZE`) or a command with no terminal;
        NotFoundError if no such command runs."""
        try:
            size = models.PtySize.model_validate({"cols": cols, "rows": rows})
        except ValidationError:
            raise InvalidArgumentError(f"a terminal's cols and rows are whole numbers from 1 "
                                       f"to {proto.MAX_PTY_SIZE}") from None
        await self._sandbox.channel().call(proto.OP_RESIZE, target=int(command_id),
                                           cols=size.cols, rows=size.rows)

    async def list(self) -> list[models.ProcessInfo]:
        """NodeCommands started through the API that are still running.

        The code interpreter's kernel bridge is listed only while it runs a cell, so an
        idle context does not count as activity (the idle reaper asks this list).
        """
        reply = await self._sandbox.channel().call(proto.OP_PROCESSES)
        hidden = self._sandbox.code.idle_command_ids()
        found = []
        for raw in reply.get("processes", []) if isinstance(reply.get("processes"), list) else []:
            if isinstance(raw, dict) and raw.get("id") not in hidden:
                found.append(models.ProcessInfo(
                    id=int(raw.get("id", 0)), pid=int(raw.get("pid", 0)),
                    argv=[str(a) for a in raw.get("argv", [])][:MAX_ARGV],
                    started_at=float(raw.get("started_at", 0.0)), pty=raw.get("pty") is True))
        return found

    async def connect(self, command_id: int) -> NodeCommandHandle:
        """Follow a running command again: its output from now on (what it wrote while
        nobody followed it is gone), its exit, its stdin and signals. For a command whose
        output stream ended while it ran on (at a pause, or a restart of the node) or that
        was started in the background. Closing the handle before the command ends stops
        its output and leaves it running.

        NotFoundError if no command with that id runs (see :meth:`list`);
        InvalidArgumentError if its output is already being followed.
        """
        if isinstance(command_id, bool) or not isinstance(command_id, int):
            raise InvalidArgumentError("a command id is a whole number")
        running = {p.id: p for p in await self.list()}
        found = running.get(command_id)
        if found is None:
            raise NotFoundError(f"no running command {command_id} in sandbox "
                                f"{self._sandbox.id}")
        return await attach(self._sandbox, command_id, found.pid, owned=False)


async def attach(sandbox: NodeSandbox, command_id: int, pid: int,
                 owned: bool = True) -> NodeCommandHandle:
    """A handle on a command an earlier session of the agent started and still runs (a
    resumed sandbox's kernel bridge): its output from now on, its stdin, its signals.
    NotFoundError if it is no longer running. ``owned``: as :class:`NodeCommandHandle`."""
    agent = sandbox.channel()
    stream = agent.follow(command_id, credited=True)
    try:
        await agent.call(proto.OP_ATTACH, target=command_id)
    except BaseException:
        stream.close()
        raise
    return NodeCommandHandle(sandbox, stream, pid, sandbox.counters(), time.monotonic(),
                             owned)


async def _drain(handle: NodeCommandHandle) -> None:
    """Read a background command's output to its end (the agent waits for credit)."""
    with contextlib.suppress(SandboxError):
        async for _ in handle:
            pass


if TYPE_CHECKING:
    _handle: type[contract.CommandHandleContract] = NodeCommandHandle
    _commands: type[contract.CommandsContract] = NodeCommands
