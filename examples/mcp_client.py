"""An MCP client session with Corral's MCP server: over stdio (``corral mcp``) or over
streamable HTTP (``corral serve`` at /mcp).

    export CORRAL_URL=http://127.0.0.1:8470 CORRAL_API_KEY=$(corral keys create)
    python examples/mcp_client.py            # stdio: starts `corral mcp`
    python examples/mcp_client.py --http     # streamable HTTP on the server itself
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from mcp import ClientSession


async def session_demo(session: ClientSession) -> list[str]:
    """Create (or reuse) a sandbox, run code and a command in it, read a file back."""
    await session.initialize()
    tools = [t.name for t in (await session.list_tools()).tools]

    async def call(tool: str, /, **arguments: Any) -> str:
        result = await session.call_tool(tool, arguments)
        return "".join(getattr(c, "text", "") for c in result.content)

    sandbox_id = await call("create_sandbox", name="mcp-demo")
    outputs = [
        await call("run_code", sandbox_id=sandbox_id,
                   code="import statistics\nstatistics.mean([3, 4, 8])"),
        await call("write_file", sandbox_id=sandbox_id, path="/work/note.txt", content="hi"),
        await call("run_command", sandbox_id=sandbox_id, command="wc -c /work/note.txt"),
        await call("read_file", sandbox_id=sandbox_id, path="/work/note.txt"),
        await call("kill_sandbox", sandbox_id=sandbox_id),
    ]
    return [", ".join(tools), *outputs]


async def over_stdio(env: dict[str, str] | None = None) -> list[str]:
    from mcp import StdioServerParameters
    from mcp.client.stdio import stdio_client

    server = StdioServerParameters(command=sys.executable,
                                   args=["-c", "from corral.cli import main; main()", "mcp"],
                                   env=env if env is not None else dict(os.environ))
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        return await session_demo(session)


async def over_http(url: str, api_key: str, ca_file: str | None = None) -> list[str]:
    import ssl

    import httpx
    from mcp.client.streamable_http import streamablehttp_client

    verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True

    def client(headers: Any = None, timeout: Any = None, auth: Any = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=headers, timeout=timeout, auth=auth, verify=verify)

    async with streamablehttp_client(f"{url}/mcp", headers={"Authorization": f"Bearer {api_key}"},
                                     httpx_client_factory=client) as (read, write, _), \
            ClientSession(read, write) as session:
        return await session_demo(session)


if __name__ == "__main__":
    if "--http" in sys.argv:
        lines = asyncio.run(over_http(os.environ["CORRAL_URL"], os.environ["CORRAL_API_KEY"],
                                      os.environ.get("CORRAL_CA_FILE")))
    else:
        lines = asyncio.run(over_stdio())
    print("\n".join(lines))
