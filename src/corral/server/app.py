"""The FastAPI application: ``create_app(settings)``.

One process holds the control plane and the node: the lifespan opens the store, starts
the node (which sweeps what a previous run left) and closes both in reverse. Requests go
through logging, rate limits, authentication, the audit trail and the body bounds
(:mod:`.middleware`), then a route: Corral's own, or the E2B-compatible API's mounted at
``/e2b`` (:mod:`.e2b`; ``CORRAL_E2B=0`` leaves it out), or the web console's at ``/ui``
(:mod:`.routes.console`). Docs pages are off; every path needs a key (or the console's
session cookie) but the OpenAPI document, ``GET /openapi.json``, and the console's page,
assets and login.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from corral import __version__
from corral.node import Node
from corral.runtime import Runtime
from corral.runtime.gpu import GpuHost

from . import e2b, errors, middleware, openapi
from .auth import Alternative
from .file_urls import FileUrlAuth, FileUrls
from .metrics import Metrics
from .ports import PortProxy
from .ratelimit import Buckets
from .routes import (aca, audit, code, commands, console, files, mcp, metrics, pools,
                     sandbox_metrics, sandboxes, terminal)
from .routes import images as images_routes
from .routes import node_status
from .routes import snapshots as snapshots_routes
from .routes import volumes as volumes_routes
from .services import CommandService, FileService, IdleReaper, SandboxService
from .services.aca import AcaService
from .services.history import CommandHistory
from .services.mcp import McpEndpoint
from .services.sampler import MetricsSampler
from .services.code import CodeService
from .services.images import ImageService
from .services.snapshots import SnapshotService
from .services.volumes import VolumeService
from .settings import ServerSettings
from .store import KeyStore, SandboxStore, open_engine
from .store.aca_sessions import AcaSessionStore
from .store.audit import AuditStore
from .store.images import ImageNameStore
from .store.snapshots import SnapshotStore
from .store.ui_sessions import SessionPolicy, UiSessionStore
from .store.volumes import VolumeNameStore
from .store.schema import database_url

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings, *,
               runtimes: Mapping[str, Runtime] | None = None,
               ui_dist: Path | None = None, gpus: GpuHost | None = None,
               gpu_root: Path = Path("/")) -> FastAPI:
    """The app serving ``settings``; its node starts when the server does.

    ``runtimes``: the node's only runtimes instead of the host's (tests give a fake one;
    see :class:`corral.node.Node`); only this function takes them, never a setting.
    ``ui_dist``: the console's built files instead of the package's (tests give theirs).
    ``gpus`` and ``gpu_root``: the node's GPUs instead of the host's, and the root their
    driver's files are read from (tests give a fake driver tree).
    """
    engine = open_engine(database_url(settings.node.data_dir, settings.database_url or None))
    keys = KeyStore(engine)
    node = Node(settings.node, runtimes=runtimes, gpus=gpus, gpu_root=gpu_root)
    images = ImageService(node, ImageNameStore(engine), settings.node.data_dir / "contexts",
                          settings.image_quota)
    volumes = VolumeService(node, VolumeNameStore(engine), settings.volume_quota_mib)
    snapshots = SnapshotService(node, SnapshotStore(engine), images,
                                settings.snapshot_quota_mib, settings.snapshot_ttl,
                                settings.snapshot_sweep_interval)
    sandbox_service = SandboxService(node, SandboxStore(engine), settings.ports_domain,
                                     images=images.resolve, volumes=volumes.mounts,
                                     snapshots=snapshots.get,
                                     paused_ttl=settings.paused_ttl,
                                     quota=settings.quota)
    limits = settings.limits
    failures = Buckets(limits.auth_failure_rate, limits.auth_failure_burst, limits.buckets)
    port_proxy = PortProxy(sandbox_service, keys, settings.ports_domain, failures,
                           cluster_token=settings.cluster_token)
    ui_sessions = UiSessionStore(engine, SessionPolicy(
        idle=timedelta(seconds=settings.ui.session_idle),
        lifetime=timedelta(seconds=settings.ui.session_lifetime),
        per_key=settings.ui.sessions_per_key))
    reaper = IdleReaper(sandbox_service, node, settings.idle_check_interval)
    sampler = MetricsSampler(sandbox_service, settings.metrics_interval,
                             settings.metrics_retention)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            await sandbox_service.start()
            await images.start()
            await snapshots.start()
            await app.state.aca.start()
            await app.state.mcp.start()
            reaper.start()
            sampler.start()
            log.info("corral server ready on %s", settings.url)
            yield
        finally:
            await sampler.close()
            await reaper.close()
            await port_proxy.aclose()
            await app.state.mcp.close()
            await app.state.aca.close()
            await snapshots.close()
            await images.close()
            await sandbox_service.close()
            await node.close(detach=settings.keep_sandboxes)
            await sandbox_service.record_all()
            engine.dispose()

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=openapi.SPEC_PATH)
    app.state.settings = settings
    app.state.keys = keys
    app.state.node = node
    app.state.ui_dist = ui_dist
    app.state.auth_failures = failures
    app.state.ui_sessions = ui_sessions
    app.state.sandboxes = sandbox_service
    app.state.sampler = sampler
    app.state.images = images
    app.state.volumes = volumes
    app.state.snapshots = snapshots
    app.state.commands = CommandService(sandbox_service,
                                        CommandHistory(settings.metrics_retention))
    app.state.files = FileService(sandbox_service)
    app.state.code = CodeService(sandbox_service)
    app.state.aca = AcaService(sandbox_service, app.state.files, AcaSessionStore(engine),
                               settings.aca)
    app.state.mcp = McpEndpoint(sandbox_service, settings.mcp_network)
    app.state.metrics = Metrics(node)
    app.state.metrics.add_tenants(sandbox_service, sampler)
    errors.install(app)
    openapi.install(app)
    for module in (sandboxes, images_routes, volumes_routes, snapshots_routes, commands,
                   files, code, metrics, sandbox_metrics, audit, pools, aca, mcp, terminal,
                   console):
        app.include_router(module.router)
    if settings.cluster_token:
        app.include_router(node_status.router)
    app.state.audit = AuditStore(engine)
    extra_routes: list[str] = list(console.TEMPLATES)
    e2b_auth: e2b.TokenAuth | None = None
    if settings.e2b:
        tokens = e2b.mapping.Tokens(settings.node.data_dir / "e2b-token-secret")
        app.mount(e2b.PREFIX, e2b.create_app(sandbox_service, app.state.commands,
                                             app.state.files, tokens, snapshots, sampler,
                                             internet=settings.e2b_internet,
                                             public_images=images.public))
        e2b.install_signed_files(app)
        extra_routes += e2b.templates()
        e2b_auth = e2b.TokenAuth(e2b.PREFIX, tokens, sandbox_service)
    app.state.file_urls = FileUrls(settings.node.data_dir / "file-url-secret")
    file_auth: Alternative = FileUrlAuth(app.state.file_urls, sandbox_service, then=e2b_auth)
    if settings.cluster_token:  # a cluster's node: the control plane calls, as a tenant
        from corral.cluster.trust import node_auth
        file_auth = node_auth(settings.cluster_token, keys, then=file_auth)
    # Logs, metrics, limits, authentication, audit, body bounds: see middleware.py.
    middleware.install(app, settings, keys, app.state.audit, port_proxy, failures,
                       extra_routes=extra_routes, extra_actions=e2b.AUDITED,
                       e2b_prefix=e2b.PREFIX if settings.e2b else None,
                       alternative_auth=file_auth, sessions=ui_sessions)
    return app
