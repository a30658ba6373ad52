"""The MCP server with the real ``mcp`` client: ``corral mcp`` over stdio, and streamable HTTP
on the server itself (behind the API key, one tenant unable to reach another's sandbox)."""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from examples import mcp_client

from .conftest import Corral

pytestmark = pytest.mark.anyio


def _check(lines: list[str]) -> None:
    tools, mean, wrote, wc, read, killed = lines
    assert tools.split(", ") == ["create_sandbox", "run_code", "run_command", "list_files",
                                 "read_file", "write_file", "kill_sandbox"]
    assert "result:\n5" in mean and wrote == "wrote 2 bytes to /work/note.txt"
    assert "exit code: 0" in wc and "2 /work/note.txt" in wc and read == "hi"
    assert killed.endswith("stopped")


async def test_stdio(corral: Corral) -> None:
    env = {**os.environ, "CORRAL_URL": corral.url, "CORRAL_API_KEY": corral.key,
           "CORRAL_CA_FILE": str(corral.ca)}
    _check(await mcp_client.over_stdio(env))


async def test_streamable_http_on_the_server(corral: Corral) -> None:
    _check(await mcp_client.over_http(corral.url, corral.key, str(corral.ca)))


async def test_http_needs_a_key_and_keeps_tenants_apart(corral: Corral) -> None:
    with corral.http(key="crl_not-a-key") as http:
        refused = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                            headers={"Accept": "application/json, text/event-stream"})
    assert refused.status_code == 401

    def factory(headers: Any = None, timeout: Any = None, auth: Any = None
                ) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=headers, timeout=timeout, auth=auth,
                                 verify=ssl.create_default_context(cafile=str(corral.ca)))

    async def call(key: str, tool: str, /, **arguments: Any) -> str:
        async with streamablehttp_client(f"{corral.url}/mcp",
                                         headers={"Authorization": f"Bearer {key}"},
                                         httpx_client_factory=factory) as (r, w, _), \
                ClientSession(r, w) as session:
            await session.initialize()
            result = await session.call_tool(tool, arguments)
            return "".join(getattr(c, "text", "") for c in result.content)

    mine = await call(corral.key, "create_sandbox", name="shared-name")
    assert await call(corral.key, "create_sandbox", name="shared-name") == mine  # reused
    theirs = await call(corral.other_key, "create_sandbox", name="shared-name")
    assert theirs != mine
    stolen = await call(corral.other_key, "run_command", sandbox_id=mine, command="id")
    assert stolen.startswith("error:") and "no sandbox" in stolen
    for key, sandbox_id in ((corral.key, mine), (corral.other_key, theirs)):
        assert (await call(key, "kill_sandbox", sandbox_id=sandbox_id)).endswith("stopped")
