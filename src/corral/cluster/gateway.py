"""The API server of a cluster: Corral's API, with each sandbox's calls sent to its node.

``corral serve --cluster ADDRESS`` serves this app instead of the single-host one. The
layers in front of the routes are the single server's (request log, server cap, header
bounds, API keys, per-key limits, the audit trail, body bounds), over the shared database,
so keys, tenants, limits and the audit log are the cluster's. Then:

* ``POST /v1/sandboxes`` places the sandbox (:mod:`.placement`) and creates it with one
  Ray call to its node's actor; ``GET /v1/sandboxes`` asks the nodes holding the tenant's
  sandboxes, in parallel, and adds those lost with their node;
* every other call on a sandbox (``/v1/sandboxes/{id}`` and below: commands, files, code,
  network, pause, the terminal) is passed to its node server over HTTP
  (:mod:`.proxy`), after the tenant is checked against the shared records; a lost
  sandbox's calls get 410 with the reason;
* an exposed port's traffic (:class:`.ports.ClusterPorts`) goes to the node before any key
  is asked for, as on a single server, and the node checks its credential;
* ``/v1/nodes`` (operators' keys): the nodes, and cordon, uncordon and drain;
* the web console (``/ui``, its sessions in the shared database), the sandboxes' metrics
  for lists (asked of their nodes), the cluster's pools (summed) and the public images
  the nodes hold;
* ``/metrics``: the API server's request figures and the cluster's (:mod:`.metrics`).

What this app does not serve yet in cluster mode (tenants' images, volumes, snapshots, the
E2B, MCP and ACA façades) is answered with a sentence saying so; docs/cluster.md lists it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.websockets import WebSocket

from corral import __version__
from corral.api import models
from corral.api.audit import PoolList
from corral.api.limits import (DEFAULT_METRICS_POINTS, MAX_METRICS_IDS,
                               MAX_METRICS_POINTS)
from corral.api.errors import (InvalidArgumentError, NotFoundError,
                               PermissionDeniedError)

from ..server import errors, openapi
from ..server.audit import AuditTrail
from ..server.auth import OPERATOR_SCOPE, OperatorTenant, Tenant, is_operator, tenant_of
from ..server.limits import BodyLimit, HeaderLimit
from ..server.logs import RequestLog
from ..server.metrics import HttpMetrics, Metrics, RouteTemplates
from ..server.ratelimit import KEY_ID_SCOPE, Buckets, KeyLimits, ServerCap
from ..server.routes import files as files_routes
from ..server.routes.sandbox_metrics import metrics_ids
from ..server.settings import ServerSettings
from ..server.store import KeyStore, open_engine
from ..server.store.audit import AuditStore
from ..node.validation import SANDBOX_ID
from ..server.store.keys import KeyRef
from ..server.store.ui_sessions import SessionPolicy, UiSessionStore
from . import service
from .control import Cluster, ClusterSettings
from .directory import LIVE, STOPPED, Directory
from .metrics import ClusterFigures, NodeFigures, TenantFigures
from .ports import ClusterPorts
from .proxy import Forwarder, forward_websocket
from .trust import forward_headers

router = APIRouter()
nodes_router = APIRouter(prefix="/v1/nodes", tags=["operators"])
_SANDBOX = "/v1/sandboxes/{sandbox_id}"
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _key(request: Request | WebSocket) -> KeyRef:
    tenant = tenant_of(request.scope)
    if tenant is None:
        raise PermissionDeniedError("no caller")
    return KeyRef(id=str(request.scope.get(KEY_ID_SCOPE, "")), tenant=tenant,
                  operator=request.scope.get(OPERATOR_SCOPE) is True)


def _cluster(request: Request | WebSocket) -> Cluster:
    cluster: Cluster = request.app.state.cluster
    return cluster


@router.post("/v1/sandboxes", status_code=201, tags=["sandboxes"])
async def create(body: models.SandboxCreate, request: Request, _tenant: Tenant
                 ) -> JSONResponse:
    if body.snapshot is not None or body.volumes:
        raise InvalidArgumentError("snapshots and volumes stay on the node that made them, "
                                   "and are not served in cluster mode yet (docs/cluster.md)")
    resources = body.resources.to_resources()
    payload = body.model_dump(mode="json", exclude_unset=True, exclude={"node_selector"})
    started = time.perf_counter()
    info = await _cluster(request).create(
        _key(request), payload, image=body.image, cpus=resources.cpus,
        memory_mib=resources.memory_mib, selector=body.node_selector, gpus=resources.gpus,
        gpu_model=resources.gpu_model)
    metrics: Metrics = request.app.state.metrics
    metrics.create_seconds.observe(time.perf_counter() - started)  # only those that started
    return JSONResponse(info, status_code=201)


@router.get("/metrics", response_class=Response, tags=["meta"])
async def prometheus(request: Request, _tenant: Tenant) -> Response:
    """The API server's figures and the cluster's (nodes, pools, sandboxes by state, Ray
    calls); an operator's key also gets each node's and each tenant's. Each node's own
    ``/metrics`` has its sandboxes' figures."""
    metrics: Metrics = request.app.state.metrics
    figures: ClusterFigures = request.app.state.cluster_figures
    await figures.refresh()
    return Response(metrics.exposition(is_operator(request.scope)),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/sandboxes", tags=["sandboxes"])
async def list_(request: Request, _tenant: Tenant) -> models.SandboxList:
    status, payload = await service.list_sandboxes(_cluster(request), _key(request),
                                                   dict(request.query_params))
    if status != 200:
        return JSONResponse(payload, status_code=status)  # type: ignore[return-value]
    return models.SandboxList.model_validate(payload)


@router.get("/v1/metrics/sandboxes", tags=["sandboxes"])
async def sandboxes_metrics(request: Request, _tenant: Tenant,
                            ids: Annotated[str, Query(max_length=MAX_METRICS_IDS * 65)],
                            points: Annotated[int, Query(ge=1, le=MAX_METRICS_POINTS)]
                            = DEFAULT_METRICS_POINTS) -> models.SandboxesMetrics:
    """The newest samples of each of the caller's sandboxes in ``ids``, asked of their
    nodes in parallel (the single server's bounds and answer)."""
    return models.SandboxesMetrics.model_validate(await service.sandbox_metrics(
        _cluster(request), _key(request), metrics_ids(ids), points))


@router.get("/v1/pools", tags=["operators"])
async def pools(request: Request, _tenant: OperatorTenant) -> PoolList:
    """The cluster's warm pools: each image and runtime's, summed over the nodes."""
    return PoolList.model_validate({"pools": _cluster(request).pools()})


@router.get("/v1/images", tags=["images"])
async def images(request: Request, _tenant: Tenant) -> models.ImageList:
    """The public images the nodes hold (in cluster mode a tenant has no images of its
    own yet)."""
    return models.ImageList.model_validate(await service.public_images(_cluster(request),
                                                                       _key(request)))


#: Calls on a sandbox that would make something only its node knows of (copies, snapshots,
#: images) or that need the node's own port credentials: refused, saying so.
_NOT_YET = re.compile(r"^(fork|snapshots|snapshot-filesystem)(/|$)")


@router.api_route(_SANDBOX, methods=_METHODS, include_in_schema=False)
@router.api_route(_SANDBOX + "/{rest:path}", methods=_METHODS, include_in_schema=False)
async def on_sandbox(request: Request, sandbox_id: str, _tenant: Tenant,
                     rest: str = "") -> Response:
    if not SANDBOX_ID.match(sandbox_id):
        raise NotFoundError(f"no sandbox {sandbox_id!r:.80}")
    if _NOT_YET.match(rest):
        raise InvalidArgumentError(
            f"{rest.split('/')[0]} is not served in cluster mode yet: forks and snapshots "
            "stay on a sandbox's node (docs/cluster.md)")
    key = _key(request)
    cluster = _cluster(request)
    placement = await asyncio.to_thread(cluster.placement, key.tenant, sandbox_id)
    forwarder: Forwarder = request.app.state.forwarder
    describes = request.method == "GET" and not rest or rest in ("pause", "resume")
    reply = await forwarder.forward(request, cluster.node_address(placement.node),
                                    forward_headers(cluster.token, key), placement.node,
                                    adding={"node": placement.node} if describes else None)
    if (request.method == "DELETE" and request.url.path.rstrip("/") ==
            f"/v1/sandboxes/{sandbox_id}" and reply.status_code == 204):
        await asyncio.to_thread(cluster.directory.set_state, [sandbox_id], STOPPED,
                                "killed by request", was=(LIVE,))
        cluster.forget(sandbox_id)
    return reply


@router.websocket(_SANDBOX + "/terminal")
async def terminal(websocket: WebSocket, sandbox_id: str) -> None:
    key = _key(websocket)
    cluster = _cluster(websocket)
    try:
        placement = await asyncio.to_thread(cluster.placement, key.tenant, sandbox_id)
        base, ca = cluster.node_address(placement.node)
    except Exception:  # not theirs, lost, or its node unreachable: as the node would
        await websocket.close(1008)
        return
    query = websocket.url.query
    url = (f"ws{base.removeprefix('http')}/v1/sandboxes/{placement.id}/terminal"
           + (f"?{query}" if query else ""))
    await forward_websocket(websocket, url, forward_headers(cluster.token, key), ca)


# -- nodes -------------------------------------------------------------------------------

@nodes_router.get("")
async def nodes(request: Request, _tenant: OperatorTenant) -> dict[str, Any]:
    """Every node the cluster knows: its state, labels, capacity and what it holds."""
    return {"nodes": await service.describe_nodes(_cluster(request))}


@nodes_router.post("/{name}/cordon")
async def cordon(request: Request, name: str, _tenant: OperatorTenant) -> dict[str, Any]:
    """No new sandbox is placed on the node; those it runs go on."""
    return await service.set_node(_cluster(request), name, cordoned=True)


@nodes_router.post("/{name}/uncordon")
async def uncordon(request: Request, name: str, _tenant: OperatorTenant) -> dict[str, Any]:
    """The node takes new sandboxes again (a drain ends too)."""
    return await service.set_node(_cluster(request), name, cordoned=False, draining=False)


@nodes_router.post("/{name}/drain")
async def drain(request: Request, name: str, _tenant: OperatorTenant,
                kill: Annotated[bool, Body(embed=True)] = False) -> dict[str, Any]:
    """Place nothing more on the node; with ``kill``, end the sandboxes it runs now (each
    says why in its stop reason), else let them run to their end."""
    return await service.drain(_cluster(request), name, kill)


# -- the app -----------------------------------------------------------------------------

def reference_spec() -> dict[str, Any]:
    """The API's document: the single server's routes, plus ``/v1/nodes``."""
    from ..server import app as single
    from ..server.routes import (aca, audit, code, commands, console, files, mcp, metrics,
                                 pools, sandbox_metrics, sandboxes, terminal)
    from ..server.routes import images as images_routes
    from ..server.routes import snapshots as snapshots_routes
    from ..server.routes import volumes as volumes_routes
    del single
    reference = FastAPI(title="Corral", version=__version__)
    for module in (sandboxes, images_routes, volumes_routes, snapshots_routes, commands,
                   files, code, metrics, sandbox_metrics, audit, pools, aca, mcp, terminal,
                   console):
        reference.include_router(module.router)
    reference.include_router(nodes_router)
    return openapi.build(reference)


def create_gateway_app(settings: ServerSettings, cluster_settings: ClusterSettings
                       ) -> FastAPI:
    """The cluster API server's app (see the module's docstring)."""
    from ..server.routes import audit as audit_routes
    from ..server.routes import console
    engine = open_engine(settings.database_url)
    keys = KeyStore(engine)
    directory = Directory(engine)
    cluster = Cluster(cluster_settings, directory, settings.quota)
    forwarder = Forwarder()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await cluster.start()
        try:
            yield
        finally:
            await cluster.close()
            await forwarder.aclose()
            engine.dispose()

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=openapi.SPEC_PATH)
    app.state.settings = settings
    app.state.keys = keys
    app.state.cluster = cluster
    app.state.forwarder = forwarder
    app.state.audit = AuditStore(engine)
    app.state.metrics = Metrics(None)
    app.state.cluster_figures = figures = ClusterFigures(cluster)
    app.state.metrics.add(figures)
    app.state.metrics.add(NodeFigures(cluster), operator=True)
    app.state.metrics.add(TenantFigures(figures), operator=True)
    limits = settings.limits
    failures = Buckets(limits.auth_failure_rate, limits.auth_failure_burst, limits.buckets)
    ui_sessions = UiSessionStore(engine, SessionPolicy(
        idle=timedelta(seconds=settings.ui.session_idle),
        lifetime=timedelta(seconds=settings.ui.session_lifetime),
        per_key=settings.ui.sessions_per_key))
    app.state.auth_failures = failures
    app.state.ui_sessions = ui_sessions
    app.state.ui_dist = None
    errors.install(app)
    spec: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if not spec:
            spec.update(reference_spec())
        return spec

    app.openapi = document  # type: ignore[method-assign]
    app.include_router(router)
    app.include_router(nodes_router)
    app.include_router(audit_routes.router)
    app.include_router(console.router)

    @app.api_route("/{path:path}", methods=_METHODS, include_in_schema=False)
    async def elsewhere(path: str, _tenant: Tenant) -> Response:
        raise NotFoundError(f"/{path:.100} is not served in cluster mode yet (docs/cluster.md "
                            "lists what is)")

    routes = RouteTemplates(lambda: openapi.templates(app.openapi()))
    app.add_middleware(BodyLimit, limit=settings.max_body, exempt=files_routes.is_upload,
                       json_depth=limits.json_depth, timeout=limits.body_timeout,
                       idle_timeout=limits.body_idle_timeout)
    app.add_middleware(AuditTrail, store=app.state.audit, settings=settings.audit,
                       route=routes)
    app.add_middleware(KeyLimits, rate=limits.rate, burst=limits.burst,
                       in_flight=limits.in_flight_per_key, size=limits.buckets)
    app.add_middleware(openapi.AuthenticateExceptSpec, keys=keys, failures=failures,
                       recent_size=limits.buckets, sessions=ui_sessions)
    app.add_middleware(ClusterPorts, cluster=cluster, keys=keys, forwarder=forwarder,
                       domain=settings.ports_domain)
    app.add_middleware(HeaderLimit)
    app.add_middleware(ServerCap, limit=limits.in_flight)
    app.add_middleware(HttpMetrics, metrics=app.state.metrics, templates=routes)
    app.add_middleware(RequestLog, route=routes)
    return app
