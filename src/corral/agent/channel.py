"""The agent's end of the node channel: framed reads, locked writes.

The first channel is the agent's stdin/stdout, which the node opened when it started the
sandbox. When that node goes away (a server restart), the agent keeps the sandbox alive and
waits for the next node on a Unix socket (:func:`reconnect`); the channel is then re-attached
to that socket and everything else in the agent carries on.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from corral.api import agent_protocol as proto

# typing is not imported at run time: every module the agent loads slows sandbox start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO


class Channel:
    """A framed, thread-safe duplex channel over two file descriptors."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._lock = threading.Lock()
        self.attach(read_fd, write_fd)

    def attach(self, read_fd: int, write_fd: int) -> None:
        """Serve a node over these two descriptors (the previous ones must be detached)."""
        reader: BinaryIO = os.fdopen(read_fd, "rb", buffering=256 * 1024)
        with self._lock:
            self._reader = reader
            self._write_fd = write_fd
            self.closed = False

    def detach(self) -> None:
        """Drop the node that went away: later sends are discarded until :meth:`attach`."""
        with self._lock:
            self.closed = True
            reader, write_fd = self._reader, self._write_fd
            self._write_fd = -1
        reader.close()
        if write_fd >= 0:
            try:
                os.close(write_fd)
            except OSError:
                pass

    def send(self, header: dict[str, Any], data: bytes = b"") -> None:
        """Send one frame; frames from different threads never interleave."""
        frame = memoryview(proto.encode(header, data))
        with self._lock:
            if self.closed:
                return
            try:
                while frame:
                    written = os.write(self._write_fd, frame)
                    frame = frame[written:]
            except OSError:
                self.closed = True

    def recv(self) -> tuple[dict[str, Any], bytes] | None:
        """Return the next frame, or None when the node closed the channel."""
        prefix = self._reader.read(proto.HEADER.size)
        if len(prefix) < proto.HEADER.size:
            return None
        head_len, data_len = proto.parse_prefix(prefix)
        raw = self._reader.read(head_len)
        data = self._reader.read(data_len) if data_len else b""
        if len(raw) < head_len or len(data) < data_len:
            return None
        return proto.parse_header(raw), data


def reconnect(path: str, deadline: float) -> int | None:
    """Connect to the next node's socket at ``path``; None once ``deadline`` passed.

    Returns the connected socket's descriptor. The node binds the socket only after it
    restarted, so until then every attempt fails fast and is retried.
    """
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            time.sleep(RECONNECT_INTERVAL)
            continue
        return sock.detach()
    return None


RECONNECT_INTERVAL = 0.1


class Credits:
    """Flow-control credits for one outgoing stream (see :mod:`corral.api.agent_protocol`)."""

    def __init__(self, window: int = proto.STREAM_WINDOW) -> None:
        self._cond = threading.Condition()
        self._available = window
        self._closed = False

    def take(self) -> bool:
        """Block until one credit is free; False once the stream was cancelled."""
        with self._cond:
            while self._available <= 0 and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._available -= 1
            return True

    def give(self, count: int) -> None:
        with self._cond:
            self._available += max(0, min(count, proto.STREAM_WINDOW))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
