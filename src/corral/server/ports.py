"""Exposed ports: HTTP, streaming, SSE and WebSocket traffic to apps inside sandboxes.

An app listening on a port inside a sandbox is reached through the server, two ways:

* path-based: ``/v1/sandboxes/{id}/ports/{port}/{path}`` on the server's own address;
* host-based: ``http(s)://{port}-{id}.{domain}/{path}``, where ``domain`` is
  ``CORRAL_PORTS_DOMAIN`` (default ``localhost``: browsers resolve every ``*.localhost`` to
  loopback, so it works out of the box on the server's machine).

The bytes travel through the sandbox's agent (:mod:`corral.node.ports`), which dials the
port on the sandbox's own loopback: nothing listens on a host address for a sandbox, and a
tunnel reaches nothing but the sandbox's own listeners.

A request is let through by the first of these that holds (else ``401``):

1. the port is public (its owner said so);
2. the header ``X-Corral-Port-Token`` is the sandbox's port token;
3. a signed URL: ``?corral_expires=T&corral_signature=S``, made by the owner
   (``POST /v1/sandboxes/{id}/signed-urls``), before ``T``;
4. ``?token=`` with the port token (a browser's first visit): a ``GET`` is redirected to
   the same URL without it and gets a cookie, so the page's later requests need nothing;
5. that cookie (``corral_port``), which holds a signature, never the token;
6. the owner's API key (``Authorization: Bearer`` or ``X-API-Key``).

Signatures are HMAC-SHA256 keyed by the port token, so they die with the sandbox.
What a credential took is removed before the request reaches the app: the token header,
the cookie, the query parameters, an API key. The app's responses lose hop-by-hop headers
and any ``Set-Cookie`` that names Corral's cookie or a ``Domain`` (so one sandbox cannot
set cookies for its siblings); path-based ones also get their cookies' ``Path`` kept under
the port's prefix and ``Content-Security-Policy: sandbox``: a page served from the
server's own origin runs in an opaque origin and cannot act as the server's pages. Browser
apps belong on host-based URLs, which give each port an origin of its own.

Every request and every chunk or message relayed counts as activity for the sandbox's
idle timeout, and a request or WebSocket still open holds the sandbox in use: it is never
idle while one lasts. Limits: :data:`~corral.api.limits.MAX_PORT_CONNECTIONS` connections per
sandbox at once, :data:`~corral.api.limits.PORT_READ_TIMEOUT` seconds of silence from the
app, :data:`MAX_WS_MESSAGE` bytes per WebSocket message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import parse_qsl, urlencode

import httpcore
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response as WsResponse
from websockets.protocol import State
from websockets.uri import parse_uri

from corral.api.models import check_port
from corral.api.errors import (AuthenticationError, ErrorCode, InvalidArgumentError,
                               NotFoundError, PortUnavailableError, RateLimitedError,
                               SandboxError, SandboxNotRunningError, http_status)
from corral.api.limits import PORT_READ_TIMEOUT
from corral.node import NodeSandbox
from corral.node.ports import PortConnection
from corral.node.validation import SANDBOX_ID

from .auth import presented_key
from .errors import error_response
from .ratelimit import Buckets, client_name

if TYPE_CHECKING:
    from .services import SandboxService
    from .store import KeyStore

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-corral-port-token"
COOKIE = "corral_port"
TOKEN_PARAM = "token"
EXPIRES_PARAM = "corral_expires"
SIGNATURE_PARAM = "corral_signature"
#: How long the cookie a ``?token=`` visit sets stays valid, in seconds.
COOKIE_LIFETIME = 24 * 3600
#: Idle connections to apps the server keeps for reuse (by the same client connection
#: only), all sandboxes together, and for how long: each holds one of its sandbox's
#: :data:`~corral.api.limits.MAX_PORT_CONNECTIONS` tunnels.
IDLE_APP_CONNECTIONS = 64
IDLE_APP_SECONDS = 2.0
#: Most bytes of an app's answer relayed as one piece (from the frames already arrived).
RELAY_BATCH = 1024 * 1024
#: Largest WebSocket message relayed either way, in bytes.
MAX_WS_MESSAGE = 16 * 1024 * 1024
#: A path-based response's page runs in an opaque origin: never as the server's own pages.
PATH_CSP = (b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads "
            b"allow-popups-to-escape-sandbox")

_PATH = re.compile(r"^/v1/sandboxes/([^/]+)/ports/([0-9]+)(/.*)?$")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "host"})
#: Close codes an endpoint may not send (they describe a close, they are not one).
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})
_HINT = ("send the sandbox's port token as X-Corral-Port-Token, visit the URL once with "
         "?token=, use a signed URL, or the owner's API key")


def sign(token: str, sandbox_id: str, port: int, expires: int) -> str:
    """The signature that lets a URL or cookie reach ``port`` of ``sandbox_id`` until
    ``expires`` (seconds since the epoch)."""
    message = f"corral-port\n{sandbox_id}\n{port}\n{expires}".encode()
    digest = hmac.new(token.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signature_valid(token: str, sandbox_id: str, port: int, expires: str,
                    signature: str) -> bool:
    if not expires.isdigit() or len(expires) > 12 or int(expires) < time.time():
        return False
    expected = sign(token, sandbox_id, port, int(expires))
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


@dataclass(frozen=True)
class Target:
    """Which port a request is for, and how it named it."""

    sandbox_id: str
    port: int
    #: The path and query the app sees (without the path-based prefix).
    path: str
    query: str
    host_based: bool
    #: Path-based without even a ``/`` after the port: a browser is sent to ``.../``.
    bare: bool = False

    @property
    def prefix(self) -> str:
        return "" if self.host_based else f"/v1/sandboxes/{self.sandbox_id}/ports/{self.port}"


#: Scope key a layer before the gateway sets on a request it has claimed, whose host only
#: looks like a port's (E2B's ``49983-<id>.<domain>``: :mod:`corral.server.e2b.hosts`).
CLAIMED: Final = "corral.not_a_port"


def host_pattern(domain: str) -> re.Pattern[str]:
    return re.compile(r"^([0-9]{1,5})-(sbx-[0-9a-f]{16})\." + re.escape(domain.lower())
                      + r"(?::[0-9]{1,5})?$")


class PortGateway:
    """ASGI middleware: answers every request for a sandbox's port itself (before any API
    key is asked for), and hands everything else to the app."""

    def __init__(self, app: ASGIApp, proxy: PortProxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            target = self.proxy.target(scope)
        except SandboxError as exc:
            await _refuse(scope, receive, send, exc)
            return
        if target is None:
            await self.app(scope, receive, send)
            return
        await self.proxy.serve(scope, receive, send, target)


class PortProxy:
    """Finds the sandbox and port a request names, checks its credential, and relays it."""

    def __init__(self, service: SandboxService, keys: KeyStore, domain: str,
                 failures: Buckets | None = None, cluster_token: str = "") -> None:
        """``cluster_token``: on a cluster's node, the node token with which the control
        plane passes on a request whose owner's key it has checked (it names the tenant)."""
        self.cluster_token = cluster_token
        self.service = service
        self.keys = keys
        self.domain = domain
        self.failures = failures if failures is not None else Buckets(0, 0)
        self._host = host_pattern(domain)
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=_TunnelBackend(service), max_connections=4096,
            max_keepalive_connections=IDLE_APP_CONNECTIONS, keepalive_expiry=IDLE_APP_SECONDS)

    async def aclose(self) -> None:
        await self._pool.aclose()

    def target(self, scope: Scope) -> Target | None:
        """The port ``scope`` is for; None for any other request.

        The path is taken as the client sent it (``raw_path``, still percent-encoded): the
        app gets exactly what was asked for, and nothing decoded (a ``%0d%0a``, a ``%2f``)
        ever becomes part of a header or a different path.
        """
        if scope.get(CLAIMED):
            return None
        query = scope.get("query_string", b"").decode("latin-1")
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = raw.decode("latin-1")
        host = Headers(scope=scope).get("host", "").lower()
        found = self._host.match(host)
        if found is not None:
            return Target(found[2], check_port(int(found[1])), path, query, True)
        found = _PATH.match(path)
        if found is None:
            return None
        if not SANDBOX_ID.match(found[1]):
            raise NotFoundError(f"no running sandbox {found[1]!r:.40}")
        if len(found[2]) > 5 or not 1 <= int(found[2]) <= 65535:
            raise InvalidArgumentError(f"port must be an integer between 1 and 65535, not "
                                       f"{found[2]:.12}")
        return Target(found[1], int(found[2]), found[3] or "/", query, False,
                      bare=found[3] is None)

    async def serve(self, scope: Scope, receive: Receive, send: Send, target: Target) -> None:
        if target.bare and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            # Relative links in the app's pages resolve under the port only from ".../".
            await _redirect(send, target.prefix + "/" + (f"?{target.query}"
                                                          if target.query else ""))
            return
        try:
            sandbox, granted = await self._authorize(scope, target)
        except SandboxError as exc:
            await _refuse(scope, receive, send, exc)
            return
        if granted.redirect is not None:
            await _redirect(send, granted.redirect, granted.cookie)
            return
        # Held in use while the request or WebSocket lasts, however quiet: never idle.
        with self.service.in_use(sandbox.id):
            if scope["type"] == "websocket":
                await _WebSocketRelay(self, sandbox, scope, receive, send, target,
                                      granted).run()
            else:
                await self._http(scope, receive, send, target, granted)

    async def _authorize(self, scope: Scope, target: Target) -> tuple[NodeSandbox, _Grant]:
        found = self.service.port_access(target.sandbox_id)
        if found is None:
            if self.service.is_paused(target.sandbox_id):
                # Not resumed by port traffic: a public port would let anyone wake it.
                raise SandboxNotRunningError(f"sandbox {target.sandbox_id} is paused; its "
                                             "owner resumes it (any API call does)")
            raise NotFoundError(f"no running sandbox {target.sandbox_id!r:.40}")
        sandbox, access = found
        headers = Headers(scope=scope)
        params = parse_qsl(target.query, keep_blank_values=True)
        values = dict(params)
        # A ?token= that is the port token is Corral's, whatever else let the request in:
        # it never reaches the app. Any other ?token= is the app's own.
        token_param = TOKEN_PARAM in values and _same(values[TOKEN_PARAM], access.token)
        signed = EXPIRES_PARAM in values or SIGNATURE_PARAM in values
        signature_ok = signed and signature_valid(
            access.token, sandbox.id, target.port, values.get(EXPIRES_PARAM, ""),
            values.get(SIGNATURE_PARAM, ""))
        # Whatever let the request in, Corral's own credentials never reach the app.
        drop = ({TOKEN_PARAM} if token_param else set()) | (
            {EXPIRES_PARAM, SIGNATURE_PARAM} if signature_ok else set())
        plain = _Grant(query=_without(params, drop) if drop else None)
        if target.port in access.public:
            return sandbox, plain
        given = headers.get(TOKEN_HEADER)
        if given is not None:
            if _same(given, access.token):
                return sandbox, plain
            self._failed(scope, "the port token is not this sandbox's")
        if signed:
            if signature_ok:
                return sandbox, self._visit(scope, target, params, int(values[EXPIRES_PARAM]),
                                            access.token, {EXPIRES_PARAM, SIGNATURE_PARAM})
            self._failed(scope, "the signed URL has expired or its signature is wrong")
        if token_param:
            return sandbox, self._visit(scope, target, params,
                                        int(time.time()) + COOKIE_LIFETIME, access.token,
                                        {TOKEN_PARAM})
        cookie = _cookies(headers).get(COOKIE)
        if cookie is not None:
            cookie_expires, _, signature = cookie.partition(".")
            if signature_valid(access.token, sandbox.id, target.port, cookie_expires,
                               signature):
                return sandbox, plain
            if presented_key(headers) is None and TOKEN_PARAM not in values:
                self._failed(scope, "the port cookie has expired or is not this port's")
        passed_on = headers.get("x-corral-cluster")
        if passed_on is not None and self.cluster_token:
            if (hmac.compare_digest(passed_on.encode(), self.cluster_token.encode())
                    and headers.get("x-corral-tenant") == self.service.owner(sandbox.id)):
                return sandbox, _Grant(query=plain.query, strip_key=True)
            self._failed(scope, "the control plane's credential is not valid for this sandbox")
        key = presented_key(headers)
        if key is not None:
            found_key = await asyncio.to_thread(self.keys.identify, key)
            owner = self.service.owner(sandbox.id)
            if found_key is not None and found_key.tenant == owner:
                return sandbox, _Grant(query=plain.query, strip_key=True)
            self._failed(scope, "the API key is not valid for this sandbox")
        if TOKEN_PARAM in values:
            self._failed(scope, "the port token is not this sandbox's")
        raise AuthenticationError(f"port {target.port} of {sandbox.id} is private: {_HINT}")

    def _failed(self, scope: Scope, why: str) -> NoReturn:
        """Count a wrong credential against the client's address, then refuse it (429 once
        the address has no failures left; a right credential is never refused)."""
        if self.failures.take(client_name(scope)) > 0:
            raise RateLimitedError("too many wrong port credentials from this address; "
                                   "try again shortly")
        raise AuthenticationError(f"{why}; {_HINT}")

    def _visit(self, scope: Scope, target: Target, params: list[tuple[str, str]],
               expires: int, token: str, consumed: set[str]) -> _Grant:
        """A credential in the query: a GET is sent back to the URL without it, holding a
        cookie instead; anything else goes through with the parameters removed."""
        rest = _without(params, consumed)
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return _Grant(query=rest)
        value = f"{expires}.{sign(token, target.sandbox_id, target.port, expires)}"
        max_age = max(0, min(COOKIE_LIFETIME, expires - int(time.time())))
        path = target.prefix + "/" if not target.host_based else "/"
        secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
        cookie = (f"{COOKIE}={value}; Max-Age={max_age}; Path={path}; HttpOnly; "
                  f"SameSite=Lax{secure}")
        location = target.prefix + target.path + (f"?{rest}" if rest else "")
        return _Grant(redirect=location, cookie=cookie)

    def forwarded(self, scope: Scope, target: Target,
                  granted: _Grant) -> list[tuple[bytes, bytes]]:
        """The request's headers as the app should see them."""
        headers = Headers(scope=scope)
        connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        out: list[tuple[bytes, bytes]] = []
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name in _HOP_BY_HOP or name in connection or name == TOKEN_HEADER:
                continue
            if name.startswith("sec-websocket-") or _forwarding(name):
                continue
            if name in ("authorization", "x-api-key") and (
                    granted.strip_key or _corral_key(raw_value)):
                continue  # a Corral API key never reaches sandbox code
            if name == "cookie":
                kept = _without_cookie(raw_value.decode("latin-1"))
                if kept:
                    out.append((b"cookie", kept.encode("latin-1")))
                continue
            out.append((raw_name, raw_value))
        host = headers.get("host", "")
        client = scope.get("client")
        if client:
            out.append((b"x-forwarded-for", str(client[0]).encode()))
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        out.append((b"x-forwarded-proto", scheme.encode()))
        if host:
            out.append((b"x-forwarded-host", host.encode("latin-1")))
        if not target.host_based:
            out.append((b"x-forwarded-prefix", target.prefix.encode()))
        return [(b"host", host.encode("latin-1") or b"localhost"), *out]

    async def _http(self, scope: Scope, receive: Receive, send: Send, target: Target,
                    granted: _Grant) -> None:
        """Relay one request and its response; stop as soon as the client goes away (a
        server-sent event stream would otherwise hold the app's connection forever)."""
        read = asyncio.Event()  # the request body is in (no more receive() for it)
        relay = asyncio.create_task(self._relay(scope, receive, send, target, granted, read))
        watch = asyncio.create_task(_disconnected(receive, read))
        try:
            await asyncio.wait((relay, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, watch):
                task.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if relay.done() and not relay.cancelled():
            relay.result()  # its error, if any: the server closes the connection
        else:
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    async def _relay(self, scope: Scope, receive: Receive, send: Send, target: Target,
                     granted: _Grant, read: asyncio.Event) -> None:
        headers = self.forwarded(scope, target, granted)
        request = Headers(scope=scope)
        body: AsyncIterator[bytes] | None = None
        if "content-length" in request or "transfer-encoding" in request:
            body = self._body(receive, target.sandbox_id, read)
            if "content-length" not in request:
                headers.append((b"transfer-encoding", b"chunked"))
        else:
            read.set()
        query = granted.query if granted.query is not None else target.query
        path = target.path + (f"?{query}" if query else "")
        url = httpcore.URL(scheme=b"http", host=_upstream_host(target.sandbox_id, scope),
                           port=target.port, target=path.encode("latin-1"))
        timeout = {"connect": PORT_READ_TIMEOUT, "read": PORT_READ_TIMEOUT,
                   "write": PORT_READ_TIMEOUT, "pool": 30.0}
        started = False
        try:
            async with self._pool.stream(scope["method"], url, headers=headers, content=body,
                                         extensions={"timeout": timeout}) as response:
                started = True
                await send({"type": "http.response.start", "status": response.status,
                            "headers": _returned(response.headers, target)})
                async for chunk in response.aiter_stream():
                    self.service.touch(target.sandbox_id)
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (SandboxError, httpcore.TimeoutException, httpcore.NetworkError,
                httpcore.ProtocolError) as exc:
            if started:
                raise  # the response began: the connection is all that is left to close
            await error_response(*_proxy_error(exc, target.port))(scope, receive, send)

    async def _body(self, receive: Receive, sandbox_id: str,
                    read: asyncio.Event) -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                read.set()
                raise PortUnavailableError("the client went away while sending its body")
            self.service.touch(sandbox_id)
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body", False):
                read.set()
                return


def _upstream_host(sandbox_id: str, scope: Scope) -> bytes:
    """The pool's name for connections to the app made for this client connection.

    Kept-alive connections to an app are reused by the same client connection only: an app
    that leaves part of one request unread would otherwise hand those bytes, as the start
    of a request, to whichever client came next (a desync one client could aim at another).
    """
    client = scope.get("client") or ("", 0)
    digest = hashlib.blake2s(f"{client[0]}|{client[1]}".encode(), digest_size=8).hexdigest()
    return f"{sandbox_id}.c{digest}".encode()


async def _disconnected(receive: Receive, read: asyncio.Event) -> None:
    """Return once the client went away (after its request body was read)."""
    await read.wait()
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass(frozen=True)
class _Grant:
    """What a credential allows and asks for: a redirect setting a cookie, a query with the
    credential removed, an API key to keep from the app."""

    redirect: str | None = None
    cookie: str | None = None
    query: str | None = None
    strip_key: bool = False


def _forwarding(name: str) -> bool:
    """A header only the proxy may set (whatever its case or ``_`` for ``-``)."""
    name = name.replace("_", "-")
    return name in ("forwarded", "x-real-ip", "x-client-ip", "true-client-ip") or \
        name.startswith(("x-forwarded-", "x-corral-"))


def _corral_key(value: bytes) -> bool:
    """Whether a header value carries a Corral API key (``crl_...`` or ``e2b_...``, maybe
    after a scheme)."""
    return value.rpartition(b" ")[2].strip().startswith((b"crl_", b"e2b_"))


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


def _without(params: list[tuple[str, str]], names: set[str]) -> str:
    """A query string of ``params`` less ``names``."""
    return urlencode([(k, v) for k, v in params if k not in names])


def _cookies(headers: Headers) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    with contextlib.suppress(Exception):
        jar.load(headers.get("cookie", ""))
    return {name: morsel.value for name, morsel in jar.items()}


def _without_cookie(header: str) -> str:
    """A ``Cookie`` header without Corral's own cookie."""
    parts = [p.strip() for p in header.split(";")]
    return "; ".join(p for p in parts if p and p.partition("=")[0].strip() != COOKIE)


def _returned(headers: list[tuple[bytes, bytes]], target: Target) -> list[tuple[bytes, bytes]]:
    """The app's response headers as the client gets them."""
    connection = {t.strip().lower() for name, value in headers if name.lower() == b"connection"
                  for t in value.decode("latin-1").split(",")}
    out: list[tuple[bytes, bytes]] = []
    for raw_name, value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in _HOP_BY_HOP or name in connection:
            continue
        if name == "set-cookie":
            kept = _cookie_set(value.decode("latin-1"), target)
            if kept is not None:
                out.append((b"set-cookie", kept.encode("latin-1")))
            continue
        out.append((raw_name.lower(), value))
    if not target.host_based:
        out.append((b"content-security-policy", PATH_CSP))
    return out


def _cookie_set(header: str, target: Target) -> str | None:
    """A ``Set-Cookie`` the app sent, kept to its own port: None drops it."""
    name, *attributes = [p.strip() for p in header.split(";")]
    if name.partition("=")[0].strip().lower().startswith("corral"):
        return None
    kept = []
    for attribute in attributes:
        key = attribute.partition("=")[0].strip().lower()
        if key == "domain":
            return None
        if key == "path" and not target.host_based:
            continue
        kept.append(attribute)
    if not target.host_based:
        asked = next((a.partition("=")[2].strip() for a in attributes
                      if a.partition("=")[0].strip().lower() == "path"), "/")
        kept.append(f"Path={target.prefix}{asked if asked.startswith('/') else '/'}")
    return "; ".join([name, *kept])


def _proxy_error(exc: Exception, port: int) -> tuple[ErrorCode, str]:
    if isinstance(exc, SandboxError):
        return exc.code, exc.message
    if isinstance(exc, httpcore.TimeoutException):
        return (ErrorCode.PORT_UNAVAILABLE,
                f"the app on port {port} did not answer within {PORT_READ_TIMEOUT:g} s")
    return (ErrorCode.PORT_UNAVAILABLE,
            f"the app on port {port} did not answer with HTTP: {exc or type(exc).__name__}")


async def _redirect(send: Send, location: str, cookie: str | None = None) -> None:
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
               (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer")]
    if cookie is not None:
        headers.append((b"set-cookie", cookie.encode("latin-1")))
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: SandboxError,
                  connected: bool = False) -> None:
    """Answer ``exc`` in the one error shape (a WebSocket handshake as plain HTTP, where the
    server can; ``connected``: its ``websocket.connect`` was received already)."""
    if scope["type"] == "http":
        await error_response(exc.code, exc.message)(scope, receive, send)
        return
    if not connected and (await receive())["type"] != "websocket.connect":
        return  # the client left first
    # A WebSocket handshake: an HTTP answer where the server can send one, else a close.
    if "websocket.http.response" in (scope.get("extensions") or {}):
        response = error_response(exc.code, exc.message)
        await send({"type": "websocket.http.response.start", "status": http_status(exc.code),
                    "headers": response.raw_headers})
        await send({"type": "websocket.http.response.body", "body": bytes(response.body)})
    else:
        await send({"type": "websocket.close", "code": 1008})


class _TunnelStream(httpcore.AsyncNetworkStream):
    """httpcore's view of a port connection: the host is a sandbox id."""

    def __init__(self, conn: PortConnection) -> None:
        self._conn = conn
        self._left = b""

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._left:
            try:
                async with asyncio.timeout(timeout):
                    # Every piece already here at once (up to RELAY_BATCH): one body event
                    # and one send to the client for many 64 KiB frames.
                    self._left = await self._conn.read(RELAY_BATCH)
            except TimeoutError:
                raise httpcore.ReadTimeout("the app did not answer in time") from None
            except SandboxError as exc:
                raise httpcore.ReadError(exc.message) from None
        data, self._left = self._left, b""
        return data  # may exceed max_bytes: httpcore hands h11 whatever it reads

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._conn.write(buffer)
        except TimeoutError:
            raise httpcore.WriteTimeout("the app did not read in time") from None
        except SandboxError as exc:
            raise httpcore.WriteError(exc.message) from None

    async def aclose(self) -> None:
        await self._conn.aclose()

    def get_extra_info(self, info: str) -> Any:
        # The pool asks before it reuses a kept-alive connection: one that is readable while
        # idle has ended (the app closed it, or a pause ended its tunnel), so it makes a new
        # one instead of failing the request on a dead tunnel.
        if info == "is_readable":
            return self._conn.readable
        return None


class _TunnelBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, service: SandboxService) -> None:
        self._service = service

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        sandbox_id = host.partition(".")[0]  # see _upstream_host
        found = self._service.port_access(sandbox_id)
        if found is None:
            raise NotFoundError(f"no running sandbox {sandbox_id!r:.40}")
        return _TunnelStream(await found[0].ports.connect(port))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise InvalidArgumentError("ports are TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _WebSocketRelay:
    """One WebSocket: the client's (served by uvicorn) to the app's (a sans-I/O client
    over a port connection), message by message."""

    def __init__(self, proxy: PortProxy, sandbox: NodeSandbox, scope: Scope, receive: Receive,
                 send: Send, target: Target, granted: _Grant) -> None:
        self.proxy = proxy
        self.sandbox = sandbox
        self.scope = scope
        self.receive = receive
        self.send = send
        self.target = target
        self.granted = granted
        self.conn: PortConnection | None = None
        self.protocol: ClientProtocol | None = None
        self._early: Sequence[object] = ()
        self._opcode = Opcode.TEXT
        self._parts: list[bytes] = []
        self._size = 0

    async def run(self) -> None:
        try:
            accepted = await self._handshake()
        except SandboxError as exc:
            await _refuse(self.scope, self.receive, self.send, exc, connected=True)
            await self._close()
            return
        if accepted is None:
            await self._close()
            return
        await self.send({"type": "websocket.accept", "subprotocol": accepted or None})
        up = asyncio.create_task(self._upstream())
        down = asyncio.create_task(self._downstream())
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            await self._close()
            with contextlib.suppress(Exception):
                await self.send({"type": "websocket.close", "code": 1000})

    async def _handshake(self) -> str | None:
        """Open the app's WebSocket; the subprotocol it chose ('' for none), or None
        (refused, answered already)."""
        message = await self.receive()
        if message["type"] != "websocket.connect":
            return None
        query = self.granted.query if self.granted.query is not None else self.target.query
        path = self.target.path + (f"?{query}" if query else "")
        try:
            uri = parse_uri(f"ws://localhost{path}")
        except InvalidURI:
            raise InvalidArgumentError("the WebSocket's path is not a valid URI") from None
        self.conn = await self.sandbox.ports.connect(self.target.port)
        self.protocol = ClientProtocol(uri, subprotocols=self.scope.get("subprotocols") or None,
                                       max_size=MAX_WS_MESSAGE)
        request = self.protocol.connect()
        for name, value in self.proxy.forwarded(self.scope, self.target, self.granted):
            key = name.decode("latin-1")
            if key.lower() in ("host",):
                del request.headers["Host"]
            request.headers[key] = value.decode("latin-1")
        self.protocol.send_request(request)
        await self._flush()
        while True:
            data = await asyncio.wait_for(self.conn.read(), PORT_READ_TIMEOUT)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            events = self.protocol.events_received()
            for at, event in enumerate(events):
                if isinstance(event, WsResponse):
                    if self.protocol.state is not State.OPEN:
                        raise PortUnavailableError(
                            f"the app on port {self.target.port} refused the WebSocket "
                            f"(HTTP {event.status_code})")
                    self._early = events[at + 1:]  # what the app sent with its answer
                    return event.headers.get("Sec-WebSocket-Protocol", "")
            if not data:
                raise PortUnavailableError(f"the app on port {self.target.port} closed the "
                                           "connection during the WebSocket handshake")

    async def _flush(self) -> None:
        assert self.protocol is not None and self.conn is not None
        for data in self.protocol.data_to_send():
            if data:
                await self.conn.write(data)
            else:
                with contextlib.suppress(SandboxError):
                    await self.conn.write_eof()

    async def _upstream(self) -> None:
        """Client -> app."""
        assert self.protocol is not None
        while True:
            message: Message = await self.receive()
            self.proxy.service.touch(self.sandbox.id)
            if message["type"] == "websocket.disconnect":
                code = message.get("code", 1000)
                with contextlib.suppress(Exception):
                    self.protocol.send_close(code if 1000 <= code < 5000 and code not in
                                             _UNSENDABLE else 1000)
                    await self._flush()
                return
            if message.get("text") is not None:
                self.protocol.send_text(message["text"].encode())
            elif message.get("bytes") is not None:
                self.protocol.send_binary(message["bytes"])
            await self._flush()

    async def _downstream(self) -> None:
        """App -> client, whole messages (at most :data:`MAX_WS_MESSAGE` bytes each)."""
        assert self.protocol is not None and self.conn is not None
        if await self._relay_frames(self._early):
            return
        while True:
            data = await self.conn.read()
            self.proxy.service.touch(self.sandbox.id)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            if await self._relay_frames(self.protocol.events_received()):
                return
            await self._flush()
            if not data or self.protocol.state is State.CLOSED:
                return

    async def _relay_frames(self, events: Sequence[object]) -> bool:
        """Send the client the messages ``events`` complete; True once the app closed."""
        for event in events:
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._opcode, self._parts, self._size = event.opcode, [], 0
            if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self._parts.append(bytes(event.data))
                self._size += len(event.data)
                if self._size > MAX_WS_MESSAGE:
                    await self.send({"type": "websocket.close", "code": 1009,
                                     "reason": "message too big"})
                    return True
                if event.fin:
                    whole = b"".join(self._parts)
                    self._parts, self._size = [], 0
                    if self._opcode is Opcode.TEXT:
                        await self.send({"type": "websocket.send",
                                         "text": whole.decode("utf-8", "replace")})
                    else:
                        await self.send({"type": "websocket.send", "bytes": whole})
            elif event.opcode is Opcode.CLOSE:
                close = Close.parse(event.data) if event.data else None
                await self._flush()
                code = close.code if close else 1000
                await self.send({"type": "websocket.close",
                                 "code": code if code not in _UNSENDABLE else 1000,
                                 "reason": close.reason if close else ""})
                return True
        return False

    async def _close(self) -> None:
        if self.conn is not None:
            await self.conn.aclose()
