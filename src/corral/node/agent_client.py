"""The node's end of the agent channel: an asyncio client multiplexing requests by id.

Everything the agent sends is untrusted (code in the sandbox can reach the agent's pipes),
so the reader enforces the frame bounds, drops frames for unknown ids, and closes the
channel when a stream overruns its flow-control window.

One client serves one session. :meth:`AgentClient.pause` ends it for a pause (the pipes
stay open); the session after the pause is a new client's, started with
:meth:`AgentClient.greet` (see :mod:`corral.api.agent_protocol`, *Sessions and pausing*).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from corral.api import agent_protocol as proto
from corral.api.errors import (
    AgentError,
    InvalidArgumentError,
    SandboxError,
    SandboxNotRunningError,
    error_from_code,
)

_CLOSED = ({"ev": "__closed__"}, b"")
#: Frames an earlier session may have left before a new session's hello.
_STALE_FRAMES = 256
#: What a stream closed on this side hands a task still waiting on it.
_DROPPED = ({"ev": "__dropped__"}, b"")
T = TypeVar("T")
#: Longest a single-reply request (stat, mkdir, list, signal, stdin...) may wait.
CALL_TIMEOUT = 60.0
#: Why a paused session's requests failed.
PAUSED = ("the sandbox was paused: what this request followed (a command's output, a "
          "transfer) is lost; commands run on after a resume")
# A well-behaved agent never has more than its credit window (plus a few control frames)
# queued on one stream; code in the sandbox can forge frames, so the bound is in bytes too.
_QUEUE_FRAMES = proto.STREAM_WINDOW + 8
_QUEUE_BYTES = _QUEUE_FRAMES * proto.CHUNK + proto.MAX_DATA


class Stream:
    """Frames for one request id, in order."""

    def __init__(self, client: AgentClient, req_id: int, credited: bool,
                 queue_frames: int = _QUEUE_FRAMES) -> None:
        self._client = client
        self.id = req_id
        self._credited = credited
        self._queue_frames = queue_frames
        self._queue: asyncio.Queue[tuple[dict[str, Any], bytes]] = asyncio.Queue()
        self._queued_bytes = 0
        self._consumed = 0

    def _put(self, frame: tuple[dict[str, Any], bytes]) -> bool:
        if frame is not _CLOSED and frame is not _DROPPED:
            size = len(frame[1]) + 256
            if (self._queue.qsize() >= self._queue_frames
                    or self._queued_bytes + size > _QUEUE_BYTES):
                return False
            self._queued_bytes += size
        self._queue.put_nowait(frame)
        return True

    async def next(self) -> tuple[dict[str, Any], bytes]:
        """The next frame; raises if the channel closed or the agent reported an error."""
        header, data = await self._queue.get()
        if header is _CLOSED[0]:
            raise self._client.closed_error()
        if header is _DROPPED[0]:
            self._queue.put_nowait(_DROPPED)  # for the next waiter too
            raise SandboxError(f"request {self.id} was closed on this side")
        self._queued_bytes -= len(data) + 256
        if header.get("ev") == proto.EV_ERROR:
            code, message = header.get("code"), header.get("message")
            raise error_from_code(str(code), str(message)[:2000])
        if self._credited and header.get("ev") in (proto.EV_DATA, proto.EV_STDOUT,
                                                    proto.EV_STDERR):
            self._consumed += 1
            if self._consumed >= proto.STREAM_WINDOW // 2:
                await self._client.send({"id": 0, "op": proto.OP_CREDIT, "target": self.id,
                                         "n": self._consumed})
                self._consumed = 0
        return header, data

    def close(self) -> None:
        """Stop receiving; a task still waiting on :meth:`next` gets an error, not silence."""
        if self._client._streams.pop(self.id, None) is not None:
            self._queue.put_nowait(_DROPPED)


class AgentClient:
    """Talks to one sandbox's agent over the reader/writer pair the runtime opened."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 label: str) -> None:
        self._reader = reader
        self._writer = writer
        self._label = label
        self._ids = itertools.count(1)
        self._streams: dict[int, Stream] = {}
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.close_reason: str | None = None
        self.on_close: Callable[[str], None] | None = None
        self.agent_pid: int | None = None
        #: Set once the pause request is written: nothing may be written after it.
        self._quiet = False
        self._pause_id: int | None = None

    async def handshake(self, timeout: float) -> None:
        """Wait for the agent's hello, then start the reader loop."""
        self._begin(await self._hello(timeout, skip=0))

    async def greet(self, timeout: float) -> None:
        """Start a new session on a channel an earlier session used (a resumed sandbox's):
        ask for the agent's hello (:data:`~corral.api.agent_protocol.OP_HELLO`), then as
        :meth:`handshake`. Frames an earlier session left in the pipe before the hello are
        skipped (a command's exit the agent sent as it paused)."""
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(proto.encode({"id": 0, "op": proto.OP_HELLO}))
                await self._writer.drain()
        except TimeoutError:
            raise AgentError(f"{self._label}: the agent did not read its hello request "
                             f"within {timeout:g} s") from None
        except (ConnectionError, RuntimeError):
            raise AgentError(f"{self._label}: the agent's channel is closed") from None
        self._begin(await self._hello(timeout, skip=_STALE_FRAMES))

    def _begin(self, hello: dict[str, Any]) -> None:
        """Serve the session the agent's ``hello`` opened."""
        pid = hello.get("pid")
        self.agent_pid = pid if isinstance(pid, int) else None
        # A re-attached agent still runs commands under the ids a previous node gave them.
        next_id = hello.get("next_id")
        if isinstance(next_id, int) and 1 <= next_id < 2**53:
            self._ids = itertools.count(next_id)
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _hello(self, timeout: float, skip: int) -> dict[str, Any]:
        """The agent's hello frame, after at most ``skip`` other frames."""
        try:
            async with asyncio.timeout(timeout):
                for _ in range(skip + 1):
                    prefix = await self._reader.readexactly(proto.HEADER.size)
                    head_len, data_len = proto.parse_prefix(prefix, proto.MAX_REPLY_HEADER)
                    header = proto.parse_header(await self._reader.readexactly(head_len))
                    await self._reader.readexactly(data_len)
                    if header.get("ev") == proto.EV_HELLO:
                        break
        except TimeoutError:
            raise AgentError(
                f"{self._label}: the agent did not start within {timeout:g} s") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            raise AgentError(f"{self._label}: the agent exited during start-up") from None
        except proto.ProtocolError as exc:
            raise AgentError(f"{self._label}: the agent spoke out of protocol: {exc}") from None
        if header.get("ev") != proto.EV_HELLO or header.get("version") != proto.PROTOCOL_VERSION:
            raise AgentError(f"{self._label}: unexpected agent greeting {header!r:.200}")
        return header

    async def _read_loop(self) -> None:
        reason = "the agent closed its channel"
        try:
            while True:
                prefix = await self._reader.readexactly(proto.HEADER.size)
                head_len, data_len = proto.parse_prefix(prefix, proto.MAX_REPLY_HEADER)
                header = proto.parse_header(await self._reader.readexactly(head_len))
                data = await self._reader.readexactly(data_len) if data_len else b""
                stream = self._streams.get(header["id"])
                if stream is not None and not stream._put((header, data)):
                    reason = "the agent overran a stream's flow-control window"
                    break
                if header["id"] == self._pause_id and self._pause_id is not None:
                    return  # paused: read no further (see pause), at a frame's end
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except proto.ProtocolError as exc:
            reason = f"the agent spoke out of protocol: {exc}"
        self._shut(reason)

    def _shut(self, reason: str, close_writer: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for stream in list(self._streams.values()):
            stream._put(_CLOSED)
        self._streams.clear()
        if close_writer:
            self._writer.close()
        if self.on_close is not None:
            self.on_close(reason)

    def closed_error(self) -> SandboxNotRunningError:
        return SandboxNotRunningError(f"{self._label} is not running: {self.close_reason}")

    async def send(self, header: dict[str, Any], data: bytes = b"") -> None:
        if self.closed:
            raise self.closed_error()
        try:
            frame = proto.encode(header, data)
        except proto.ProtocolError as exc:
            raise InvalidArgumentError(f"request too large for the sandbox: {exc}") from None
        async with self._write_lock:
            if self._quiet:  # the pause was written: nothing may follow it
                raise SandboxNotRunningError(f"{self._label} is being paused")
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, RuntimeError):
                self._shut("the agent's channel broke")
                raise self.closed_error() from None

    async def pause(self, deadline: float) -> None:
        """End this session for a pause (:data:`~corral.api.agent_protocol.OP_PAUSE`).

        Nothing is written after the pause request (a byte left in a host pipe would be
        lost in a checkpoint, or corrupt the next session); once the agent's ``ok`` is read
        (every request before it read, too), nothing more is read either. Then this client
        is closed with :data:`PAUSED`: its streams fail with it, ``on_close`` is not
        called, and the pipes are left open (after a freeze the next session uses them).
        An agent that does not answer within ``deadline`` is not trusted: the channel is
        closed (``on_close`` runs) and AgentError raised.
        """
        if self.closed:
            raise self.closed_error()
        req_id = next(self._ids)
        stream = Stream(self, req_id, False)
        self._streams[req_id] = stream
        self._pause_id = req_id
        async with self._write_lock:
            if self.closed:
                raise self.closed_error()
            self._quiet = True
            try:
                self._writer.write(proto.encode({"id": req_id, "op": proto.OP_PAUSE}))
                await self._writer.drain()
            except (ConnectionError, RuntimeError):
                self._shut("the agent's channel broke")
                raise self.closed_error() from None
        try:
            header, _ = await self.within(deadline, stream.next(), "a pause")
        finally:
            stream.close()
        if header.get("ev") != proto.EV_OK:
            self._shut(f"the agent refused to pause: {header!r:.200}")
            raise AgentError(f"{self._label}: unexpected reply {header.get('ev')!r} to pause")
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=deadline)
        self.on_close = None
        self._shut(PAUSED, close_writer=False)
        if self._writer.get_extra_info("socket") is not None:
            # A socket channel (an adopted sandbox's): the agent closes it after its ok, and
            # a checkpoint must not begin before (gVisor cannot save a connected host socket).
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(deadline):
                    while await self._reader.read(65536):
                        pass
            self._writer.close()

    async def open(self, op: str, data: bytes = b"", *, credited: bool = False,
                   queue_frames: int = _QUEUE_FRAMES, **fields: Any) -> Stream:
        """Send a request and return the stream its replies arrive on.

        ``queue_frames``: how many frames may wait unread on it before the agent counts as
        overrunning it (a stream carrying acknowledgements besides data needs more).
        """
        if self.closed:
            raise self.closed_error()
        req_id = next(self._ids)
        stream = Stream(self, req_id, credited, queue_frames)
        self._streams[req_id] = stream
        try:
            await self.send({"id": req_id, "op": op, **fields}, data)
        except BaseException:
            stream.close()
            raise
        return stream

    def follow(self, req_id: int, *, credited: bool = False) -> Stream:
        """The stream of an earlier session's request (a running command's id), to receive
        its frames again once the agent is asked to send them (``attach``)."""
        if self.closed:
            raise self.closed_error()
        if req_id in self._streams or req_id < 1:
            raise InvalidArgumentError(f"request {req_id} is already followed")
        stream = Stream(self, req_id, credited)
        self._streams[req_id] = stream
        return stream

    async def call(self, op: str, data: bytes = b"", *, deadline: float | None = CALL_TIMEOUT,
                   **fields: Any) -> dict[str, Any]:
        """Send a request and return its single ``ok`` reply."""
        header, _ = await self.call_with_data(op, data, deadline=deadline, **fields)
        return header

    async def call_with_data(self, op: str, data: bytes = b"", *,
                             deadline: float | None = CALL_TIMEOUT, **fields: Any
                             ) -> tuple[dict[str, Any], bytes]:
        """Send a request and return its single ``ok`` reply with the reply's data.

        The agent must answer within ``deadline`` seconds; one that does not is wedged or
        subverted, and the channel (so the sandbox) is closed.
        """
        stream = await self.open(op, data, **fields)
        try:
            header, reply_data = await self.within(deadline, stream.next(), op)
        finally:
            stream.close()
        if header.get("ev") != proto.EV_OK:
            raise AgentError(f"{self._label}: unexpected reply {header.get('ev')!r} to {op}")
        return header, reply_data

    async def within(self, deadline: float | None, awaitable: Awaitable[T], what: str) -> T:
        """Await a reply the agent owes; past ``deadline``, stop trusting it: close the channel."""
        try:
            async with asyncio.timeout(deadline):
                return await awaitable
        except TimeoutError:
            self._shut(f"the agent did not answer {what} within {deadline:g} s")
            raise AgentError(f"{self._label}: the agent did not answer {what} within "
                             f"{deadline:g} s; the sandbox was stopped") from None

    async def read_file(self, path: str) -> tuple[int, AsyncIterator[bytes]]:
        """Open a download; returns the file's size and an iterator over its chunks."""
        stream = await self.open(proto.OP_READ, path=path, credited=True)
        try:
            header, _ = await stream.next()
        except BaseException:
            stream.close()
            raise
        size = header.get("size")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    head, data = await stream.next()
                    if head.get("ev") == proto.EV_END:
                        return
                    yield data
            finally:
                if not self.closed and stream.id in self._streams:
                    stream.close()
                    await self.send({"id": 0, "op": proto.OP_CANCEL, "target": stream.id})
        return (size if isinstance(size, int) else -1), chunks()

    async def write_file(self, path: str, chunks: AsyncIterator[bytes], mode: int, *,
                         user: str | int | None = None) -> int:
        """Upload a file from ``chunks`` with a bounded number of chunks in flight; the
        file and the parents created are ``user``'s when one is named."""
        fields: dict[str, Any] = {} if user is None else {"user": user}
        stream = await self.open(proto.OP_WRITE, path=path, mode=mode, **fields)
        try:
            await stream.next()  # opened
            in_flight = 0
            buffer = bytearray()
            async for piece in chunks:
                buffer += piece
                while len(buffer) >= proto.CHUNK:
                    await self.send({"id": 0, "op": proto.OP_CHUNK, "target": stream.id},
                                    bytes(buffer[:proto.CHUNK]))
                    del buffer[:proto.CHUNK]
                    in_flight += 1
                    while in_flight >= proto.STREAM_WINDOW // 2:
                        await self.within(CALL_TIMEOUT, stream.next(), "an upload chunk")
                        in_flight -= 1
            await self.send({"id": 0, "op": proto.OP_CHUNK, "target": stream.id, "eof": True},
                            bytes(buffer))
            while True:
                header, _ = await self.within(CALL_TIMEOUT, stream.next(), "an upload")
                if header.get("ev") == proto.EV_END:
                    size = header.get("size")
                    return size if isinstance(size, int) else -1
        except BaseException:
            if not self.closed:
                await self.send({"id": 0, "op": proto.OP_CANCEL, "target": stream.id})
            raise
        finally:
            stream.close()

    async def close(self) -> None:
        self._shut("the sandbox was stopped")
        if self._task is not None:
            self._task.cancel()
