"""``/v1/sandboxes``: create, list (``?state=&metadata.KEY=VALUE``), get, timeout, kill."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from corral.api import models
from corral.api.errors import InvalidArgumentError
from corral.node import SandboxState

from ..auth import Tenant
from ._deps import Sandboxes, SandboxId

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])
METADATA_PREFIX = "metadata."


@router.post("", status_code=201)
async def create(body: models.SandboxCreate, tenant: Tenant,
                 service: Sandboxes) -> models.Sandbox:
    return await service.create(tenant, body)


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
async def get(sandbox_id: SandboxId, tenant: Tenant, service: Sandboxes) -> models.Sandbox:
    return await service.describe(tenant, sandbox_id)


@router.post("/{sandbox_id}/timeout")
async def set_timeout(sandbox_id: SandboxId, body: models.TimeoutUpdate, tenant: Tenant,
                      service: Sandboxes) -> models.Sandbox:
    return await service.set_timeout(tenant, sandbox_id, body.timeout)


@router.delete("/{sandbox_id}", status_code=204)
async def kill(sandbox_id: SandboxId, tenant: Tenant, service: Sandboxes) -> Response:
    await service.kill(tenant, sandbox_id)
    return Response(status_code=204)
