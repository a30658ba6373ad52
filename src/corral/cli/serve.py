"""``corral serve``: the HTTP API and the node in one process (needs root, like the node)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import replace
from typing import Annotated

import typer

from corral.node.pools import PoolSpec
from corral.node.settings import network_from_env
from corral.runtime import GvisorOptions, get_runtime
from corral.server import ServerSettings, create_app, logs
from corral.server.http import uvicorn_options
from corral.server.tls import TlsFiles, ensure_tls

from ._common import DataDirOption, reporting_errors, say


def serve(
    host: Annotated[str | None, typer.Option(
        "--host", envvar="CORRAL_HOST", show_default="127.0.0.1",
        help="Address to listen on (env CORRAL_HOST). Anything but loopback exposes the "
             "API to the network: put TLS in front of it.")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", envvar="CORRAL_PORT", show_default="8470", min=1, max=65535,
        help="Port to listen on (env CORRAL_PORT).")] = None,
    tls: Annotated[bool | None, typer.Option(
        "--tls/--no-tls", envvar="CORRAL_TLS", show_default="off",
        help="Serve HTTPS with a certificate from a local CA made on first use and kept in "
             "DATA_DIR/tls (env CORRAL_TLS=1).")] = None,
    tls_names: Annotated[list[str] | None, typer.Option(
        "--tls-name", show_default=False,
        help="A host name or IP address the certificate must name besides localhost, "
             "127.0.0.1 and ::1; repeat for more (env CORRAL_TLS_NAMES, comma-separated).")
    ] = None,
    rate: Annotated[float | None, typer.Option(
        "--rate", min=0, show_default="1000",
        help="Requests a second one API key may make, sustained; past it 429 with "
             "Retry-After (env CORRAL_RATE; 0: no limit).")] = None,
    burst: Annotated[int | None, typer.Option(
        "--burst", min=0, show_default="2000",
        help="Requests one API key may make at once above --rate (env CORRAL_BURST).")
    ] = None,
    in_flight: Annotated[int | None, typer.Option(
        "--in-flight", min=0, show_default="1024",
        help="Requests served at once, all keys together; past it 503 (env "
             "CORRAL_IN_FLIGHT).")] = None,
    in_flight_per_key: Annotated[int | None, typer.Option(
        "--in-flight-per-key", min=0, show_default="128",
        help="Requests of one API key served at once, streams included; past it 429 (env "
             "CORRAL_IN_FLIGHT_PER_KEY). docs/api.md lists every limit.")] = None,
    pool: Annotated[list[str] | None, typer.Option(
        "--pool", show_default=False, metavar="IMAGE[:RUNTIME]=SIZE[/MODULES]",
        help="Keep SIZE sandboxes ready, each with a kernel that imported MODULES "
             "(default numpy+pandas+matplotlib; '/' alone: no kernel), e.g. "
             "--pool python:gvisor=4; a tenant's image as TENANT/NAME[:TAG][@RUNTIME]=SIZE, "
             "e.g. --pool acme/my-env:1@gvisor=2/ (refilled after each rebuild); repeat for "
             "more (env CORRAL_POOLS, comma-separated)."),
    ] = None,
    gvisor_platform: Annotated[str | None, typer.Option(
        "--gvisor-platform", metavar="PLATFORM", show_default="systrap where it works",
        help="The gVisor platform of gvisor sandboxes: systrap or ptrace (env "
             "CORRAL_GVISOR_PLATFORM). One that does not work here is refused at start; "
             "`corral doctor` shows which work and why.")] = None,
    net_open: Annotated[list[str] | None, typer.Option(
        "--net-open", metavar="CIDR", show_default=False,
        help="Open a private range (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7 or a "
             "part of one) to sandboxes whose policy names it, or that have network=all; "
             "repeat for more (env CORRAL_NET_OPEN, comma-separated). Loopback, link-local "
             "and metadata addresses can never be opened.")] = None,
    net_dns: Annotated[str | None, typer.Option(
        "--net-dns", metavar="ADDR", show_default="the host's first resolver",
        help="The resolver sandboxes' names are looked up with, by Corral's own filtering "
             "resolver (env CORRAL_NET_DNS).")] = None,
    ports_domain: Annotated[str | None, typer.Option(
        "--ports-domain", metavar="DOMAIN", show_default="localhost",
        help="Host-based URLs of sandboxes' ports are {port}-{id}.DOMAIN (env "
             "CORRAL_PORTS_DOMAIN); point a wildcard DNS name at this server to use one "
             "beyond this machine. Path-based URLs work whatever it is.")] = None,
    keep_sandboxes: Annotated[bool | None, typer.Option(
        "--keep-sandboxes/--stop-sandboxes", show_default="keep",
        help="When the server stops, leave running sandboxes for the next server on this "
             "data dir to re-attach, or stop them (env CORRAL_KEEP_SANDBOXES=0).")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", metavar="ADDRESS", envvar="CORRAL_CLUSTER", show_default=False,
        help="Serve as an API server of a cluster on Ray (docs/cluster.md): ray://HOST:PORT "
             "(or HOST:PORT) of the Ray head's GCS, or auto to start a Ray head here. Every "
             "Ray node then runs a Corral node; keys, tenants and records live in the "
             "database (CORRAL_DATABASE_URL, PostgreSQL when there are several API "
             "servers) (env CORRAL_CLUSTER).")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve the Corral HTTP API (sandboxes, commands, files) on this host.

    Every request needs an API key: make one with `corral keys create`, then
    `export CORRAL_URL=http://127.0.0.1:8470 CORRAL_API_KEY=crl_...` for the SDK.
    With --tls the URL is https:// and clients trust the CA file it prints.
    """
    import uvicorn

    with reporting_errors():
        settings = ServerSettings.from_env(data_dir=data_dir, host=host, port=port, tls=tls,
                                           tls_names=tls_names, ports_domain=ports_domain,
                                           limits={
                                               "rate": rate, "burst": burst,
                                               "in_flight": in_flight,
                                               "in_flight_per_key": in_flight_per_key})
        if pool:
            pools = tuple(p for text in pool for p in PoolSpec.parse_list(text))
            settings = replace(settings, node=replace(settings.node, pools=pools))
        if keep_sandboxes is not None:
            settings = replace(settings, keep_sandboxes=keep_sandboxes)
        if net_open or net_dns:
            settings = replace(settings, node=replace(settings.node, network=network_from_env(
                open_ranges=tuple(net_open or ()), dns=net_dns)))
        if gvisor_platform is not None:
            runsc = settings.node.gvisor.runsc if settings.node.gvisor else None
            settings = replace(settings, node=replace(settings.node, gvisor=GvisorOptions(
                runsc=runsc, platform=gvisor_platform)))
        forced = settings.node.gvisor
        if forced is not None and forced.platform is not None:
            get_runtime("gvisor", gvisor=forced)  # refused now, not at the first create
        # JSON lines on stderr: the request log, sandbox events, errors (server/logs.py).
        logs.configure(os.environ.get("CORRAL_LOG_LEVEL", "INFO").upper())
        files = ensure_tls(settings.tls_dir, settings.tls_names) if settings.tls else None
        if cluster:
            from corral.cluster import control, gateway
            settings.node.data_dir.mkdir(parents=True, exist_ok=True)
            app = gateway.create_gateway_app(
                settings, control.env_settings(cluster, settings.node.data_dir))
        else:
            from corral.cluster.node_actor import watch_supervisor
            watch_supervisor()  # a cluster's node server: stop when its actor is gone
            app = create_app(settings)
    if not _is_loopback(settings.host):
        say(f"warning: listening on {settings.host}, reachable from the network"
            + ("" if files else " and without TLS"), style="yellow")
    say(f"serving on {settings.url} (data in {settings.node.data_dir})", style="green")
    if files:
        _say_trust(files)
    say(f"make an API key with: corral keys create --data-dir {settings.node.data_dir}")
    say(f"then, for the SDK and the CLI: export CORRAL_URL={settings.url} "
        "CORRAL_API_KEY=<the key>" + (f" CORRAL_CA_FILE={files.ca_cert}" if files else ""))
    say(f"the web console: {settings.url}/ui (log in with a key)")
    uvicorn.run(app, host=settings.host, port=settings.port, **uvicorn_options(settings),
                ssl_keyfile=str(files.key) if files else None,
                ssl_certfile=str(files.cert) if files else None)


def _say_trust(files: TlsFiles) -> None:
    ca = files.ca_cert
    say(f"TLS certificate signed by Corral's local CA: {ca}")
    say(f"trust it with: CORRAL_CA_FILE={ca} (the Corral SDK), SSL_CERT_FILE={ca} "
        f"(httpx, curl, Python's ssl), REQUESTS_CA_BUNDLE={ca} (requests)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
