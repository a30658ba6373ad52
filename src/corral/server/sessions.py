"""The web console's cookie, as a credential: which requests it may authenticate.

A browser sends the cookie with every request to the server, whoever's page made it;
SameSite=Strict keeps other sites' pages from sending it, and this module asks more of a
request that relies on it, so that neither a page of another origin nor a link can act
with it:

* an HTTP request must also carry ``X-Corral-CSRF: <token>``, the session's token, which
  only the console's own page learns (from the login answer or ``GET /ui/api/session``,
  whose answers no other origin can read). A header also cannot be set by a form or a
  link. The one exception is ``GET /ui/api/session`` itself: it changes nothing and says
  only what its caller may already read.
* a WebSocket handshake (a browser cannot set its headers) must carry the token as
  ``?csrf=<token>`` and an ``Origin`` equal to the server's own origin (browsers always
  send Origin on a WebSocket handshake, and a page cannot forge it).

Tokens are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Final
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import Scope

from corral.api.errors import ErrorCode

from .store.keys import KeyRef
from .store.ui_sessions import UiSessionStore, csrf_token

COOKIE: Final = "corral_session"
CSRF_HEADER: Final = "x-corral-csrf"
#: Where the session's id is left in the scope of a request its cookie authenticated.
SESSION_SCOPE: Final = "corral.ui_session"
SESSION_PATH: Final = "/ui/api/session"
LOGIN_PATH: Final = "/ui/api/login"
LOGOUT_PATH: Final = "/ui/api/logout"


def is_public(scope: Scope) -> bool:
    """The console's page and assets, and its login: served without a credential."""
    path, method = scope["path"], scope.get("method")
    if scope["type"] != "http":
        return False
    if method in ("GET", "HEAD") and (path in ("/ui", "/ui/")
                                      or path.startswith("/ui/assets/")):
        return True
    return method == "POST" and path == LOGIN_PATH


def session_id(headers: Headers) -> str | None:
    """The session id the request's cookie carries, if any."""
    raw = headers.get("cookie")
    if not raw or len(raw) > 8192:
        return None
    return cookie_parser(raw).get(COOKIE) or None


def own_origin(scope: Scope, headers: Headers) -> str:
    """The origin a page served by this server on the request's host has."""
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return f"{scheme}://{headers.get('host', '')}".lower()


async def authenticate(scope: Scope, headers: Headers, sessions: UiSessionStore,
                       sid: str) -> KeyRef | tuple[ErrorCode, str]:
    """The key session ``sid`` stands for, if the request may use it; else why not."""
    if scope["type"] == "websocket":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = (query.get("csrf") or [""])[0]
        origin = headers.get("origin", "").lower()
        if not origin or not hmac.compare_digest(origin.encode(),
                                                 own_origin(scope, headers).encode()):
            return (ErrorCode.PERMISSION_DENIED,
                    "a WebSocket opened with the console's cookie must come from the "
                    "console's own origin")
    else:
        token = headers.get(CSRF_HEADER, "")
        if scope.get("method") == "GET" and scope["path"] == SESSION_PATH:
            token = csrf_token(sid)
    if not token or not hmac.compare_digest(token.encode(), csrf_token(sid).encode()):
        return (ErrorCode.UNAUTHENTICATED,
                "the session cookie authenticates only with its CSRF token (header "
                "X-Corral-CSRF, or ?csrf= on a WebSocket); GET /ui/api/session says it")
    found = await asyncio.to_thread(sessions.find, sid)
    if found is None:
        return (ErrorCode.UNAUTHENTICATED,
                "the console session has ended (logged out, expired or its key revoked); "
                "log in again")
    scope[SESSION_SCOPE] = sid
    return found
