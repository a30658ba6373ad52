"""Who is calling: an API key in ``Authorization: Bearer <key>`` or ``X-API-Key``.

:class:`Authenticate` is ASGI middleware in front of everything else, so a request
without a live key is answered 401 before its body is read or parsed, whatever its
path. Keys are looked up by their sha256 (:mod:`corral.server.store.keys`), so nothing
compares the secret byte by byte. Routes take the tenant from :data:`Tenant`. Keys are
never logged.

Failed authentications are rate limited per client address (a token bucket,
:class:`corral.server.ratelimit.Buckets`): an address out of tokens is answered
``429 rate_limited`` without a lookup, unless the key it presents authenticated recently,
so that a client sharing an address with a guesser (behind one proxy, say) keeps working.
Keys carry 256 random bits, so the limit bounds the cost of a flood of bad keys (lookups,
log lines) more than the odds of a guess, which are nil either way.

Some paths authenticate another way (E2B's data plane: a per-sandbox token, not a key):
an :data:`Alternative` names the caller for them, under the same failure limit.

WebSocket handshakes (the terminal route) authenticate as requests do, by the same headers;
a refused one is answered in the same error body, as an HTTP answer to the handshake where
the server can send one, else by closing it (1008) before it is accepted.

A request without a key may carry the web console's session cookie instead: it then
authenticates as the key that logged in (rate limits, audit and all), under the CSRF rules
of :mod:`corral.server.sessions`; failures count against the address like bad keys. The
console's page, assets and login need no credential (the login checks the key it is given,
under the same failure limit).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import (AuthenticationError, ErrorCode, PermissionDeniedError,
                               http_status)

from . import sessions as console
from .errors import error_response, retry_after
from .ratelimit import KEY_ID_SCOPE, Buckets, client_name
from .store import KeyRef, KeyStore
from .store.ui_sessions import UiSessionStore

_SCOPE_KEY = "corral.tenant"
#: Set in the scope of a request whose key is an operator's.
OPERATOR_SCOPE: Final = "corral.operator"
#: How long a key that authenticated stays exempt from its address's failure limit.
RECENT_KEY_SECONDS: Final = 600.0
_HINT = "send `Authorization: Bearer <key>`; `corral keys create` makes one"

#: Another way to authenticate some requests: None (not this request's way: a key is
#: wanted), the caller (a :class:`KeyRef` whose id keys the rate limits), or why the
#: request was refused (401, with that message).
Alternative = Callable[[Scope], Awaitable[KeyRef | str | None]]


def presented_key(headers: Headers) -> str | None:
    header = headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() or None if scheme.lower() == "bearer" else None
    return headers.get("x-api-key") or None


class Authenticate:
    """Answer 401 unless the request carries a live key; record its tenant and key id in
    the scope. Failures are limited per client address by ``failures`` (none: unlimited)."""

    def __init__(self, app: ASGIApp, keys: KeyStore, failures: Buckets | None = None,
                 recent_size: int = 10_000, alternative: Alternative | None = None,
                 sessions: UiSessionStore | None = None) -> None:
        self.app = app
        self.keys = keys
        self.sessions = sessions
        self.alternative = alternative
        self.failures = failures if failures is not None else Buckets(0, 0)
        # sha256 of keys that authenticated lately -> when; oldest first, bounded.
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._recent_size = max(1, recent_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.sessions is not None and console.is_public(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = presented_key(headers)
        cookie = (console.session_id(headers) if key is None and self.sessions is not None
                  else None)
        address = client_name(scope)
        secret = key or cookie
        digest = hashlib.sha256(secret.encode()).hexdigest() if secret else ""
        wait = self.failures.wait(address)
        if wait > 0 and not self._recently_good(digest):
            message = ("too many failed authentications from this address; try again in "
                       f"{max(1, math.ceil(wait))} s")
            await refuse(scope, receive, send, ErrorCode.RATE_LIMITED, message,
                         retry_after(wait))
            return
        other = await self.alternative(scope) if self.alternative is not None else None
        if other is not None:
            if isinstance(other, str):
                self.failures.take(address)
                await refuse(scope, receive, send, ErrorCode.UNAUTHENTICATED, other)
                return
            scope[_SCOPE_KEY] = other.tenant
            scope[KEY_ID_SCOPE] = other.id
            await self.app(scope, receive, send)
            return
        if cookie is not None and self.sessions is not None:
            session = await console.authenticate(scope, headers, self.sessions, cookie)
            if isinstance(session, tuple):
                self.failures.take(address)
                self._recent.pop(digest, None)
                await refuse(scope, receive, send, *session)
                return
            self._remember(digest)
            _identify(scope, session)
            await self.app(scope, receive, send)
            return
        found: KeyRef | None = (await asyncio.to_thread(self.keys.identify, key)
                                if key else None)
        if found is None:
            self.failures.take(address)
            self._recent.pop(digest, None)
            message = (f"no API key: {_HINT}" if not key
                       else "the API key is not valid (unknown or revoked)")
            await refuse(scope, receive, send, ErrorCode.UNAUTHENTICATED, message)
            return
        self._remember(digest)
        _identify(scope, found)
        await self.app(scope, receive, send)

    def _recently_good(self, digest: str) -> bool:
        seen = self._recent.get(digest) if digest else None
        return seen is not None and time.monotonic() - seen < RECENT_KEY_SECONDS

    def _remember(self, digest: str) -> None:
        self._recent[digest] = time.monotonic()
        self._recent.move_to_end(digest)
        while len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)


def _identify(scope: Scope, key: KeyRef) -> None:
    scope[_SCOPE_KEY] = key.tenant
    scope[KEY_ID_SCOPE] = key.id
    scope[OPERATOR_SCOPE] = key.operator


async def refuse(scope: Scope, receive: Receive, send: Send, code: ErrorCode, message: str,
                 headers: dict[str, str] | None = None) -> None:
    """Answer a request, or a WebSocket handshake, with the error body of ``code``."""
    response = error_response(code, message, headers=headers)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    first: Message = await receive()
    if first["type"] != "websocket.connect":
        return  # the client left first
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": http_status(code),
                    "headers": response.raw_headers})
        await send({"type": "websocket.http.response.body", "body": bytes(response.body)})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def _tenant(request: Request) -> str:
    tenant = request.scope.get(_SCOPE_KEY)
    if not isinstance(tenant, str):  # only if the middleware was left out of the app
        raise AuthenticationError(f"no API key: {_HINT}")
    return tenant


Tenant = Annotated[str, Depends(_tenant)]


async def _operator(request: Request) -> str:
    tenant = await _tenant(request)
    if request.scope.get(OPERATOR_SCOPE) is not True:
        raise PermissionDeniedError(
            "only an operator's key may do this; `corral keys create --operator` makes one")
    return tenant


#: The caller's tenant, for routes only an operator's key may call (403 otherwise).
OperatorTenant = Annotated[str, Depends(_operator)]


def is_operator(scope: Scope) -> bool:
    return scope.get(OPERATOR_SCOPE) is True


def tenant_of(scope: Scope) -> str | None:
    """The authenticated tenant of a request, once :class:`Authenticate` has run."""
    tenant = scope.get(_SCOPE_KEY)
    return tenant if isinstance(tenant, str) else None
