"""Commands in a tenant's sandboxes: run and wait, stream as NDJSON, or run in the background.

Every started command is registered under its sandbox until it ends, so that stdin and
signals sent by later requests find it. A streamed command whose client goes away is
killed (nobody is left to read it); a background one has its output drained and dropped
until a client connects to it. A connect follows a running command again (a background one,
or one whose stream ended at a pause or a server restart): its output from then on; a
connected client that goes away only stops following it. A command the server waits on,
streams or drains holds its sandbox in use (never idle) until it ends.

Each started command goes into its sandbox's history (:mod:`.history`) with the output
that passes through the server (a background command's as it is drained) and its end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import anyio

from corral.api import models
from corral.api.errors import InvalidArgumentError, NotFoundError, SandboxError
from corral.api.limits import DEFAULT_COMMAND_TIMEOUT
from corral.node import NodeCommandHandle

from .history import CommandHistory, Entry
from .sandboxes import SandboxService

log = logging.getLogger(__name__)

#: A command's events, in order: started, output…, then exit or error.
Event = models.StartedEvent | models.OutputEvent | models.ExitEvent | models.ErrorEvent
#: What a follower that leaves early does to the command: kill it, stop following it,
#: or leave it running with its output drained (see ``CommandService._follow``).
_KILL, _STOP, _DRAIN = "kill", "stop", "drain"


class CommandService:
    def __init__(self, sandboxes: SandboxService, history: CommandHistory | None = None
                 ) -> None:
        self._sandboxes = sandboxes
        #: What each sandbox ran (kept a while after it stopped).
        self.history = history if history is not None else CommandHistory(0.0)
        sandboxes.on_stopped.append(self.history.stopped)
        self._handles: dict[str, dict[int, NodeCommandHandle]] = {}
        self._drains: set[asyncio.Task[None]] = set()
        #: Background commands' handles, read to their end by the server alone.
        self._drained: weakref.WeakSet[NodeCommandHandle] = weakref.WeakSet()
        sandboxes.on_stopped.append(self._forget_sandbox)

    async def run(self, tenant: str, sandbox_id: str,
                  request: models.CommandRequest) -> models.CommandResult:
        """Run to completion. A timeout is a result (``reason="timeout"``), not an error."""
        handle = await self._start(tenant, sandbox_id, request)
        entry = self.history.entry(sandbox_id, handle.id)
        try:
            with self._sandboxes.in_use(sandbox_id):
                result = await handle.wait()
        except SandboxError as exc:
            _ended_by_error(entry, exc)
            raise
        finally:
            self._forget(sandbox_id, handle)
        if entry is not None:
            entry.feed("stdout", result.stdout.encode())
            entry.feed("stderr", result.stderr.encode())
            entry.end(result.exit_code, result.signal, result.reason, result.truncated)
        return result

    async def stream(self, tenant: str, sandbox_id: str,
                     request: models.CommandRequest) -> AsyncIterator[bytes]:
        """Start the command (errors surface here), then stream its events as NDJSON."""
        handle = await self._start(tenant, sandbox_id, request)
        return self._events(sandbox_id, handle)

    async def events(self, tenant: str, sandbox_id: str, request: models.CommandRequest
                     ) -> AsyncGenerator[Event, None]:
        """Start the command (errors surface here), then its events as models, as
        :meth:`stream` gives them (a client that leaves before the end kills it)."""
        handle = await self._start(tenant, sandbox_id, request)
        return self._follow(sandbox_id, handle, _KILL)

    async def background(self, tenant: str, sandbox_id: str,
                         request: models.CommandRequest) -> models.CommandStarted:
        handle = await self._start(tenant, sandbox_id, request)
        self._drain_later(sandbox_id, handle)
        return models.CommandStarted(id=handle.id, pid=handle.pid)

    async def connect(self, tenant: str, sandbox_id: str, command_id: int
                      ) -> AsyncIterator[bytes]:
        """Follow a running command again (a background one, or one whose stream ended at
        a pause or a server restart): NDJSON events from now on, as :meth:`stream` gives.
        A client that leaves early stops the output; the command runs on."""
        handle = await self._take_over(tenant, sandbox_id, command_id)
        return self._events(sandbox_id, handle, owned=False)

    async def follow(self, tenant: str, sandbox_id: str, command_id: int
                     ) -> AsyncGenerator[Event, None]:
        """:meth:`connect`, as event models (for APIs that frame them their own way)."""
        handle = await self._take_over(tenant, sandbox_id, command_id)
        return self._follow(sandbox_id, handle, _STOP)

    async def start_detached(self, tenant: str, sandbox_id: str,
                             request: models.CommandRequest
                             ) -> tuple[AsyncGenerator[Event, None], Callable[[], None]]:
        """Start a command and follow it, as event models; unlike :meth:`stream`, a client
        that leaves early leaves it running, drained as a background one until a
        :meth:`connect` follows it again (E2B's processes outlive their stream).

        Also returns what to call the moment the client has left, before the events are
        closed (which may wait for a read under way): from then on a connect may take the
        command over."""
        handle = await self._start(tenant, sandbox_id, request)
        return self._follow(sandbox_id, handle, _DRAIN), lambda: self._drained.add(handle)

    async def _take_over(self, tenant: str, sandbox_id: str, command_id: int
                         ) -> NodeCommandHandle:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        earlier = self._handles.get(sandbox_id, {}).get(command_id)
        if earlier is not None:
            if earlier not in self._drained:
                raise InvalidArgumentError(
                    f"command {command_id}'s output is already streamed to the request that "
                    "started it (or another connect); connect once that stream has ended")
            earlier.detach()  # the background drain ends; its output is this stream's now
            self._drained.discard(earlier)
        handle = await sandbox.commands.connect(command_id)
        self._handles.setdefault(sandbox_id, {})[command_id] = handle
        return handle

    async def send_stdin(self, tenant: str, sandbox_id: str, command_id: int, data: bytes,
                         eof: bool) -> None:
        await self._handle(tenant, sandbox_id, command_id).send_stdin(data, eof=eof)

    async def signal(self, tenant: str, sandbox_id: str, command_id: int, signum: int) -> None:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a command signal")
        handle = self._handles.get(sandbox_id, {}).get(command_id)
        if handle is not None:
            await handle.signal(signum)
        else:  # started before a server restart: the agent still knows it by its id
            await sandbox.commands.signal(command_id, signum)

    async def resize(self, tenant: str, sandbox_id: str, command_id: int,
                     size: models.PtySize) -> None:
        """Set the size of a running command's terminal (one started with ``pty``)."""
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a terminal resize")
        await sandbox.commands.resize(command_id, size.cols, size.rows)

    async def commands_history(self, tenant: str, sandbox_id: str) -> models.CommandHistory:
        """The sandbox's last commands, newest first (a stopped one's, for the metrics
        retention). Reading it is not activity and never resumes the sandbox."""
        found = self.history.of(tenant, sandbox_id)
        if found is None:
            await self._sandboxes.check_owner(tenant, sandbox_id)
        return models.CommandHistory(commands=found or [])

    async def list(self, tenant: str, sandbox_id: str) -> models.ProcessList:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a command listing")
        return models.ProcessList(processes=[
            models.ProcessInfo(id=p.id, pid=p.pid, argv=p.argv, started_at=p.started_at,
                               pty=p.pty)
            for p in await sandbox.commands.list()])

    async def _start(self, tenant: str, sandbox_id: str,
                     request: models.CommandRequest) -> NodeCommandHandle:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a command")
        data = request.stdin_bytes()
        timeout = request.timeout
        if timeout is None and not (request.stream or request.background):
            timeout = DEFAULT_COMMAND_TIMEOUT
        handle = await sandbox.commands.start(
            request.cmd, env=request.env, cwd=request.cwd, user=request.user, timeout=timeout,
            stdin=data is not None or request.stdin_open, pty=request.pty)
        self._handles.setdefault(sandbox_id, {})[handle.id] = handle
        self.history.started(tenant, sandbox_id, handle.id, request.cmd)
        if data is not None:
            try:
                await handle.send_stdin(data, eof=not request.stdin_open)
            except BaseException:
                await self._abandon(sandbox_id, handle)
                raise
        return handle

    def _handle(self, tenant: str, sandbox_id: str, command_id: int) -> NodeCommandHandle:
        self._sandboxes.running(tenant, sandbox_id)  # ownership first: never hint at others'
        handle = self._handles.get(sandbox_id, {}).get(command_id)
        if handle is None:
            raise NotFoundError(f"no running command {command_id} in sandbox {sandbox_id}")
        return handle

    def _forget_sandbox(self, sandbox_id: str) -> None:
        self._handles.pop(sandbox_id, None)

    def _forget(self, sandbox_id: str, handle: NodeCommandHandle) -> None:
        """Drop ``handle`` (not another that follows the same command since)."""
        handles = self._handles.get(sandbox_id, {})
        if handles.get(handle.id) is handle:
            del handles[handle.id]
        self._drained.discard(handle)

    async def _abandon(self, sandbox_id: str, handle: NodeCommandHandle) -> None:
        """Kill a command nobody will read, even from a cancelled request."""
        self._forget(sandbox_id, handle)
        with anyio.CancelScope(shield=True), contextlib.suppress(SandboxError):
            await handle.kill()

    async def _events(self, sandbox_id: str, handle: NodeCommandHandle,
                      owned: bool = True) -> AsyncIterator[bytes]:
        """``owned``: this request started the command, and a client that leaves before it
        ends kills it; else (a connect) it only stops following it."""
        async with contextlib.aclosing(
                self._follow(sandbox_id, handle, _KILL if owned else _STOP)) as events:
            async for event in events:
                yield _line(event)

    async def _follow(self, sandbox_id: str, handle: NodeCommandHandle, leave: str
                      ) -> AsyncGenerator[Event, None]:
        """The command's events to its end. ``leave``: what a client that leaves before
        the end does to it: kill it (:data:`_KILL`), stop following it (:data:`_STOP`),
        or leave it running, drained (:data:`_DRAIN`)."""
        ended = False
        entry = self.history.entry(sandbox_id, handle.id)
        try:
            with self._sandboxes.in_use(sandbox_id):
                yield models.StartedEvent(id=handle.id, pid=handle.pid)
                try:
                    async for event in handle:
                        if entry is not None:
                            entry.feed(event.stream, event.data)
                        yield models.OutputEvent(
                            type=event.stream, data=base64.b64encode(event.data).decode())
                    # Iterated to the end: wait() returns the exit status at once.
                    result = await handle.wait()
                    ended = True
                    if entry is not None:
                        entry.end(result.exit_code, result.signal, result.reason)
                    yield models.ExitEvent(
                        exit_code=result.exit_code, signal=result.signal,
                        reason=result.reason, duration=result.duration)
                except SandboxError as exc:
                    ended = True
                    _ended_by_error(entry, exc)
                    yield models.ErrorEvent(error=models.ErrorDetail(
                        code=exc.code.value, message=exc.message))
        finally:
            if ended:
                self._forget(sandbox_id, handle)
            elif leave == _KILL:
                await self._abandon(sandbox_id, handle)
            elif leave == _DRAIN:
                if self._handles.get(sandbox_id, {}).get(handle.id) is handle:
                    self._drain_later(sandbox_id, handle)  # unless a connect took it over
            else:
                self._forget(sandbox_id, handle)
                with anyio.CancelScope(shield=True), contextlib.suppress(SandboxError):
                    await handle.aclose()

    def _drain_later(self, sandbox_id: str, handle: NodeCommandHandle) -> None:
        """Read ``handle`` to its end in the background (its output dropped)."""
        self._drained.add(handle)
        task = asyncio.get_running_loop().create_task(self._drain(sandbox_id, handle))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, sandbox_id: str, handle: NodeCommandHandle) -> None:
        entry = self.history.entry(sandbox_id, handle.id)
        try:
            with self._sandboxes.in_use(sandbox_id):
                async for chunk in handle:
                    if entry is not None:
                        entry.feed(chunk.stream, chunk.data)
            if entry is not None and handle.exit is not None:
                end = handle.exit
                entry.end(end.exit_code, end.signal, end.reason)
        except SandboxError as exc:
            if handle in self._drained:  # else a connect took it over, and follows it on
                _ended_by_error(entry, exc)
            log.info("background command %d in %s ended: %s", handle.id, sandbox_id,
                     exc.code.value)
        finally:
            self._forget(sandbox_id, handle)


def _ended_by_error(entry: Entry | None, exc: SandboxError) -> None:
    """Record that a command's end was not seen: the sandbox stopped under it, say."""
    if entry is not None:
        entry.end(None, None, exc.message)


def _line(event: Event) -> bytes:
    return event.model_dump_json().encode() + b"\n"
