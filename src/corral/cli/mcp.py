"""``corral mcp``: an MCP server over stdio whose tools run in sandboxes of a Corral server
(``CORRAL_URL``, ``CORRAL_API_KEY``, ``CORRAL_CA_FILE``)."""

from __future__ import annotations

import anyio


def mcp() -> None:
    """Serve Corral's sandbox tools to an MCP client over stdio.

    Configure the client to start `corral mcp` with CORRAL_URL and CORRAL_API_KEY (and
    CORRAL_CA_FILE for a server started with --tls) in its environment. The same tools are
    served over streamable HTTP by `corral serve` at /mcp.
    """
    from corral.integrations.mcp import SdkBackend, build_server

    anyio.run(build_server(SdkBackend()).run_stdio_async)
