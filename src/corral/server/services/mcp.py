"""The MCP tools of :mod:`corral.integrations.mcp`, served by ``corral serve`` itself over
streamable HTTP (``/mcp``): their backend is the server's own sandbox service, acting for
the tenant whose API key authenticated the request, exactly as the REST routes do.

Stateless (no MCP session is kept between requests) and answered as JSON, so any number
of servers behind a balancer serve the same tools.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

from mcp.server.fastmcp import Context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from corral.api import contract, models
from corral.api.errors import AuthenticationError
from corral.api.network import NetworkPolicy
from corral.integrations.mcp.server import NAME_KEY, build_server
from corral.node import SandboxState

from ..auth import tenant_of
from .sandboxes import SandboxService


class ServiceBackend:
    def __init__(self, sandboxes: SandboxService) -> None:
        self._sandboxes = sandboxes

    async def create(self, ctx: Context[Any, Any, Any], name: str | None, image: str,
                     timeout: float, network: NetworkPolicy, gpu: int = 0) -> str:
        tenant = _tenant(ctx)
        if name:
            found = await self._sandboxes.list(tenant, {NAME_KEY: name}, SandboxState.RUNNING)
            if found.sandboxes:
                return found.sandboxes[0].id
        info = await self._sandboxes.create(tenant, models.SandboxCreate(
            image=image, timeout=float(timeout), metadata={NAME_KEY: name} if name else {},
            network=models.network_spec(network),
            resources=models.ResourcesSpec(gpu=gpu or None)))
        return info.id

    @contextlib.asynccontextmanager
    async def _open(self, tenant: str, sandbox_id: str) -> AsyncIterator[contract.SandboxContract]:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "an MCP tool")
        with self._sandboxes.in_use(sandbox_id):  # a tool's work is use while it lasts
            yield sandbox

    def open(self, ctx: Context[Any, Any, Any], sandbox_id: str
             ) -> AbstractAsyncContextManager[contract.SandboxContract]:
        return self._open(_tenant(ctx), sandbox_id)

    async def kill(self, ctx: Context[Any, Any, Any], sandbox_id: str) -> None:
        await self._sandboxes.kill(_tenant(ctx), sandbox_id)


def _tenant(ctx: Context[Any, Any, Any]) -> str:
    request = ctx.request_context.request
    tenant = tenant_of(request.scope) if request is not None else None
    if tenant is None:  # only if the authentication layer were left out of the app
        raise AuthenticationError("no API key")
    return tenant


class McpEndpoint:
    """The streamable-HTTP transport of the MCP server; :meth:`start` with the app."""

    def __init__(self, sandboxes: SandboxService, network: NetworkPolicy | None = None) -> None:
        server = build_server(ServiceBackend(sandboxes), network)
        self._manager = StreamableHTTPSessionManager(
            app=server._mcp_server, json_response=True, stateless=True)
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        await self._stack.enter_async_context(self._manager.run())

    async def close(self) -> None:
        await self._stack.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET":
            # A GET asks for a stream of the server's own messages. A stateless server sends
            # none, and the transport would hold the stream open until the client left: the
            # protocol's answer for a server without one is 405.
            await JSONResponse(_NO_STREAM, status_code=405, headers={"Allow": "POST, DELETE"})(
                scope, receive, send)
            return
        await self._manager.handle_request(scope, receive, send)


#: The JSON-RPC error of a GET (see :meth:`McpEndpoint.__call__`).
_NO_STREAM: dict[str, Any] = {"jsonrpc": "2.0", "id": None, "error": {
    "code": -32000, "message": "Method Not Allowed: this server is stateless and offers no "
                               "stream of its own messages; send requests with POST"}}
