"""``/mcp``: Corral's sandbox tools for MCP clients, over streamable HTTP (JSON answers,
stateless), behind the API key like every path (:mod:`corral.server.services.mcp`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope, Send

from ..services.mcp import McpEndpoint

router = APIRouter(tags=["mcp"])
_RPC = {"schema": {"type": "object", "description": "a JSON-RPC 2.0 message"}}


class _Delegated(Response):
    """Hands the whole exchange to the MCP transport (it reads the body and answers)."""

    def __init__(self, endpoint: McpEndpoint) -> None:
        super().__init__()
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._endpoint(scope, receive, send)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The JSON-RPC answer", "content": {"application/json": _RPC}},
    202: {"description": "A notification or response was accepted"},
    400: {"description": "A malformed MCP message (a JSON-RPC error) or request (Corral's "
                          "error shape)", "content": {"application/json": {"schema": {"anyOf": [
                              {"$ref": "#/components/schemas/ErrorBody"}, _RPC["schema"]]}}}},
    405: {"description": "Streams and sessions are not offered (stateless server): use POST; "
                         "the body is a JSON-RPC error", "content": {"application/json": _RPC}},
    406: {"description": "The client does not accept JSON answers; the body is a JSON-RPC "
                         "error", "content": {"application/json": _RPC}}}


async def mcp(request: Request) -> Response:
    """The MCP streamable-HTTP endpoint (protocol 2025-03-26 and later)."""
    endpoint: McpEndpoint = request.app.state.mcp
    return _Delegated(endpoint)


for _method in ("POST", "GET", "DELETE"):
    router.add_api_route("/mcp", mcp, methods=[_method], response_class=Response,
                         operation_id=f"mcp_{_method.lower()}", responses=_RESPONSES,
                         openapi_extra={"requestBody": {"content": {"application/json": _RPC}}}
                         if _method == "POST" else None)
