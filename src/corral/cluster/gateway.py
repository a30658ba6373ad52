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
* an exposed port's traffic (:class:`ClusterPorts`) goes to the node before any key is
  asked for, as on a single server, and the node checks its credential;
* ``/v1/nodes`` (operators' keys): the nodes, and cordon, uncordon and drain.

* the web console (``/ui``, its sessions in the shared database), the sandboxes' metrics
  for lists (asked of their nodes), the cluster's pools (summed) and the public images
  the nodes hold.

What this app does not serve yet in cluster mode (tenants' images, volumes, snapshots, the
E2B, MCP and ACA façades) is answered with a sentence saying so; docs/cluster.md lists it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from corral import __version__
from corral.api import models
from corral.api.audit import PoolList
from corral.api.limits import (DEFAULT_METRICS_POINTS, MAX_METRICS_IDS,
                               MAX_METRICS_POINTS)
from corral.api.errors import (AuthenticationError, InvalidArgumentError, NotFoundError,
                               PermissionDeniedError, SandboxError, SandboxNotRunningError)

from ..server import errors, openapi
from ..server.audit import AuditTrail
from ..server.auth import (OPERATOR_SCOPE, OperatorTenant, Tenant, presented_key, refuse,
                           tenant_of)
from ..server.limits import BodyLimit, HeaderLimit
from ..server.logs import RequestLog
from ..server.metrics import RouteTemplates
from ..server.ports import host_pattern
from ..server.ratelimit import KEY_ID_SCOPE, Buckets, KeyLimits, ServerCap
from ..server.routes import files as files_routes
from ..server.settings import ServerSettings
from ..server.store import KeyStore, open_engine
from ..server.store.audit import AuditStore
from ..server.store.ui_sessions import SessionPolicy, UiSessionStore
from ..server.store.keys import KeyRef
from .control import Cluster, ClusterSettings
from .directory import LIVE, LOST, STOPPED, Directory
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
    info = await _cluster(request).create(
        _key(request), payload, image=body.image, cpus=resources.cpus,
        memory_mib=resources.memory_mib, selector=body.node_selector, gpus=resources.gpus,
        gpu_model=resources.gpu_model)
    return JSONResponse(info, status_code=201)


@router.get("/v1/sandboxes", tags=["sandboxes"])
async def list_(request: Request, _tenant: Tenant) -> models.SandboxList:
    key = _key(request)
    cluster = _cluster(request)
    params = dict(request.query_params)
    state = params.get("state")
    rows = await asyncio.to_thread(cluster.directory.of_tenant, key.tenant,
                                   (LIVE, LOST, STOPPED))
    found: list[dict[str, Any]] = []
    if state != "lost":
        nodes = sorted({row.node for row in rows if row.state != LOST})
        replies = await asyncio.gather(*(cluster.call(key, node, "GET", "/v1/sandboxes",
                                                      params=params) for node in nodes),
                                       return_exceptions=True)
        for node, reply in zip(nodes, replies, strict=True):
            if isinstance(reply, BaseException):
                continue  # lost since: its sandboxes are listed below once marked
            status, payload = reply
            if status != 200:
                return JSONResponse(payload, status_code=status)  # type: ignore[return-value]
            for info in payload["sandboxes"]:
                info["node"] = node
                found.append(info)
    if state in (None, "lost"):
        for row in rows:
            if row.state == LOST and _metadata_matches(row.info, params):
                found.append({**row.info, "state": "lost", "state_reason": row.reason,
                              "paused_at": None, "node": row.node})
    found.sort(key=lambda info: str(info.get("created_at", "")))
    return models.SandboxList.model_validate({"sandboxes": found})


@router.get("/v1/metrics/sandboxes", tags=["sandboxes"])
async def sandboxes_metrics(request: Request, _tenant: Tenant,
                            ids: Annotated[str, Query(max_length=MAX_METRICS_IDS * 65)],
                            points: Annotated[int, Query(ge=1, le=MAX_METRICS_POINTS)]
                            = DEFAULT_METRICS_POINTS) -> models.SandboxesMetrics:
    """The newest samples of each of the caller's sandboxes in ``ids``, asked of their
    nodes in parallel (the single server's bounds and answer)."""
    key = _key(request)
    cluster = _cluster(request)
    wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
    if not wanted:
        raise InvalidArgumentError("ids is empty: give 1 to 100 sandbox ids, comma-separated")
    if len(wanted) > MAX_METRICS_IDS:
        raise InvalidArgumentError(f"ids names {len(wanted)} sandboxes; at most "
                                   f"{MAX_METRICS_IDS} at once: split the request")
    by_node: dict[str, list[str]] = {}
    for sandbox_id in wanted:
        found = await asyncio.to_thread(cluster.directory.get, sandbox_id)
        if found is not None and found.tenant == key.tenant and found.state == LIVE:
            by_node.setdefault(found.node, []).append(sandbox_id)
    nodes = sorted(by_node)
    replies = await asyncio.gather(*(cluster.call(
        key, node, "GET", "/v1/metrics/sandboxes",
        params={"ids": ",".join(by_node[node]), "points": str(points)}) for node in nodes),
        return_exceptions=True)
    merged: dict[str, Any] = {}
    interval = 0.0
    for reply in replies:
        if isinstance(reply, BaseException) or reply[0] != 200:
            continue  # a node that does not answer: its sandboxes are left out
        interval = max(interval, float(reply[1]["interval"]))
        merged.update(reply[1]["sandboxes"])
    return models.SandboxesMetrics.model_validate({"interval": interval,
                                                   "sandboxes": merged})


@router.get("/v1/pools", tags=["operators"])
async def pools(request: Request, _tenant: OperatorTenant) -> PoolList:
    """The cluster's warm pools: each image and runtime's, summed over the nodes."""
    return PoolList.model_validate({"pools": _cluster(request).pools()})


@router.get("/v1/images", tags=["images"])
async def images(request: Request, _tenant: Tenant) -> models.ImageList:
    """The public images the nodes hold (in cluster mode a tenant has no images of its
    own yet): each name once, as the first node that answers describes it."""
    key = _key(request)
    cluster = _cluster(request)
    nodes = cluster.ready_nodes()
    replies = await asyncio.gather(*(cluster.call(key, node, "GET", "/v1/images")
                                     for node in nodes), return_exceptions=True)
    seen: dict[str, Any] = {}
    for reply in replies:
        if isinstance(reply, BaseException) or reply[0] != 200:
            continue
        for image in reply[1]["images"]:
            if image.get("public"):
                seen.setdefault(str(image.get("name")), image)
    return models.ImageList.model_validate({"images": [seen[k] for k in sorted(seen)],
                                            "used_bytes": 0, "quota_bytes": 0})


def _metadata_matches(info: dict[str, Any], params: dict[str, str]) -> bool:
    metadata = info.get("metadata") or {}
    return all(metadata.get(k.removeprefix("metadata.")) == v for k, v in params.items()
               if k.startswith("metadata."))


#: Calls on a sandbox that would make something only its node knows of (copies, snapshots,
#: images) or that need the node's own port credentials: refused, saying so.
_NOT_YET = re.compile(r"^(fork|snapshots|snapshot-filesystem)(/|$)")
_PORT_PATH = re.compile(r"^/v1/sandboxes/([^/]+)/ports/([0-9]+)(/.*)?$")


@router.api_route(_SANDBOX, methods=_METHODS, include_in_schema=False)
@router.api_route(_SANDBOX + "/{rest:path}", methods=_METHODS, include_in_schema=False)
async def on_sandbox(request: Request, sandbox_id: str, _tenant: Tenant,
                     rest: str = "") -> Response:
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
    url = ("ws" + base.removeprefix("http") + websocket.url.path
           + (f"?{query}" if query else ""))
    await forward_websocket(websocket, url, forward_headers(cluster.token, key), ca)


# -- exposed ports -----------------------------------------------------------------------

class ClusterPorts:
    """ASGI middleware, in front of authentication as on a single server: a request for a
    sandbox's exposed port (``/v1/sandboxes/{id}/ports/{port}/...`` or
    ``{port}-{id}.{domain}``) goes to the sandbox's node, whose port proxy checks its
    credential (port token, cookie, signed URL, public port). One carrying its owner's API
    key is checked here and passed on as the owner, the key left behind."""

    def __init__(self, app: ASGIApp, cluster: Cluster, keys: KeyStore, forwarder: Forwarder,
                 domain: str) -> None:
        self.app = app
        self.cluster = cluster
        self.keys = keys
        self.forwarder = forwarder
        self._host = host_pattern(domain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = self._host.match(headers.get("host", "").lower())
        path = _PORT_PATH.match(scope["path"])
        sandbox_id = host[2] if host else path[1] if path else None
        if sandbox_id is None:
            await self.app(scope, receive, send)
            return
        try:
            placement = await asyncio.to_thread(self.cluster.directory.get, sandbox_id)
            if placement is None or placement.state not in (LIVE, LOST):
                raise NotFoundError(f"no running sandbox {sandbox_id!r:.40}")
            if placement.state == LOST:
                raise SandboxNotRunningError(f"sandbox {sandbox_id} is lost: {placement.reason}")
            base, ca = self.cluster.node_address(placement.node)
            extra: dict[str, str] = {}
            key = presented_key(headers)
            if key is not None:
                found = await asyncio.to_thread(self.keys.identify, key)
                if found is None or found.tenant != placement.tenant:
                    raise AuthenticationError("the API key is not valid for this sandbox")
                extra = forward_headers(self.cluster.token, found)
        except SandboxError as error:
            await refuse(scope, receive, send, error.code, error.message)
            return
        if scope["type"] == "websocket":
            port = host[1] if host else path[2] if path else ""
            rest = scope["path"] if host else path[3] if path else ""
            query = scope.get("query_string", b"").decode("latin-1")
            url = (f"ws{base.removeprefix('http')}/v1/sandboxes/{sandbox_id}/ports/{port}"
                   f"{rest or '/'}" + (f"?{query}" if query else ""))
            cookie = headers.get("cookie")
            await forward_websocket(WebSocket(scope, receive, send), url,
                                    {**extra, **({"cookie": cookie} if cookie else {})}, ca)
            return
        reply = await self.forwarder.forward(Request(scope, receive), (base, ca), extra,
                                             placement.node, keep_credentials=True)
        await reply(scope, receive, send)


# -- nodes -------------------------------------------------------------------------------

@nodes_router.get("")
async def nodes(request: Request, _tenant: OperatorTenant) -> dict[str, Any]:
    """Every node the cluster knows: its state, labels, capacity and what it holds."""
    cluster = _cluster(request)
    records = await asyncio.to_thread(cluster.directory.nodes)
    views = {view.name: view for view in cluster.views()}
    out = []
    for record in records:
        view = views.get(record.name)
        cpus, memory = view.allocated() if view else (0.0, 0)
        out.append({
            "name": record.name, "url": record.url, "state": record.state,
            "reason": record.reason, "labels": record.labels, "cordoned": record.cordoned,
            "draining": record.draining, "seen_at": _iso(record.seen_at),
            "lost_at": _iso(record.lost_at),
            "cpus": view.cpus if view else None,
            "memory_mib": view.memory_mib if view else None,
            "allocated_cpus": cpus, "allocated_memory_mib": memory,
            "sandboxes": len(view.sandboxes) if view else 0,
            "images": sorted(view.images) if view else [],
            "pools": view.pool_ready if view else {}})
    return {"nodes": out}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def _set(request: Request, name: str, **flags: bool) -> dict[str, Any]:
    cluster = _cluster(request)
    if not await asyncio.to_thread(cluster.directory.set_node, name, **flags):
        raise NotFoundError(f"no node {name!r:.80}; `corral node ls` lists them")
    for view in cluster.views():
        if view.name == name:
            for flag, value in flags.items():
                setattr(view, flag, value)
    return {"name": name, **flags}


@nodes_router.post("/{name}/cordon")
async def cordon(request: Request, name: str, _tenant: OperatorTenant) -> dict[str, Any]:
    """No new sandbox is placed on the node; those it runs go on."""
    return await _set(request, name, cordoned=True)


@nodes_router.post("/{name}/uncordon")
async def uncordon(request: Request, name: str, _tenant: OperatorTenant) -> dict[str, Any]:
    """The node takes new sandboxes again (a drain ends too)."""
    return await _set(request, name, cordoned=False, draining=False)


@nodes_router.post("/{name}/drain")
async def drain(request: Request, name: str, _tenant: OperatorTenant,
                kill: Annotated[bool, Body(embed=True)] = False) -> dict[str, Any]:
    """Place nothing more on the node; with ``kill``, end the sandboxes it runs now (each
    says why in its stop reason), else let them run to their end."""
    result = await _set(request, name, draining=True)
    cluster = _cluster(request)
    ended: list[str] = []
    if kill:
        rows = await asyncio.to_thread(cluster.directory.on_node, name, (LIVE,))
        ended = await cluster.end(name, [(row.id, row.tenant) for row in rows])
        await asyncio.to_thread(cluster.directory.set_state, ended, STOPPED,
                                f"node {name} was drained", was=(LIVE,))
        for sandbox_id in ended:
            cluster.forget(sandbox_id)
    return {**result, "ended": ended}


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
    cluster = Cluster(cluster_settings, directory)
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
    app.add_middleware(RequestLog, route=routes)
    return app
