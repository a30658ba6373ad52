"""Who is calling: an API key in ``Authorization: Bearer <key>`` or ``X-API-Key``.

:class:`Authenticate` is ASGI middleware in front of everything else, so a request
without a live key is answered 401 before its body is read or parsed, whatever its
path. Keys are looked up by their sha256 (:mod:`corral.server.store.keys`), so nothing
compares the secret byte by byte. Routes take the tenant from :data:`Tenant`. Keys are
never logged.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.errors import AuthenticationError, ErrorCode

from .errors import error_response
from .store import KeyStore

_SCOPE_KEY = "corral.tenant"
_HINT = "send `Authorization: Bearer <key>`; `corral keys create` makes one"


def presented_key(headers: Headers) -> str | None:
    header = headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() or None if scheme.lower() == "bearer" else None
    return headers.get("x-api-key") or None


class Authenticate:
    """Answer 401 unless the request carries a live key; record its tenant in the scope."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        tenant = await asyncio.to_thread(self.keys.tenant_of, key) if key else None
        if tenant is None:
            message = (f"no API key: {_HINT}" if not key
                       else "the API key is not valid (unknown or revoked)")
            await error_response(ErrorCode.UNAUTHENTICATED, message)(scope, receive, send)
            return
        scope[_SCOPE_KEY] = tenant
        await self.app(scope, receive, send)


def _tenant(request: Request) -> str:
    tenant = request.scope.get(_SCOPE_KEY)
    if not isinstance(tenant, str):  # only if the middleware was left out of the app
        raise AuthenticationError(f"no API key: {_HINT}")
    return tenant


Tenant = Annotated[str, Depends(_tenant)]
