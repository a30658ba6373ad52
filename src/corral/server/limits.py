"""A bound on request bodies, enforced while they are read (pure ASGI middleware).

A declared ``Content-Length`` over the bound is refused before a byte is read; a chunked
body is cut off once it passes the bound. File uploads are exempt: they stream into the
sandbox, where its disk limit bounds them.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import ErrorCode

from .errors import error_response


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[Scope], bool]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse()(scope, receive, send)
                return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI re-raises HTTPException from body reading; other errors there
                    # would become a generic 400.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, bounded, send)

    def _message(self) -> str:
        return (f"the request body is larger than {self.limit} bytes; upload files with "
                "PUT .../files and send large stdin in pieces")

    def _refuse(self) -> ASGIApp:
        return error_response(ErrorCode.REQUEST_TOO_LARGE, self._message())
