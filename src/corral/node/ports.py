"""``sandbox.ports``: TCP connections to ports on a sandbox's own loopback, through its agent.

An app the sandbox runs (a web server, a notebook, an API it wrote) listens on a port inside
the sandbox; :meth:`NodePorts.connect` opens a byte stream to it. The node names only the
port: the agent dials ``127.0.0.1`` (then ``::1``) inside the sandbox, so a connection can
reach the sandbox's own listeners and nothing else: not the host, not another sandbox, not
past the sandbox's network policy. Nothing listens on any host address for it either; the
server's exposed-port proxy (:mod:`corral.server.ports`) is built on this.

Both directions are flow controlled over the agent's channel: the agent sends at most
:data:`~corral.api.agent_protocol.STREAM_WINDOW` chunks the reader has not consumed, and the
node at most half that many chunks the agent has not written to the socket yet. A slow
reader or a stuck app therefore holds its own connection back and nothing else.

Example::

    conn = await sb.ports.connect(8080)
    await conn.write(b"GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n")
    while chunk := await conn.read():
        print(chunk)
    await conn.aclose()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING

from corral.api import agent_protocol as proto
from corral.api.errors import AgentError, SandboxError
from corral.api.models import check_port

from .agent_client import AgentClient, Stream

if TYPE_CHECKING:
    from .sandbox import NodeSandbox

#: Longest the agent may take to answer a connect (it gives up dialling after 5 s itself).
CONNECT_TIMEOUT = 30.0
#: Chunks sent that the agent has not yet acknowledged writing, at most.
_SEND_WINDOW = proto.STREAM_WINDOW // 2
#: Frames that may wait on a tunnel's stream: a window of data, of acks, and end or error.
_QUEUE_FRAMES = proto.STREAM_WINDOW + _SEND_WINDOW + 8


class PortConnection:
    """One TCP connection to a port on the sandbox's loopback (see :meth:`NodePorts.connect`).

    :meth:`read` and :meth:`write` may be used from two tasks at once (one each).
    """

    def __init__(self, port: int, client: AgentClient, stream: Stream) -> None:
        self.port = port
        self._client = client
        self._stream = stream
        self._chunks: collections.deque[bytes] = collections.deque()
        self._consumed = 0
        self._unacked = 0
        self._eof = False
        self._error: SandboxError | None = None
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._pump = asyncio.get_running_loop().create_task(self._receive())

    async def _receive(self) -> None:
        """Sort the tunnel's frames: data for :meth:`read`, acks for :meth:`write`."""
        try:
            while True:
                header, data = await self._stream.next()
                event = header.get("ev")
                if event == proto.EV_DATA:
                    if len(self._chunks) >= proto.STREAM_WINDOW:
                        raise AgentError("the agent overran a port connection's window")
                    self._chunks.append(data)
                    self._readable.set()
                elif event == proto.EV_ACK:
                    if self._unacked <= 0:
                        raise AgentError("the agent acknowledged a chunk never sent")
                    self._unacked -= 1
                    self._writable.set()
                elif event == proto.EV_END:
                    self._eof = True
                    self._readable.set()
        except SandboxError as exc:
            self._error = exc
        finally:
            self._readable.set()
            self._writable.set()

    @property
    def readable(self) -> bool:
        """Whether :meth:`read` would return at once: bytes arrived, or the connection
        ended (the app closed it, or it failed: the sandbox was paused or stopped)."""
        return bool(self._chunks) or self._eof or self._error is not None or self._closed

    async def read(self, limit: int = proto.CHUNK) -> bytes:
        """The next bytes the app sent: what has arrived, up to ``limit`` bytes (but at least
        one piece, which may be up to 64 KiB); ``b""`` once it closed its side.

        Raises :class:`~corral.PortUnavailableError` if the app reset the connection, and
        :class:`~corral.SandboxNotRunningError` once the sandbox stopped.
        """
        while not self._chunks:
            if self._eof:
                return b""
            if self._error is not None:
                raise self._error
            if self._closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        pieces = [self._chunks.popleft()]
        size = len(pieces[0])
        while self._chunks and size + len(self._chunks[0]) <= limit:
            pieces.append(self._chunks.popleft())
            size += len(pieces[-1])
        self._consumed += len(pieces)
        if self._consumed >= proto.STREAM_WINDOW // 2 and not self._closed:
            consumed, self._consumed = self._consumed, 0
            await self._client.send({"id": 0, "op": proto.OP_CREDIT, "target": self._stream.id,
                                     "n": consumed})
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the app; returns once at most a window of it is unwritten."""
        view = memoryview(data)
        for start in range(0, len(view), proto.CHUNK):
            await self._send(bytes(view[start:start + proto.CHUNK]), eof=False)

    async def write_eof(self) -> None:
        """Close the sending side (the app reads end of file); reading goes on."""
        await self._send(b"", eof=True)

    async def _send(self, piece: bytes, eof: bool) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise SandboxError(f"the connection to port {self.port} is closed")
            if self._unacked < _SEND_WINDOW:
                break
            self._writable.clear()
            await self._writable.wait()
        self._unacked += 1
        header = {"id": 0, "op": proto.OP_CHUNK, "target": self._stream.id}
        if eof:
            header["eof"] = True
        await self._client.send(header, piece)

    async def aclose(self) -> None:
        """Close the connection both ways (the app sees it closed); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stream.close()
        self._pump.cancel()
        if not self._client.closed:
            with contextlib.suppress(SandboxError):
                await self._client.send({"id": 0, "op": proto.OP_CANCEL,
                                         "target": self._stream.id})

    async def __aenter__(self) -> PortConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class NodePorts:
    """Connections to ports inside one sandbox."""

    def __init__(self, sandbox: NodeSandbox) -> None:
        self._sandbox = sandbox

    async def connect(self, port: int) -> PortConnection:
        """Open a TCP connection to ``port`` on the sandbox's loopback.

        Raises :class:`~corral.PortUnavailableError` if nothing listens there (listen on
        ``0.0.0.0`` or ``127.0.0.1``), :class:`~corral.ResourceExhaustedError` past
        :data:`~corral.api.limits.MAX_PORT_CONNECTIONS` open at once.
        """
        check_port(port)
        client = self._sandbox.channel()
        stream = await client.open(proto.OP_CONNECT, port=port, queue_frames=_QUEUE_FRAMES)
        try:
            header, _ = await client.within(CONNECT_TIMEOUT, stream.next(),
                                            f"a connection to port {port}")
        except BaseException:
            stream.close()
            if not client.closed:
                # Cancelled while dialling: the agent may still open it; close it there.
                task = asyncio.get_running_loop().create_task(_cancel(client, stream.id))
                _cancelling.add(task)
                task.add_done_callback(_cancelling.discard)
            raise
        if header.get("ev") != proto.EV_OK:
            stream.close()
            raise AgentError(f"unexpected reply {header.get('ev')!r:.40} to a port connection")
        return PortConnection(port, client, stream)


_cancelling: set[asyncio.Task[None]] = set()


async def _cancel(client: AgentClient, stream_id: int) -> None:
    with contextlib.suppress(SandboxError):
        await client.send({"id": 0, "op": proto.OP_CANCEL, "target": stream_id})
