"""E2B's control plane over :class:`~corral.server.services.SandboxService`.

Paths as the SDKs send them under the mount (docs/research/e2b-protocol.md §4.1): create
and connect exist as ``/sandboxes…`` (e2b ≤ 2.50) and ``/v2/sandboxes…`` (2.51 and later);
the rest are shared. Errors are Corral's exceptions, answered in Corral's shape by the
sub-app's handlers and reshaped to E2B's at the edge (:class:`.mapping.ErrorShape`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ValidationError

from corral.api import models as corral
from corral.api.errors import (AlreadyExistsError, InvalidArgumentError, NotFoundError,
                               SandboxNotRunningError)

from ..auth import Tenant
from ..services import SandboxService
from ..services.sampler import MetricsSampler
from ..services.snapshots import SnapshotService
from . import mapping, models

router = APIRouter()
_M = TypeVar("_M", bound=BaseModel)
#: Longest sandbox id looked up; a longer one is no sandbox.
_MAX_ID = 64


async def _service(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.sandboxes
    return service


async def _tokens(request: Request) -> mapping.Tokens:
    tokens: mapping.Tokens = request.app.state.tokens
    return tokens


async def _snapshots(request: Request) -> SnapshotService:
    service: SnapshotService = request.app.state.snapshots
    return service


Sandboxes = Annotated[SandboxService, Depends(_service)]
Tokens = Annotated[mapping.Tokens, Depends(_tokens)]
Snapshots = Annotated[SnapshotService, Depends(_snapshots)]


def _domain(request: Request, service: SandboxService) -> str:
    """Where ``<port>-<id>.<domain>`` reaches a sandbox's port: the ports domain, with the
    port this request came in on (the SDK's ``get_host`` appends nothing)."""
    host = request.headers.get("host", "")
    _, colon, port = host.rpartition(":")
    if colon and port.isdigit() and not host.endswith("]"):
        return f"{service.ports_domain}:{port}"
    return service.ports_domain


@asynccontextmanager
async def _gone_is_not_found(sandbox_id: str) -> AsyncIterator[None]:
    """E2B forgets a stopped sandbox: Corral's "not running" is its 404."""
    try:
        yield
    except SandboxNotRunningError:
        raise NotFoundError(f"sandbox {sandbox_id} not found (it has stopped)") from None


async def _known(service: SandboxService, tenant: str, sandbox_id: str
                 ) -> corral.SandboxInfo:
    """The tenant's sandbox that E2B would know (running or paused), else 404."""
    if len(sandbox_id) > _MAX_ID:
        raise NotFoundError(f"sandbox {sandbox_id[:_MAX_ID]!r}… not found")
    info = await service.describe(tenant, sandbox_id)
    if mapping.e2b_state(info.state) is None:
        raise NotFoundError(f"sandbox {sandbox_id} not found (it has stopped)")
    return info


def _corral(model: type[_M], fields: dict[str, object]) -> _M:
    """Corral's request ``model`` of ``fields``; what it refuses is a 400."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:10])
        raise InvalidArgumentError(f"invalid request: {problems}") from None


def _corral_create(body: models.NewSandbox, internet: bool,
                   public: Collection[str]) -> corral.SandboxCreate:
    if body.mcp is not None:
        raise InvalidArgumentError("mcp is not supported by Corral's E2B API yet; create "
                                   "the sandbox without it")
    image, snapshot = mapping.image_of(body.templateID, public)
    fields: dict[str, object] = {
        "timeout": body.timeout, "metadata": body.metadata or {},
        "on_timeout": "pause" if body.autoPause else "kill"}
    if snapshot is None:
        fields.update(image=image, env=body.envVars or {},
                      network=mapping.network_of(body.allow_internet_access, body.network,
                                                 internet),
                      volumes={m.path: m.name for m in body.volumeMounts or ()})
    elif body.envVars or body.volumeMounts or body.network is not None:
        raise InvalidArgumentError(
            "a sandbox started from a snapshot keeps its source's environment, network and "
            "volumes: leave out envs, network and volume mounts (change the network "
            "afterwards with update_network)")
    else:
        fields["snapshot"] = snapshot
    return _corral(corral.SandboxCreate, fields)


async def _create(request: Request, body: models.NewSandbox, tenant: str,
                  service: SandboxService, tokens: mapping.Tokens) -> models.Sandbox:
    public = request.app.state.public_images()
    info = await service.create(tenant, _corral_create(body, request.app.state.internet,
                                                       public))
    return mapping.sandbox(info, tokens, _domain(request, service), body.templateID)


@router.post("/sandboxes", status_code=201)
async def create_v1(request: Request, body: models.NewSandbox, tenant: Tenant,
                    service: Sandboxes, tokens: Tokens) -> models.Sandbox:
    """Create (e2b ≤ 2.50): ``templateID`` picks the image, ``autoPause`` pauses at the
    timeout instead of killing."""
    return await _create(request, body, tenant, service, tokens)


@router.post("/v2/sandboxes", status_code=201)
async def create_v2(request: Request, body: models.NewSandbox, tenant: Tenant,
                    service: Sandboxes, tokens: Tokens) -> models.Sandbox:
    """Create (e2b 2.51 and later): the same body as v1."""
    return await _create(request, body, tenant, service, tokens)


@router.get("/v2/sandboxes")
async def list_(request: Request, response: Response, tenant: Tenant, service: Sandboxes,
                metadata: str | None = None, state: str | None = None,
                template: str | None = None, order: str = "asc",
                started_after: Annotated[datetime | None, Query(alias="startedAfter")] = None,
                next_token: Annotated[str | None, Query(alias="nextToken",
                                                        max_length=1024)] = None,
                limit: Annotated[int, Query(ge=1, le=mapping.MAX_PAGE)] = mapping.MAX_PAGE,
                ) -> list[models.ListedSandbox]:
    """The tenant's running and paused sandboxes, by start time; the next page's token
    comes back in ``x-next-token`` (absent on the last page)."""
    wanted = mapping.states_filter(state)
    image = None if template is None else mapping.image_of(
        template, request.app.state.public_images())[0]
    found = await service.list(tenant, mapping.metadata_filter(metadata))
    if started_after is not None and started_after.tzinfo is None:
        started_after = started_after.replace(tzinfo=UTC)
    items = [mapping.listed(info) for info in found.sandboxes
             if mapping.e2b_state(info.state) in wanted
             and (image is None or info.image == image)
             and (started_after is None or info.created_at > started_after)]
    shown, token = mapping.page(items, order, limit, next_token)
    if token:
        response.headers["x-next-token"] = token
    return shown


@router.get("/sandboxes/{sandbox_id}")
async def get(request: Request, sandbox_id: str, tenant: Tenant, service: Sandboxes,
              tokens: Tokens) -> models.SandboxDetail:
    info = await _known(service, tenant, sandbox_id)
    return mapping.detail(info, tokens, _domain(request, service))


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill(sandbox_id: str, tenant: Tenant, service: Sandboxes) -> None:
    """Stop it for good; one already stopped is 404 (the SDK's ``kill`` returns False)."""
    await _known(service, tenant, sandbox_id)
    async with _gone_is_not_found(sandbox_id):
        await service.kill(tenant, sandbox_id)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(sandbox_id: str, body: models.Timeout, tenant: Tenant,
                      service: Sandboxes) -> None:
    """End its life ``timeout`` seconds from now (sooner or later than before)."""
    await _known(service, tenant, sandbox_id)
    async with _gone_is_not_found(sandbox_id):
        await service.set_timeout(tenant, sandbox_id, body.timeout)


async def _connect(request: Request, response: Response, sandbox_id: str,
                   body: models.Connect, tenant: str, service: SandboxService,
                   tokens: mapping.Tokens) -> models.Sandbox:
    info = await _known(service, tenant, sandbox_id)
    async with _gone_is_not_found(sandbox_id):
        resumed = info.state == "paused"
        if resumed:
            info = await service.resume(tenant, sandbox_id)
        if body.timeout is not None:
            # Connecting never shortens a life another client asked for.
            wanted = datetime.now(UTC).timestamp() + body.timeout
            if wanted > info.expires_at.timestamp():
                info = await service.set_timeout(tenant, sandbox_id, body.timeout)
    response.status_code = 201 if resumed else 200
    return mapping.sandbox(info, tokens, _domain(request, service))


@router.post("/sandboxes/{sandbox_id}/connect", responses={201: {"model": models.Sandbox}})
async def connect_v1(request: Request, response: Response, sandbox_id: str,
                     body: models.Connect, tenant: Tenant, service: Sandboxes,
                     tokens: Tokens) -> models.Sandbox:
    """Reach a sandbox (e2b ≤ 2.50): 200 if it was running, 201 if it was paused and
    has been resumed; ``timeout`` extends its life, never shortens it."""
    return await _connect(request, response, sandbox_id, body, tenant, service, tokens)


@router.post("/v2/sandboxes/{sandbox_id}/connect",
             responses={201: {"model": models.Sandbox}})
async def connect_v2(request: Request, response: Response, sandbox_id: str,
                     body: models.Connect, tenant: Tenant, service: Sandboxes,
                     tokens: Tokens) -> models.Sandbox:
    """Connect (e2b 2.51 and later): as v1."""
    return await _connect(request, response, sandbox_id, body, tenant, service, tokens)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause(sandbox_id: str, tenant: Tenant, service: Sandboxes) -> None:
    """Pause it (memory and files kept); 409 if it is paused already, as E2B answers."""
    info = await _known(service, tenant, sandbox_id)
    if info.state == "paused":
        raise AlreadyExistsError(f"sandbox {sandbox_id} is already paused")
    async with _gone_is_not_found(sandbox_id):
        await service.pause(tenant, sandbox_id)


@router.get("/sandboxes/{sandbox_id}/metrics")
async def metrics(request: Request, sandbox_id: str, tenant: Tenant, service: Sandboxes,
                  start: Annotated[int | None, Query(ge=0)] = None,
                  end: Annotated[int | None, Query(ge=0)] = None,
                  ) -> list[models.SandboxMetric]:
    """The samples the server took of it (every ``CORRAL_METRICS_INTERVAL`` seconds) from
    ``start`` to ``end`` (Unix seconds, each second included whole), oldest first: memory
    and the writable layer as they were, CPU as the share of its cores used since the
    sample before. None while it was paused. Looking does not count as activity."""
    sandbox = service.peek(tenant, sandbox_id) if len(sandbox_id) <= _MAX_ID else None
    if sandbox is None or mapping.e2b_state(sandbox.state.value) is None:
        raise NotFoundError(f"sandbox {sandbox_id[:_MAX_ID]!r} not found")
    sampler: MetricsSampler = request.app.state.sampler
    series = sampler.series(tenant, sandbox_id)
    if series is None:
        return []
    cpus = max(1, math.ceil(sandbox.resources.cpus))
    return [models.SandboxMetric(
        timestamp=datetime.fromtimestamp(s.time, UTC), timestampUnix=int(s.time),
        cpuCount=cpus, cpuUsedPct=s.cpu_percent, memUsed=s.memory_used,
        memTotal=s.memory_limit, memCache=s.memory_cache, diskUsed=s.disk_used,
        diskTotal=s.disk_limit)
        for s in series.samples(start, None if end is None else end + 0.999999)]


@router.put("/sandboxes/{sandbox_id}/network", status_code=204)
async def update_network(request: Request, sandbox_id: str, body: models.Network,
                         tenant: Tenant, service: Sandboxes) -> None:
    """Replace its egress policy (``allowOut``, ``denyOut``, ``allow_internet_access``);
    new connections see it at once."""
    info = await _known(service, tenant, sandbox_id)
    if info.network == "none":
        raise InvalidArgumentError(
            f"sandbox {sandbox_id} was created without network access, so it has no "
            "interface to open; create it with a network setting instead, e.g. "
            "network={'deny_out': ['0.0.0.0/0']} (nothing open yet), then update it")
    spec = _corral(corral.NetworkUpdate, {"network": mapping.network_of(
        body.allow_internet_access, body, request.app.state.internet)}).network
    async with _gone_is_not_found(sandbox_id):
        await service.update_network(tenant, sandbox_id, spec)


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def create_snapshot(sandbox_id: str, body: models.SnapshotCreate, tenant: Tenant,
                          service: Sandboxes, snapshots: Snapshots) -> models.SnapshotInfo:
    """Keep it as it is now (it runs on); its ``snapshotID`` is a ``templateID`` that starts
    copies. ``memory: false`` keeps its files alone (any runtime)."""
    await _known(service, tenant, sandbox_id)
    request = _corral(corral.SnapshotCreate, {"name": body.name, "memory": body.memory})
    async with _gone_is_not_found(sandbox_id):
        sandbox = await service.owned(tenant, sandbox_id, "a snapshot")
        service.touch(sandbox_id)
        info = await snapshots.take(tenant, sandbox, request)
    return mapping.snapshot(info)


@router.get("/snapshots")
async def list_snapshots(response: Response, tenant: Tenant, snapshots: Snapshots,
                         sandbox_id: Annotated[str | None, Query(alias="sandboxID",
                                                                 max_length=_MAX_ID)] = None,
                         name: Annotated[str | None, Query(max_length=128)] = None,
                         next_token: Annotated[str | None, Query(alias="nextToken",
                                                                 max_length=64)] = None,
                         limit: Annotated[int, Query(ge=1, le=mapping.MAX_PAGE)
                                          ] = mapping.MAX_PAGE,
                         ) -> list[models.SnapshotInfo]:
    """The tenant's snapshots, oldest first (of one sandbox, or named ``name``); the next
    page's token comes back in ``x-next-token``."""
    found = (await snapshots.list(tenant)).snapshots
    chosen = sorted((s for s in found
                     if (sandbox_id is None or s.sandbox_id == sandbox_id)
                     and (name is None or s.name == name)),
                    key=lambda s: (s.created_at, s.id))
    shown, token = mapping.snapshot_page(chosen, limit, next_token)
    if token:
        response.headers["x-next-token"] = token
    return [mapping.snapshot(s) for s in shown]


@router.delete("/templates/{template_id}", status_code=204)
async def delete_snapshot(template_id: str, tenant: Tenant, snapshots: Snapshots) -> None:
    """Delete a snapshot (the SDK's ``delete_snapshot``); templates are Corral's images,
    managed with ``corral image``, not here."""
    if not template_id.startswith(mapping.SNAPSHOT_PREFIX) or len(template_id) > _MAX_ID:
        raise NotFoundError(f"snapshot {template_id[:_MAX_ID]!r} not found (only snapshots "
                            "are deleted here; images are managed with `corral image`)")
    await snapshots.delete(tenant, template_id)


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201,
             response_model_exclude_none=True)
async def fork(request: Request, sandbox_id: str, body: models.Fork, tenant: Tenant,
               service: Sandboxes, tokens: Tokens) -> list[models.ForkResult]:
    """``count`` new sandboxes (at most 16), each a copy of this one as it is now (memory,
    processes, files); this one runs on."""
    info = await _known(service, tenant, sandbox_id)
    fork_request = _corral(corral.ForkRequest, {"count": body.count, "timeout": body.timeout})
    async with _gone_is_not_found(sandbox_id):
        copies = await service.fork(tenant, sandbox_id, fork_request)
    domain = _domain(request, service)
    return [models.ForkResult(sandbox=mapping.sandbox(copy, tokens, domain, info.image))
            for copy in copies.sandboxes]
