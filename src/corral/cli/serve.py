"""``corral serve``: the HTTP API and the node in one process (needs root, like the node)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from corral.server import ServerSettings, create_app

from ._common import DataDirOption, reporting_errors, say


def serve(
    host: Annotated[str | None, typer.Option(
        "--host", envvar="CORRAL_HOST", show_default="127.0.0.1",
        help="Address to listen on (env CORRAL_HOST). Anything but loopback exposes the "
             "API to the network: put TLS in front of it.")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", envvar="CORRAL_PORT", show_default="8470", min=1, max=65535,
        help="Port to listen on (env CORRAL_PORT).")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve the Corral HTTP API (sandboxes, commands, files) on this host.

    Every request needs an API key: make one with `corral keys create`, then
    `export CORRAL_URL=http://127.0.0.1:8470 CORRAL_API_KEY=crl_...` for the SDK.
    """
    import uvicorn

    with reporting_errors():
        settings = ServerSettings.from_env(data_dir=data_dir, host=host, port=port)
        app = create_app(settings)
    if not _is_loopback(settings.host):
        say(f"warning: listening on {settings.host}, reachable from the network and without "
            "TLS", style="yellow")
    say(f"serving on {settings.url} (data in {settings.node.data_dir})", style="green")
    say(f"make an API key with: corral keys create --data-dir {settings.node.data_dir}")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                server_header=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
