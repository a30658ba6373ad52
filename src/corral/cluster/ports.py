"""Exposed ports' traffic in cluster mode: to the sandbox's node, credentials and all.

As on a single server (:mod:`corral.server.ports`), a request for a sandbox's port is
answered before any API key is asked for; here it is passed to the node server that runs
the sandbox, whose port proxy checks the port's credentials (token, cookie, signed URL,
public port), which only it holds.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from corral.api.errors import (AuthenticationError, NotFoundError, SandboxError,
                               SandboxNotRunningError)

from ..server.auth import presented_key, refuse
from ..server.ports import host_pattern
from ..server.store import KeyStore
from .control import Cluster
from .directory import LIVE, LOST
from .proxy import Forwarder, forward_websocket, passed_path
from .trust import forward_headers

_PORT_PATH: Final = re.compile(r"^/v1/sandboxes/([^/]+)/ports/([0-9]+)(/.*)?$")


class ClusterPorts:
    """ASGI middleware, in front of authentication as on a single server: a request for a
    sandbox's exposed port (``/v1/sandboxes/{id}/ports/{port}/...`` or
    ``{port}-{id}.{domain}``) goes to the sandbox's node, whose port proxy checks its
    credential (port token, cookie, signed URL, public port). One carrying its owner's API
    key is checked here and passed on as the owner, the key left behind."""

    def __init__(self, app: ASGIApp, cluster: Cluster, keys: KeyStore, forwarder: Forwarder,
                 domain: str) -> None:
        self.app = app
        self.cluster = cluster
        self.keys = keys
        self.forwarder = forwarder
        self._host = host_pattern(domain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = self._host.match(headers.get("host", "").lower())
        path = _PORT_PATH.match(scope["path"])
        sandbox_id = host[2] if host else path[1] if path else None
        if sandbox_id is None:
            await self.app(scope, receive, send)
            return
        try:
            raw = passed_path(scope)  # no . or .. segment: what is authorized is reached
            placement = await asyncio.to_thread(self.cluster.locate, sandbox_id)
            if placement is None or placement.state not in (LIVE, LOST):
                raise NotFoundError(f"no running sandbox {sandbox_id!r:.40}")
            if placement.state == LOST:
                raise SandboxNotRunningError(f"sandbox {sandbox_id} is lost: {placement.reason}")
            base, ca = self.cluster.node_address(placement.node)
            extra: dict[str, str] = {}
            key = presented_key(headers)
            if key is not None:
                found = await asyncio.to_thread(self.keys.identify, key)
                if found is None or found.tenant != placement.tenant:
                    raise AuthenticationError("the API key is not valid for this sandbox")
                extra = forward_headers(self.cluster.token, found)
        except SandboxError as error:
            await refuse(scope, receive, send, error.code, error.message)
            return
        if scope["type"] == "websocket":
            port = host[1] if host else path[2] if path else ""
            in_raw = _PORT_PATH.match(raw)
            rest = raw if host else (in_raw[3] if in_raw else None) or ""
            query = scope.get("query_string", b"").decode("latin-1")
            url = (f"ws{base.removeprefix('http')}/v1/sandboxes/{sandbox_id}/ports/{port}"
                   f"{rest or '/'}" + (f"?{query}" if query else ""))
            cookie = headers.get("cookie")
            await forward_websocket(WebSocket(scope, receive, send), url,
                                    {**extra, **({"cookie": cookie} if cookie else {})}, ca)
            return
        reply = await self.forwarder.forward(Request(scope, receive), (base, ca), extra,
                                             placement.node, keep_credentials=True)
        await reply(scope, receive, send)
