"""Rate limits and concurrency caps: token buckets per API key and per client address.

Three limits, each answered in the one error shape with a ``Retry-After`` header:

* :class:`ServerCap` (before authentication): requests in flight on the whole server.
  Past it, ``503 unavailable``: the server is busy, not the caller at fault.
* :class:`KeyLimits` (after authentication): a token bucket per key (``rate`` a second
  sustained, ``burst`` at once) and a cap on the key's requests in flight. Past either,
  ``429 rate_limited``. Streams count as in flight until they end.
* Failed authentications per client address are a bucket of :class:`Buckets` too, kept by
  :class:`corral.server.auth.Authenticate`.

Why not a library: slowapi and limits decorate Starlette routes and count per window;
these are pure ASGI, so a refused request costs no body read, no routing and no thread,
and every table here is bounded (:class:`Buckets` drops the longest-unused entry first;
a bucket unused for ``burst / rate`` seconds is full again, so dropping it loses nothing).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.errors import ErrorCode

from .errors import error_response, retry_after

#: Where :class:`corral.server.auth.Authenticate` leaves the caller's key id in the scope.
KEY_ID_SCOPE: Final = "corral.key_id"


class Buckets:
    """Token buckets by name (a key id, a client address), at most ``size`` of them.

    ``rate`` tokens a second refill each bucket up to ``burst``; a request takes one.
    ``rate`` or ``burst`` 0 turns the limit off (every :meth:`take` succeeds).
    """

    def __init__(self, rate: float, burst: int, size: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.size = max(1, size)
        self._clock = clock
        # name -> (tokens, when they were counted); oldest use first.
        self._table: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def __len__(self) -> int:
        return len(self._table)

    def wait(self, name: str) -> float:
        """Seconds until ``name`` has a token (0: it has one now). Takes nothing."""
        if not self.enabled:
            return 0.0
        tokens = self._tokens(name, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, name: str) -> float:
        """Take a token of ``name``'s; 0 if there was one, else seconds until there is."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens = self._tokens(name, now)
        if tokens < 1:
            return (1 - tokens) / self.rate
        self._store(name, tokens - 1, now)
        return 0.0

    def _tokens(self, name: str, now: float) -> float:
        entry = self._table.get(name)
        if entry is None:
            return float(self.burst)
        tokens, then = entry
        return min(float(self.burst), tokens + (now - then) * self.rate)

    def _store(self, name: str, tokens: float, now: float) -> None:
        self._table[name] = (tokens, now)
        self._table.move_to_end(name)
        while len(self._table) > self.size:
            self._table.popitem(last=False)
        # Drop the oldest entry if it has refilled: it is the same as no entry.
        oldest = next(iter(self._table.items()), None)
        if oldest is not None and oldest[0] != name and (
                oldest[1][0] + (now - oldest[1][1]) * self.rate >= self.burst):
            del self._table[oldest[0]]


def client_name(scope: Scope) -> str:
    """The client's address as rate limits count it: IPv4 as is, IPv6 by its /64 (one
    host usually holds a whole /64), ``unknown`` for a Unix socket."""
    client = scope.get("client")
    if not client:
        return "unknown"
    host = str(client[0])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class ServerCap:
    """Answer ``503 unavailable`` while ``limit`` requests are already in flight."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await error_response(
                ErrorCode.UNAVAILABLE,
                f"the server is serving its limit of {self.limit} requests at once; "
                "try again shortly", headers=retry_after(1))(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class KeyLimits:
    """Per API key: a token bucket, and a cap on requests in flight (``429 rate_limited``).

    Runs after authentication, which leaves the key's id in the scope; a request without
    one (the public OpenAPI document) passes.
    """

    def __init__(self, app: ASGIApp, rate: float, burst: int, in_flight: int,
                 size: int = 10_000) -> None:
        self.app = app
        self.buckets = Buckets(rate, burst, size)
        self.limit = in_flight
        self.in_flight: dict[str, int] = {}  # only keys with requests in flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key_id = scope.get(KEY_ID_SCOPE) if scope["type"] == "http" else None
        if not isinstance(key_id, str):
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(key_id)
        if wait > 0:
            message = (f"too many requests with this API key: at most {self.buckets.burst} "
                       f"at once and {self.buckets.rate:g} a second; try again in "
                       f"{max(1, math.ceil(wait))} s")
            await error_response(ErrorCode.RATE_LIMITED, message,
                                 headers=retry_after(wait))(scope, receive, send)
            return
        running = self.in_flight.get(key_id, 0)
        if 0 < self.limit <= running:
            message = (f"this API key already has {running} requests in flight, its limit; "
                       "wait for one to end")
            await error_response(ErrorCode.RATE_LIMITED, message,
                                 headers=retry_after(1))(scope, receive, send)
            return
        self.in_flight[key_id] = running + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.in_flight[key_id] - 1
            if left:
                self.in_flight[key_id] = left
            else:
                del self.in_flight[key_id]
