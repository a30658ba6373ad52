"""How uvicorn serves the app: connection limits and timeouts against slow or greedy clients.

uvicorn (0.54, h11) bounds a request's line and headers in size (16 KiB) but not in time,
and only times out connections idle *between* requests: a client sending its headers one
byte a minute would hold its connection forever. :func:`protocol` adds what is missing:

* a deadline for the request line and headers (``header_timeout``), from the connection's
  first byte (or from the first byte of each later request on a kept-alive connection);
  a connection that misses it is closed;
* a cap on open connections (``max_connections``): one more is answered ``503`` in the
  one error shape and closed, before it can send anything;
* a malformed request is answered ``400`` in the one error shape, not uvicorn's text.

Bodies have their own deadlines (:mod:`corral.server.limits`). uvicorn's own
``limit_concurrency`` is not used: it counts idle connections too, so slow clients would
make everyone else get 503s; requests in flight are capped by
:class:`corral.server.ratelimit.ServerCap` instead.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from corral.api.errors import ErrorCode, http_status

from .settings import ServerSettings


def _error_bytes(code: ErrorCode, message: str) -> bytes:
    return json.dumps({"error": {"code": code.value, "message": message}}).encode()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (class
    attributes; :func:`protocol` makes a subclass with the configured values)."""

    header_timeout: float = 10.0
    max_connections: int = 1000
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if 0 < self.max_connections < len(self.connections):
            self._refuse(f"the server has its limit of {self.max_connections} connections "
                         "open; try again shortly")
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._awaiting_head():
            self._arm()
        super().data_received(data)
        if not self._awaiting_head():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A malformed request: answered in the one error shape, then closed."""
        body = _error_bytes(ErrorCode.INVALID_ARGUMENT, f"malformed HTTP request: {msg}")
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=400, headers=headers),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:
            pass  # a response had started: all that is left is to close
        self.transport.close()

    def _awaiting_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self.header_timeout > 0:
            self._disarm()
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._awaiting_head() and not self.transport.is_closing():
            self.logger.info("closed a connection whose request headers took over %g s",
                             self.header_timeout)
            self.transport.close()

    def _refuse(self, message: str) -> None:
        """Answer 503 ``unavailable`` without reading the request, and close."""
        body = _error_bytes(ErrorCode.UNAVAILABLE, message)
        self.transport.write(
            b"HTTP/1.1 %d Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
            % (http_status(ErrorCode.UNAVAILABLE), len(body), body))
        self.transport.close()


def protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn should use (``uvicorn.Config(http=...)``)."""
    return type("CorralH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections})


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments for ``settings`` (``corral serve`` and tests).

    No access log of uvicorn's: it prints paths with their query strings, and
    :mod:`corral.server.logs` writes a structured one without them. No log config either:
    the serve command configures logging.
    """
    limits = settings.limits
    return {
        "http": protocol(limits.header_timeout, limits.max_connections),
        "timeout_keep_alive": max(1, round(limits.keep_alive)),
        "timeout_graceful_shutdown": (max(1, round(limits.shutdown_grace))
                                      if limits.shutdown_grace > 0 else None),
        "access_log": False,
        "log_config": None,
        "server_header": False,
    }
