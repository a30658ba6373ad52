"""``/v1/snapshots``: list, get, delete a tenant's snapshots. They are taken with
``POST /v1/sandboxes/{id}/snapshots`` and started from with ``POST /v1/sandboxes
{"snapshot": id}``; the work is :mod:`corral.server.services.snapshots`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from corral.api import models
from corral.api.errors import ErrorCode

from ..auth import Tenant
from ..openapi import errors
from ._deps import Snapshots

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])
SnapshotId = Annotated[str, Path(max_length=64)]


@router.get("")
async def list_(tenant: Tenant, service: Snapshots) -> models.SnapshotList:
    """Your snapshots, oldest first."""
    return await service.list(tenant)


@router.get("/{snapshot_id}", responses=errors(ErrorCode.NOT_FOUND))
async def get(snapshot_id: SnapshotId, tenant: Tenant, service: Snapshots
              ) -> models.SnapshotInfo:
    return await service.describe(tenant, snapshot_id)


@router.delete("/{snapshot_id}", status_code=204, responses=errors(
    ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE, why="a sandbox is being started from it"))
async def delete(snapshot_id: SnapshotId, tenant: Tenant, service: Snapshots) -> Response:
    """Delete it; sandboxes started from it run on."""
    await service.delete(tenant, snapshot_id)
    return Response(status_code=204)
