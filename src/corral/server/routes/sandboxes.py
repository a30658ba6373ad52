"""``/v1/sandboxes``: create, list (``?state=&metadata.KEY=VALUE``), get, timeout, network,
ports and signed port URLs, kill. The ports' traffic itself is :mod:`corral.server.ports`."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from corral.api import models
from corral.api.errors import ErrorCode, InvalidArgumentError
from corral.node import SandboxState

from .. import ports
from ..auth import Tenant
from ..openapi import errors
from ._deps import Images, Metrics, Sandboxes, SandboxId, Snapshots

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])
METADATA_PREFIX = "metadata."


@router.post("", status_code=201, responses=errors(
    ErrorCode.NOT_FOUND, why="no such image (`corral image build NAME` builds one)"))
async def create(body: models.SandboxCreate, tenant: Tenant, service: Sandboxes,
                 metrics: Metrics) -> models.SandboxInfo:
    if body.node_selector:
        raise InvalidArgumentError("node_selector picks a node of a cluster; this server runs "
                                   "alone and has no node labels: leave it out")
    started = time.perf_counter()
    sandbox = await service.create(tenant, body)
    metrics.create_seconds.observe(time.perf_counter() - started)  # only those that started
    return sandbox


@router.get("")
async def list_(request: Request, tenant: Tenant, service: Sandboxes,
                state: SandboxState | None = None) -> models.SandboxList:
    metadata: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith(METADATA_PREFIX):
            metadata[key[len(METADATA_PREFIX):]] = value
        elif key != "state":
            raise InvalidArgumentError(f"unknown query parameter {key!r:.80}; filter with "
                                       "state= and metadata.KEY=VALUE")
    return await service.list(tenant, metadata, state)


@router.get("/{sandbox_id}")
async def get(sandbox_id: SandboxId, tenant: Tenant, service: Sandboxes) -> models.SandboxInfo:
    return await service.describe(tenant, sandbox_id)


@router.post("/{sandbox_id}/snapshot-filesystem", status_code=201, responses=errors(
    ErrorCode.NOT_FOUND, ErrorCode.SANDBOX_NOT_RUNNING))
async def snapshot_filesystem(sandbox_id: SandboxId, body: models.FilesystemSnapshot,
                              tenant: Tenant, service: Sandboxes, images: Images
                              ) -> models.ImageInfo:
    """Keep the sandbox's files as an image of yours (it runs on): its image's layers and
    what it changed, with its image's defaults."""
    sandbox = await service.owned(tenant, sandbox_id, "a filesystem snapshot")
    with service.in_use(sandbox_id):
        return await images.snapshot(tenant, sandbox, body.name)


@router.post("/{sandbox_id}/snapshots", status_code=201, responses=errors(
    ErrorCode.NOT_FOUND, ErrorCode.SANDBOX_NOT_RUNNING, ErrorCode.RUNTIME_UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED, why="its runtime cannot keep its memory (namespaces: take a "
    "files-only one), or your snapshot quota is used up"))
async def snapshot(sandbox_id: SandboxId, body: models.SnapshotCreate, tenant: Tenant,
                   service: Sandboxes, snapshots: Snapshots) -> models.SnapshotInfo:
    """Keep the sandbox as it is now (it runs on): its memory, processes and files, or with
    ``memory: false`` its files alone. Start sandboxes from it with ``snapshot`` at create."""
    sandbox = await service.owned(tenant, sandbox_id)
    service.touch(sandbox_id)
    return await snapshots.take(tenant, sandbox, body)


@router.post("/{sandbox_id}/fork", status_code=201, responses=errors(
    ErrorCode.NOT_FOUND, ErrorCode.SANDBOX_NOT_RUNNING, ErrorCode.RUNTIME_UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED, why="its runtime cannot keep its memory, or the node has "
    "no room for that many sandboxes"))
async def fork(sandbox_id: SandboxId, body: models.ForkRequest, tenant: Tenant,
               service: Sandboxes) -> models.SandboxList:
    """``count`` new sandboxes, each a copy of this one as it is now (memory, processes,
    files), each with its own id, port token and files; this one runs on."""
    return await service.fork(tenant, sandbox_id, body)


