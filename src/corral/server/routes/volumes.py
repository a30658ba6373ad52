"""``/v1/volumes``: create, list, get, delete; and a volume's files without a sandbox,
the same calls as a sandbox's files. The work is :mod:`corral.server.services.volumes`."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Scope

from corral.api import models
from corral.api.errors import ErrorCode, InvalidArgumentError
from corral.api.limits import MAX_LIST_DEPTH, MAX_PATH

from ..auth import Tenant
from ..openapi import errors
from ..services.volumes import VolumeService
from .files import RAW_BODY

_NO_USER = ("a volume's files belong to no sandbox user: leave user out (it applies to "
            "a sandbox's files)")
router = APIRouter(prefix="/v1/volumes", tags=["volumes"])
VolumeName = Annotated[str, Path(min_length=1, max_length=64)]
FilePath = Annotated[str, Query(min_length=1, max_length=MAX_PATH)]
_UPLOAD = re.compile(r"^/v1/volumes/[^/]+/files$")


async def _service(request: Request) -> VolumeService:
    service: VolumeService = request.app.state.volumes
    return service


Volumes = Annotated[VolumeService, Depends(_service)]


def is_upload(scope: Scope) -> bool:
    """Whether a request uploads a file to a volume (bounded by the volume's size)."""
    return scope.get("method") == "PUT" and bool(_UPLOAD.match(scope.get("path", "")))


@router.post("", status_code=201, responses=errors(
    ErrorCode.ALREADY_EXISTS, why="you have a volume of that name"))
async def create(body: models.VolumeCreate, tenant: Tenant, service: Volumes
                 ) -> models.VolumeInfo:
    return await service.create(tenant, body)


@router.get("")
async def list_(tenant: Tenant, service: Volumes) -> models.VolumeList:
    return await service.list(tenant)


@router.get("/{name}", responses=errors(ErrorCode.NOT_FOUND))
async def get(name: VolumeName, tenant: Tenant, service: Volumes) -> models.VolumeInfo:
    return await service.get(tenant, name)


@router.delete("/{name}", status_code=204, responses=errors(
    ErrorCode.NOT_FOUND, ErrorCode.ALREADY_EXISTS, why="a running sandbox mounts it"))
async def delete(name: VolumeName, tenant: Tenant, service: Volumes) -> Response:
    await service.delete(tenant, name)
    return Response(status_code=204)


@router.get("/{name}/files", response_class=StreamingResponse, responses={
    200: {"description": "The file's bytes, streamed", "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    **errors(ErrorCode.NOT_FOUND)})
async def download(name: VolumeName, path: FilePath, tenant: Tenant,
                   service: Volumes) -> StreamingResponse:
    chunks = await service.read_stream(tenant, name, path)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.put("/{name}/files", openapi_extra=RAW_BODY, responses=errors(ErrorCode.NOT_FOUND))
async def upload(name: VolumeName, path: FilePath, request: Request, tenant: Tenant,
                 service: Volumes, mode: Annotated[int, Query(ge=0, le=0o777)] = 0o644,
                 user: Annotated[str | None, Query(max_length=64)] = None
                 ) -> models.WriteResult:
    """The raw request body becomes the file (parents created)."""
    if user is not None:
        raise InvalidArgumentError(_NO_USER)
    return await service.write(tenant, name, path, request.stream(), mode)


@router.delete("/{name}/files", status_code=204, responses=errors(ErrorCode.NOT_FOUND))
async def remove_file(name: VolumeName, path: FilePath, tenant: Tenant, service: Volumes,
                      recursive: bool = False) -> Response:
    await service.remove_file(tenant, name, path, recursive)
    return Response(status_code=204)


@router.get("/{name}/files/list", responses=errors(ErrorCode.NOT_FOUND))
async def list_files(name: VolumeName, tenant: Tenant, service: Volumes,
                     path: FilePath = "/",
                     depth: Annotated[int, Query(ge=1, le=MAX_LIST_DEPTH)] = 1
                     ) -> models.EntryList:
    return await service.list_files(tenant, name, path, depth)


@router.get("/{name}/files/stat", responses=errors(ErrorCode.NOT_FOUND))
async def stat(name: VolumeName, path: FilePath, tenant: Tenant, service: Volumes
               ) -> models.EntryInfo:
    return await service.stat(tenant, name, path)


@router.post("/{name}/files/mkdir", responses=errors(ErrorCode.NOT_FOUND))
async def mkdir(name: VolumeName, body: models.MakeDir, tenant: Tenant, service: Volumes
                ) -> models.Created:
    if body.user is not None:
        raise InvalidArgumentError(_NO_USER)
    return await service.mkdir(tenant, name, body.path)
