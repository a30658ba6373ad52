"""The node's end of a sandbox's kernel bridge (:mod:`corral.bridge.kernel_bridge`).

The bridge is an ordinary command in the sandbox, started with its stdin open; requests go
to its stdin and events come back on its stdout, one JSON object per line
(:mod:`corral.api.bridge_protocol`). Everything it says is untrusted (code in the sandbox
runs as root beside it): the protocol's ``parse_event`` checks every line (bounded, of a
known kind, each field of its type), events reach only a request still waiting, and every
wait has a deadline past which the bridge is killed rather than trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from corral.api import bridge_protocol as proto
from corral.api.errors import AgentError, InvalidArgumentError, SandboxError
from corral.runtime.agent_bundle import MOUNT_POINT

if TYPE_CHECKING:
    from .commands import NodeCommandHandle
    from .sandbox import NodeSandbox

log = logging.getLogger(__name__)

BRIDGE_ARGV = ["python3", "-I", f"{MOUNT_POINT}/py/corral/bridge/kernel_bridge.py"]
HELLO_TIMEOUT = 60.0
STDERR_TAIL = 4096
_QUEUE_EVENTS = 256


class BridgeGone(SandboxError):
    """The bridge process ended; its kernels ended with it."""


class Bridge:
    """One running bridge: requests out, events in, routed by request id.

    Args:
        max_line: the longest event line accepted (see
            :func:`~corral.api.bridge_protocol.max_event_line`); a longer one ends the
            bridge.
    """

    def __init__(self, sandbox: NodeSandbox, handle: NodeCommandHandle, max_line: int,
                 first_id: int = 1) -> None:
        self._sandbox = sandbox
        self._handle = handle
        self.command_id = handle.id
        self._max_line = max_line
        self._next_id = first_id
        self._waiting: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._send_lock = asyncio.Lock()
        self._hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stderr = bytearray()
        self.closed_reason: str | None = None
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, sandbox: NodeSandbox, max_line: int) -> Bridge:
        """Start the bridge in ``sandbox`` and wait for its hello."""
        # ipykernel, imported to find the kernel, warns about debuggers unless told not to.
        handle = await sandbox.commands.start(BRIDGE_ARGV, stdin=True, cwd="/",
                                              env={"PYDEVD_DISABLE_FILE_VALIDATION": "1"})
        bridge = cls(sandbox, handle, max_line)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                await asyncio.shield(bridge._hello)
        except TimeoutError:
            await bridge.close("it did not start")
            raise AgentError(f"sandbox {sandbox.id}: the kernel bridge did not start within "
                             f"{HELLO_TIMEOUT:g} s") from None
        except BridgeGone as exc:
            raise SandboxError(f"sandbox {sandbox.id}: cannot run code: {exc.message}") from None
        return bridge

    @classmethod
    def attached(cls, sandbox: NodeSandbox, handle: NodeCommandHandle, max_line: int,
                 first_id: int) -> Bridge:
        """A bridge an earlier session started, followed again through ``handle`` (its
        command attached after a resume, or in a sandbox restored from a snapshot): it said
        hello already, and its request ids go on from ``first_id`` (the earlier
        :attr:`next_id`)."""
        bridge = cls(sandbox, handle, max_line, first_id=first_id)
        bridge._hello.set_result({})
        return bridge

    @property
    def next_id(self) -> int:
        """The id of this bridge's next request."""
        return self._next_id

    @property
    def pid(self) -> int:
        """The bridge process's pid in the sandbox."""
        return self._handle.pid

    @property
    def alive(self) -> bool:
        return self.closed_reason is None

    async def request(self, op: str, **fields: Any) -> tuple[int, asyncio.Queue[dict[str, Any]]]:
        """Send a request; its events arrive on the returned queue (drop it with
        :meth:`forget`)."""
        if self.closed_reason is not None:
            raise BridgeGone(self.closed_reason)
        req_id = self._next_id
        self._next_id += 1
        try:
            line = proto.encode_request(req_id, op, **fields)
        except proto.ProtocolError as exc:
            raise InvalidArgumentError(f"a {op} request to the kernel bridge: {exc}") from None
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_EVENTS)
        self._waiting[req_id] = queue
        try:
            async with self._send_lock:
                # The bridge reads its stdin promptly; one that does not is wedged.
                async with asyncio.timeout(30.0):
                    await self._handle.send_stdin(line)
        except TimeoutError:
            self.forget(req_id)
            await self.close("it stopped reading requests")
            raise BridgeGone("the kernel bridge stopped reading requests") from None
        except BaseException:
            self.forget(req_id)
            raise
        return req_id, queue

    async def next(self, queue: asyncio.Queue[dict[str, Any]], deadline: float | None,
                   what: str) -> dict[str, Any]:
        """The next event on ``queue``; past ``deadline`` s the bridge is killed."""
        if queue.empty() and self.closed_reason is not None:
            raise BridgeGone(self.closed_reason)
        try:
            async with asyncio.timeout(deadline):
                event = await queue.get()
        except TimeoutError:
            await self.close(f"it did not answer {what} within {deadline:g} s")
            raise BridgeGone(f"the kernel bridge did not answer {what} within {deadline:g} s; "
                             "it was stopped with every context's kernel") from None
        if event["ev"] == proto.EV_GONE:
            raise BridgeGone(str(event.get("reason")))
        return event

    async def call(self, op: str, deadline: float, **fields: Any) -> dict[str, Any]:
        """A request with one answer: ``ok``, or ``fail`` (returned as is, checked)."""
        req_id, queue = await self.request(op, **fields)
        try:
            return await self.next(queue, deadline, op)
        finally:
            self.forget(req_id)

    def forget(self, req_id: int) -> None:
        self._waiting.pop(req_id, None)

    async def _read(self) -> None:
        buffer = bytearray()
        reason, quiet = "it exited", False
        try:
            async for chunk in self._handle:
                if chunk.stream == "stderr":
                    self._stderr += chunk.data
                    del self._stderr[:-STDERR_TAIL]
                    continue
                buffer += chunk.data
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    await self._route(line)
                if len(buffer) > self._max_line:
                    raise proto.ProtocolError(f"an event line over {self._max_line} bytes")
            result = await self._handle.wait()
            reason = f"it exited ({result.reason or f'status {result.exit_code}'})"
        except proto.ProtocolError as exc:
            reason = f"it spoke out of protocol: {exc}"
            await self._kill()
        except SandboxError as exc:  # the sandbox stopped: its reason says it all
            reason, quiet = exc.message, True
        except asyncio.CancelledError:
            reason = "it was stopped"
            raise
        finally:
            self._gone(reason, quiet)

    async def _route(self, line: bytes) -> None:
        """Deliver one event line; raises :class:`~corral.api.bridge_protocol.ProtocolError`
        for a line out of protocol."""
        if not line.strip():
            return
        event = proto.parse_event(line, self._max_line)
        if event["id"] == proto.BRIDGE_ID:
            if event["ev"] == proto.EV_FATAL:
                raise proto.ProtocolError(f"it gave up: {event['message'][:500]}")
            if self._hello.done():
                raise proto.ProtocolError("a second hello")
            if event["version"] != proto.PROTOCOL_VERSION:
                raise proto.ProtocolError(f"it speaks version {event['version']}, the node "
                                          f"{proto.PROTOCOL_VERSION}")
            self._hello.set_result(event)
            return
        queue = self._waiting.get(event["id"])
        if queue is not None:
            # A full queue (a slow reader) holds the bridge back: its stdout fills, and the
            # agent's flow control stops it, rather than memory growing here.
            await queue.put(event)

    def _gone(self, reason: str, quiet: bool = True) -> None:
        if self.closed_reason is not None:
            return
        detail = "" if quiet else bytes(self._stderr[-800:]).decode("utf-8", "replace").strip()
        self.closed_reason = f"the kernel bridge ended: {reason}" + (
            f" (it said: {detail})" if detail else "")
        if not self._hello.done():
            self._hello.set_exception(BridgeGone(self.closed_reason))
            self._hello.exception()  # retrieved: nobody may be waiting
        for queue in self._waiting.values():
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait({"ev": proto.EV_GONE, "reason": self.closed_reason})
        self._waiting.clear()

    async def _kill(self) -> None:
        with contextlib.suppress(SandboxError):
            await self._handle.kill()

    async def close(self, why: str = "it was stopped") -> None:
        """Kill the bridge and every kernel it started."""
        self._gone(why)
        await self._kill()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SandboxError):
            await self._task

