"""``corral mcp``: an MCP server over stdio whose tools run in sandboxes of a Corral server
(``CORRAL_URL``, ``CORRAL_API_KEY``, ``CORRAL_CA_FILE``)."""

from __future__ import annotations

import os
from typing import Annotated

import anyio
import typer

from corral.api.network import NetworkPolicy

from ._common import reporting_errors


def mcp(
    net: Annotated[list[str] | None, typer.Option(
        "--net", metavar="POLICY", show_default="none",
        help="The most a model may ask a sandbox to reach with create_sandbox's network "
             "argument: all, or allow:ENTRY,... and deny:ENTRY,... (repeatable; env "
             "CORRAL_MCP_NETWORK, space-separated). The model may name only entries within "
             "it.")] = None,
) -> None:
    """Serve Corral's sandbox tools to an MCP client over stdio.

    Configure the client to start `corral mcp` with CORRAL_URL and CORRAL_API_KEY (and
    CORRAL_CA_FILE for a server started with --tls) in its environment. The same tools are
    served over streamable HTTP by `corral serve` at /mcp.

    Example: `corral mcp --net allow:pypi.org,files.pythonhosted.org` lets the model give a
    sandbox the package index, and nothing else.
    """
    from corral.integrations.mcp import SdkBackend, build_server

    with reporting_errors():
        ceiling = NetworkPolicy.parse_flags(
            net or os.environ.get("CORRAL_MCP_NETWORK", "").split(),
            "--net" if net else "CORRAL_MCP_NETWORK")
    anyio.run(build_server(SdkBackend(), ceiling).run_stdio_async)
