"""The MCP server with the real ``mcp`` client: ``corral mcp`` over stdio, and streamable HTTP
on the server itself (behind the API key, one tenant unable to reach another's sandbox)."""

from __future__ import annotations

import os
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


async def test_a_get_is_refused_at_once_for_there_is_no_stream(corral: Corral) -> None:
    # The stateless server pushes nothing: asking for its stream is a 405, not an open stream.
    with corral.http() as http:
        for accept in ("text/event-stream", "application/json, text/event-stream"):
            answer = http.get("/mcp", headers={"Accept": accept})
            assert answer.status_code == 405, answer.text
            assert answer.headers["allow"] == "POST, DELETE"
            assert answer.json()["error"]["message"].startswith("Method Not Allowed")


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


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables for a networked sandbox")
async def test_a_model_asks_for_network_only_within_the_operators_ceiling(
        corral: Corral) -> None:
    """The model names hosts; `corral mcp --net` (CORRAL_MCP_NETWORK) bounds what it may name.
    Addresses are documentation ranges: the sandbox is created, never sends a packet."""
    from mcp import StdioServerParameters
    from mcp.client.stdio import stdio_client

    env = {**os.environ, "CORRAL_URL": corral.url, "CORRAL_API_KEY": corral.key,
           "CORRAL_CA_FILE": str(corral.ca),
           "CORRAL_MCP_NETWORK": "allow:203.0.113.0/24:443,*.example.org deny:203.0.113.9"}
    server = StdioServerParameters(command=sys.executable,
                                   args=["-c", "from corral.cli import main; main()", "mcp"],
                                   env=env)
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert "203.0.113.0/24:443" in (tools["create_sandbox"].description or "")

        async def call(**arguments: Any) -> str:
            result = await session.call_tool("create_sandbox", arguments)
            return "".join(getattr(c, "text", "") for c in result.content)

        refused = await call(network=["198.51.100.1:443"])
        assert refused.startswith("error:") and "'198.51.100.1:443' is beyond" in refused
        assert (await call(network=["203.0.113.5"])).startswith("error:")  # every port: wider
        sandbox_id = await call(network=["203.0.113.5:443", "pkgs.example.org"])
    with corral.http() as http:
        info = http.get(f"/v1/sandboxes/{sandbox_id}").json()
        assert info["network"] == {"allow": ["203.0.113.5:443", "pkgs.example.org"],
                                   "deny": ["203.0.113.9"]}
        assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204


@asynccontextmanager
async def _mcp_session(corral: Corral) -> AsyncIterator[ClientSession]:
    """An MCP client session on the server's /mcp, over its TLS, with the tenant's key."""
    def factory(headers: Any = None, timeout: Any = None, auth: Any = None
                ) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=headers, timeout=timeout, auth=auth,
                                 verify=ssl.create_default_context(cafile=str(corral.ca)))

    async with streamablehttp_client(f"{corral.url}/mcp",
                                     headers={"Authorization": f"Bearer {corral.key}"},
                                     httpx_client_factory=factory) as (r, w, _), \
            ClientSession(r, w) as session:
        await session.initialize()
        yield session


async def test_without_a_ceiling_a_model_gets_no_network(corral: Corral) -> None:
    async with _mcp_session(corral) as session:
        result = await session.call_tool("create_sandbox", {"network": ["pypi.org:443"]})
        text = "".join(getattr(c, "text", "") for c in result.content)
    assert text.startswith("error:") and "allows none" in text


async def test_create_sandbox_with_a_gpu_says_why_it_cannot(corral: Corral) -> None:
    async with _mcp_session(corral) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert tools["create_sandbox"].inputSchema["properties"]["gpu"]["maximum"] == 8
        result = await session.call_tool("create_sandbox", {"gpu": 1})
        text = "".join(getattr(c, "text", "") for c in result.content)
    assert text.startswith("error:") and "this node has no GPU" in text, text
