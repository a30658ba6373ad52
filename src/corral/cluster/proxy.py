"""Requests on a sandbox, passed from an API server to the node server that runs it.

The API server has already authenticated the caller, applied its limits and audited the
call; the node server gets the request as it came, less the caller's credentials, plus the
node token and the tenant (:func:`.trust.forward_headers`). Bodies stream both ways
(uploads, downloads, command output as NDJSON), so one hop adds latency but holds no more
than a chunk in memory. WebSockets (terminals) are passed frame by frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from urllib.parse import unquote
from typing import Final

import httpx
import websockets
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.types import Scope
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from corral.api.errors import NotFoundError, UnavailableError

#: Request headers a node server never sees: hop-by-hop ones, and the caller's credentials.
_DROP_REQUEST: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length", "authorization",
    "x-api-key", "cookie", "x-corral-csrf", "x-corral-cluster", "x-corral-tenant",
    "x-corral-key-id", "x-corral-operator"})
_DROP_RESPONSE: Final = frozenset({
    "connection", "keep-alive", "transfer-encoding", "upgrade", "server", "date"})
#: Seconds to connect to a node server; reads may last as long as a command does.
CONNECT_TIMEOUT: Final = 5.0


def passed_path(scope: Scope) -> str:
    """The path as the client sent it (still percent-encoded), to pass on unchanged; one
    with a ``.`` or ``..`` segment (literal or encoded) is refused, since the node, or the
    URL library on the way, would resolve it to another route than the one authorized."""
    raw: str = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    decoded = unquote(raw)
    if any(part in (".", "..") for part in decoded.split("/")) or "\\" in decoded:
        raise NotFoundError("no such route (a path may not hold . or .. segments)")
    return raw


def tls_context(ca: str) -> ssl.SSLContext:
    """Trust exactly the CA ``ca`` (PEM): one node server's own."""
    return _contexts(ca)


@functools.lru_cache(maxsize=4096)
def _contexts(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca)


class Forwarder:
    """HTTP clients for passed-on requests: one per node CA (a connection pool each)."""

    def __init__(self) -> None:
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _client_for(self, ca: str) -> httpx.AsyncClient:
        client = self._clients.get(ca)
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT), verify=tls_context(ca),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
            self._clients[ca] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def forward(self, request: Request, node_address: tuple[str, str],
                      extra: dict[str, str], node: str, adding: dict[str, str] | None = None,
                      keep_credentials: bool = False) -> Response:
        """``request`` passed to ``base_url``, its answer streamed back; ``adding``: fields
        put into a JSON object answered 200 (read whole: a sandbox's description).
        ``keep_credentials``: pass on the caller's cookie and Host (an exposed port's
        request, whose credential the node checks), never its API key. ``node_address``:
        the node server's URL and its CA."""
        base_url, ca = node_address
        client = self._client_for(ca)
        kept = _DROP_REQUEST - {"cookie", "host"} if keep_credentials else _DROP_REQUEST
        headers = [(k, v) for k, v in request.headers.items() if k not in kept]
        headers += list(extra.items())
        query = request.url.query
        url = base_url + passed_path(request.scope) + (f"?{query}" if query else "")
        has_body = request.method not in ("GET", "HEAD", "OPTIONS")
        upstream = client.build_request(
            request.method, url, headers=headers,
            content=request.stream() if has_body else None)
        try:
            reply = await client.send(upstream, stream=True)
        except httpx.TransportError as error:
            raise UnavailableError(f"node {node} of this sandbox did not answer "
                                   f"({type(error).__name__}); try again shortly") from None
        out = {k: v for k, v in reply.headers.items() if k not in _DROP_RESPONSE}
        if adding and reply.status_code == 200 and reply.headers.get(
                "content-type", "").startswith("application/json"):
            body = json.loads(await reply.aread())
            await reply.aclose()
            return JSONResponse({**body, **adding}, headers={
                k: v for k, v in out.items() if k not in ("content-length",
                                                          "content-encoding")})
        return StreamingResponse(reply.aiter_raw(), status_code=reply.status_code,
                                 headers=out, background=BackgroundTask(reply.aclose))


async def forward_websocket(websocket: WebSocket, url: str, extra: dict[str, str],
                            ca: str) -> None:
    """Pass a WebSocket to ``url`` (the node's same path, ``wss://``, its CA ``ca``),
    frame by frame, until either side closes."""
    try:
        upstream = await websockets.connect(url, additional_headers=extra,
                                            ssl=tls_context(ca),
                                            open_timeout=CONNECT_TIMEOUT, max_size=2 ** 22)
    except (OSError, websockets.WebSocketException, TimeoutError):
        await websocket.close(1011)
        return
    await websocket.accept()

    async def client_to_node() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
                elif message.get("text") is not None:
                    await upstream.send(message["text"])
        await upstream.close()

    async def node_to_client() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in upstream:
                if isinstance(frame, bytes):
                    await websocket.send_bytes(frame)
                else:
                    await websocket.send_text(frame)
        code = upstream.close_code or 1000
        with contextlib.suppress(RuntimeError):
            await websocket.close(code if 1000 <= code < 5000 and code != 1005 else 1000)

    tasks = [asyncio.create_task(client_to_node()), asyncio.create_task(node_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