@router.post("/{sandbox_id}/pause", responses=errors(
    ErrorCode.NOT_FOUND, ErrorCode.SANDBOX_NOT_RUNNING,
    why="not running, or its runtime cannot pause it (the message says why)"))
async def pause(sandbox_id: SandboxId, tenant: Tenant, service: Sandboxes
                ) -> models.SandboxInfo:
    """Pause it: memory, processes and files kept, its lifetime clock stopped (gVisor: on
    disk, surviving a restart; namespaces: frozen in place). Any later call resumes it."""
    return await service.pause(tenant, sandbox_id)


@router.post("/{sandbox_id}/resume", responses=errors(ErrorCode.NOT_FOUND,
                                                      ErrorCode.SANDBOX_NOT_RUNNING))
async def resume(sandbox_id: SandboxId, tenant: Tenant, service: Sandboxes
                 ) -> models.SandboxInfo:
    """Resume a paused sandbox (a running one: nothing to do)."""
    return await service.resume(tenant, sandbox_id)


@router.post("/{sandbox_id}/timeout")
async def set_timeout(sandbox_id: SandboxId, body: models.TimeoutUpdate, tenant: Tenant,
                      service: Sandboxes) -> models.SandboxInfo:
    return await service.set_timeout(tenant, sandbox_id, body.timeout)


@router.put("/{sandbox_id}/network", responses=errors(
    ErrorCode.INVALID_ARGUMENT, why="an entry does not parse, breaks an operator rule, or the "
    "sandbox was created without a network"))
async def set_network(sandbox_id: SandboxId, body: models.NetworkUpdate, tenant: Tenant,
                      service: Sandboxes) -> models.NetworkInfo:
    """Replace the sandbox's network policy; new connections see it at once."""
    return await service.update_network(tenant, sandbox_id, body.network)


@router.get("/{sandbox_id}/network/events")
async def network_events(sandbox_id: SandboxId, tenant: Tenant,
                         service: Sandboxes) -> models.EgressEvents:
    """The sandbox's resolver's and proxy's latest verdicts, oldest first."""
    sandbox = await service.owned(tenant, sandbox_id, "a network call")
    return await sandbox.network.events()


@router.get("/{sandbox_id}/ports")
async def get_ports(sandbox_id: SandboxId, tenant: Tenant,
                    service: Sandboxes) -> models.PortsInfo:
    """The sandbox's port token and public ports. Its apps are reached at
    ``/v1/sandboxes/{id}/ports/{port}/...`` or ``{port}-{id}.{domain}`` (see docs/ports.md)."""
    return await service.ports(tenant, sandbox_id)


@router.put("/{sandbox_id}/ports")
async def set_ports(sandbox_id: SandboxId, body: models.PortsUpdate, tenant: Tenant,
                    service: Sandboxes) -> models.PortsInfo:
    """Replace the list of ports anyone may reach without a credential."""
    return await service.set_public_ports(tenant, sandbox_id, body.public)


@router.post("/{sandbox_id}/signed-urls", status_code=201)
async def signed_url(sandbox_id: SandboxId, body: models.SignedUrlRequest, request: Request,
                     tenant: Tenant, service: Sandboxes) -> models.SignedUrl:
    """A URL to one port that works without any other credential until it expires."""
    info = await service.ports(tenant, sandbox_id)
    expires = math.ceil(time.time() + body.expires_in)
    signature = ports.sign(info.token, sandbox_id, body.port, expires)
    base = request.base_url
    if body.host_based:
        netloc = f"{body.port}-{sandbox_id}.{info.domain}" + (
            f":{base.port}" if base.port else "")
        origin = f"{base.scheme}://{netloc}"
    else:
        origin = str(base).rstrip("/") + f"/v1/sandboxes/{sandbox_id}/ports/{body.port}"
    query = urlencode({ports.EXPIRES_PARAM: expires, ports.SIGNATURE_PARAM: signature})
    return models.SignedUrl(url=f"{origin}{body.path}?{query}",
                            expires_at=datetime.fromtimestamp(expires, UTC))


@router.delete("/{sandbox_id}", status_code=204)
async def kill(sandbox_id: SandboxId, tenant: Tenant, service: Sandboxes) -> Response:
    await service.kill(tenant, sandbox_id)
    return Response(status_code=204)
