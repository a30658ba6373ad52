"""``/ui``: the web console's page, its assets, and its session (log in, out, who am I).

Outside the published API (like ``/e2b``): the page and ``/ui/api/*`` are the console's,
not a client's. The page and assets need no credential; every answer of theirs carries a
strict Content-Security-Policy (scripts and styles from this origin only, no inline
script, no framing), ``nosniff`` and ``no-referrer``. Assets whose names carry a content
hash (``index-3f9a1c2b.js``) are cached for a year, immutable; the page is revalidated.

``POST /ui/api/login`` takes an API key in its JSON body (never a URL) and answers with a
session cookie (HttpOnly, SameSite=Strict, Path=/, Secure under TLS) and the session's CSRF
token; :mod:`corral.server.sessions` says what the cookie authenticates. A bad key counts
against the address's failed-authentication limit, as a bad key on any route does, and is
in the access log only: it names no tenant, so the audit log has nowhere to put it.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.api.errors import AuthenticationError, ErrorCode, InvalidArgumentError

from ..audit import record
from ..auth import OPERATOR_SCOPE, tenant_of
from ..errors import error_response, retry_after
from ..ratelimit import KEY_ID_SCOPE, Buckets, client_name
from ..sessions import COOKIE, LOGIN_PATH, LOGOUT_PATH, SESSION_PATH, SESSION_SCOPE
from ..store.keys import MAX_KEY_LENGTH, KeyRef, KeyStore
from ..store.ui_sessions import UiSessionStore, csrf_token

router = APIRouter(include_in_schema=False)
DIST: Final = Path(__file__).resolve().parent.parent / "ui" / "dist"
ASSETS_PATH: Final = "/ui/assets/{name}"
#: Route templates of the console, for the access log, metrics and audit layers.
TEMPLATES: Final = ("/ui", "/ui/", ASSETS_PATH, LOGIN_PATH, SESSION_PATH, LOGOUT_PATH)
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; "
              "img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'; "
              "base-uri 'none'; form-action 'self'")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_IMMUTABLE: Final = "public, max-age=31536000, immutable"
_REVALIDATE: Final = "no-cache"
#: An asset's name: one path segment of these characters, with an extension we serve.
_ASSET: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: A name with a content hash, as bundlers write them: ``name-<8+ chars>.ext``.
_HASHED: Final = re.compile(r"^[A-Za-z0-9_.-]+[.-][A-Za-z0-9_-]{8,}\.[a-z0-9]+$")
_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".map": "application/json",
    ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".jpg": "image/jpeg", ".webp": "image/webp", ".ico": "image/x-icon",
    ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8", ".wasm": "application/wasm",
}


def _not_found(what: str) -> Response:
    return error_response(ErrorCode.NOT_FOUND, what, headers=SECURITY_HEADERS)


def _dist(request: Request) -> Path:
    dist: Path = getattr(request.app.state, "ui_dist", None) or DIST
    return dist


def _page(request: Request) -> Response:
    index = _dist(request) / "index.html"
    if not index.is_file():
        return _not_found("the console is not built into this installation (ui/dist)")
    return FileResponse(index, media_type="text/html; charset=utf-8",
                        headers={**SECURITY_HEADERS, "Cache-Control": _REVALIDATE})


@router.api_route("/ui", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    return _page(request)


@router.api_route("/ui/", methods=["GET", "HEAD"])
async def page_slash(request: Request) -> Response:
    return _page(request)


@router.api_route(ASSETS_PATH, methods=["GET", "HEAD"])
async def asset(request: Request, name: str) -> Response:
    """One file of ``dist/assets``: a single plain name, never a path out of it."""
    kind = _TYPES.get(Path(name).suffix.lower()) if _ASSET.match(name) else None
    base = (_dist(request) / "assets").resolve()
    path = (base / name).resolve() if kind else None
    if kind is None or path is None or path.parent != base or not path.is_file():
        return _not_found("no such asset of the console")
    cache = _IMMUTABLE if _HASHED.match(name) else _REVALIDATE
    return FileResponse(path, media_type=kind,
                        headers={**SECURITY_HEADERS, "Cache-Control": cache})


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)


def _session_body(key: KeyRef, session: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"tenant": key.tenant, "key_id": key.id, "operator": key.operator,
                         "csrf": csrf_token(session)}, status_code=status,
                        headers={"Cache-Control": "no-store"})


def _secure(request: Request) -> bool:
    return bool(request.app.state.settings.tls) or request.url.scheme == "https"


async def _login_body(request: Request) -> Login:
    """The login's JSON body. Its type must say JSON: a form of another site can send
    ``text/plain`` that reads as JSON, and must not log a browser in (login CSRF)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise InvalidArgumentError('send {"key": "<api key>"} as application/json')
    try:
        return Login.model_validate_json(await request.body())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))[:64] or 'body'}: "
                             f"{e['msg'][:200]}" for e in exc.errors()[:5])
        raise InvalidArgumentError(f'invalid login (send {{"key": "<api key>"}}): '
                                   f"{problems}") from None


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    """A session for the key in the body; 401 for a bad key (counted as a failure)."""
    body = await _login_body(request)
    failures: Buckets = request.app.state.auth_failures
    address = client_name(request.scope)
    wait = failures.wait(address)
    if wait > 0:
        return error_response(ErrorCode.RATE_LIMITED,
                              "too many failed authentications from this address; try "
                              f"again in {max(1, math.ceil(wait))} s",
                              headers=retry_after(wait))
    keys: KeyStore = request.app.state.keys
    found = await asyncio.to_thread(keys.identify, body.key)
    if found is None:
        failures.take(address)
        return error_response(ErrorCode.UNAUTHENTICATED,
                              "the API key is not valid (unknown or revoked)")
    sessions: UiSessionStore = request.app.state.ui_sessions
    session = await asyncio.to_thread(sessions.create, found)
    await record(request.app, request.scope, found.tenant, found.id, "ui.login", "ok", 200)
    response = _session_body(found, session)
    response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/",
                        secure=_secure(request))
    return response


def _current(request: Request) -> tuple[str, KeyRef]:
    session = request.scope.get(SESSION_SCOPE)
    tenant = tenant_of(request.scope)
    key_id = request.scope.get(KEY_ID_SCOPE)
    if not isinstance(session, str) or tenant is None or not isinstance(key_id, str):
        raise AuthenticationError("no console session: log in with POST /ui/api/login")
    return session, KeyRef(id=key_id, tenant=tenant,
                           operator=request.scope.get(OPERATOR_SCOPE) is True)


@router.get(SESSION_PATH)
async def session(request: Request) -> Response:
    """Who the cookie's session is, and its CSRF token (for a page that was reloaded)."""
    sid, key = _current(request)
    return _session_body(key, sid)


@router.post(LOGOUT_PATH, status_code=204)
async def logout(request: Request) -> Response:
    """End the cookie's session (the cookie and its CSRF header are required)."""
    sid, _ = _current(request)
    sessions: UiSessionStore = request.app.state.ui_sessions
    await asyncio.to_thread(sessions.delete, sid)
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=_secure(request))
    return response
