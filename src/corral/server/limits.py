"""Bounds on request bodies: size, nesting, and how long they may take to arrive (ASGI).

* Size: a declared ``Content-Length`` over the bound is refused before a byte is read; a
  chunked body is cut off once it passes the bound (413 ``request_too_large``).
* Time: a body the app reads whole (JSON, stdin) must arrive within ``timeout`` seconds,
  so a client trickling bytes cannot hold a request open; file uploads stream into the
  sandbox (its disk bounds them) and may take as long as they need, but never pause for
  more than ``idle_timeout`` seconds between two pieces. Either is answered 400.
* Nesting: a JSON body nested deeper than ``json_depth`` is refused (400) before it is
  parsed, so no parser recursion is left to chance (100000 nested arrays would otherwise
  end in a RecursionError inside the JSON decoder).

Headers are bounded too (:class:`HeaderLimit`, 16 KiB in all): h11 bounds only a head
that arrives in pieces, and one read can bring in far more. The request line and headers
have their own deadline in :mod:`corral.server.http`.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import re
from collections.abc import Callable
from typing import Final

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import ErrorCode

from .errors import error_response

_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET: Final = bytes(b for b in range(256) if b not in b"[]{}")
_SIGN: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
#: Most bytes of header names and values one request may send.
MAX_HEADER_BYTES: Final = 16 * 1024
_JSON_TYPE: Final = re.compile(rb"^application/([a-z0-9.+-]*\+)?json\b", re.IGNORECASE)


def json_depth(body: bytes, limit: int) -> int:
    """How deeply ``body`` nests arrays and objects, or 0 if it cannot exceed ``limit``.

    Linear and in C but for one pass over the brackets: strings are cut out first (their
    brackets are text), then each bracket counts +1 or -1.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return 0
    skeleton = _STRING.sub(b"", body).translate(None, _NOT_BRACKET).translate(_SIGN)
    return max(itertools.accumulate(array.array("b", skeleton)), default=0)


class HeaderLimit:
    """Answer 400 to a request whose headers pass :data:`MAX_HEADER_BYTES`."""

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(
                len(name) + len(value) for name, value in scope["headers"]) > self.limit:
            await error_response(ErrorCode.INVALID_ARGUMENT,
                                 f"the request's headers are over {self.limit} bytes")(
                                     scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[Scope], bool],
                 json_depth: int = 64, timeout: float = 30.0,
                 idle_timeout: float = 60.0) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt
        self.json_depth = json_depth
        self.timeout = timeout
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.exempt(scope):
            await self.app(scope, self._paced(receive), send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse()(scope, receive, send)
                return
        try:
            body = await self._read(receive)
        except TimeoutError:
            await error_response(
                ErrorCode.INVALID_ARGUMENT,
                f"the request body did not arrive within {self.timeout:g} s")(
                    scope, receive, send)
            return
        except _TooLarge:
            await self._refuse()(scope, receive, send)
            return
        if body is None:  # the client left
            return
        if self.json_depth > 0 and _is_json(scope):
            depth = json_depth(body, self.json_depth)
            if depth > self.json_depth:
                await error_response(
                    ErrorCode.INVALID_ARGUMENT,
                    f"the JSON body nests arrays and objects {depth} deep; at most "
                    f"{self.json_depth} levels are accepted")(scope, receive, send)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body within the deadline (None if the client disconnected)."""
        parts: list[bytes] = []
        seen = 0
        async with asyncio.timeout(self.timeout if self.timeout > 0 else None):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > self.limit:
                    raise _TooLarge
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)

    def _paced(self, receive: Receive) -> Receive:
        """``receive`` that fails a stream pausing longer than ``idle_timeout``."""
        if self.idle_timeout <= 0:
            return receive

        async def paced() -> Message:
            try:
                return await asyncio.wait_for(receive(), self.idle_timeout)
            except TimeoutError:
                # FastAPI re-raises HTTPException from body reading; the route's error
                # handler answers it in the one shape.
                raise HTTPException(400, f"the upload paused for more than "
                                         f"{self.idle_timeout:g} s") from None

        return paced

    def _message(self) -> str:
        return (f"the request body is larger than {self.limit} bytes; upload files with "
                "PUT .../files and send large stdin in pieces")

    def _refuse(self) -> ASGIApp:
        return error_response(ErrorCode.REQUEST_TOO_LARGE, self._message())


class _TooLarge(Exception):
    pass


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(_JSON_TYPE.match(value.strip()))
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that hands the app the body already read, then the client's messages
    (a disconnect) as they come."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
