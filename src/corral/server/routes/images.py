"""``/v1/images``: build contexts, builds (streamed as NDJSON), list, inspect, remove,
prune. The work is :mod:`corral.server.services.images`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Scope

from corral.api import models
from corral.api.errors import ErrorCode

from ..auth import Tenant
from ..openapi import NDJSON, errors
from ._deps import Images

router = APIRouter(prefix="/v1/images", tags=["images"])
ImageRef = Annotated[str, Path(min_length=1, max_length=129)]
_UPLOADS = ("/v1/images/contexts", "/v1/images/archives")


def is_context_upload(scope: Scope) -> bool:
    """Whether a request uploads a build context or an image archive (bounded by the
    service, not the body limit of JSON requests)."""
    return scope.get("method") == "POST" and scope.get("path") in _UPLOADS


@router.post("/contexts", status_code=201, openapi_extra={"requestBody": {
    "required": True, "content": {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "a tar archive (gzip allowed) of the files COPY steps take"}}}}},
    responses=errors(ErrorCode.REQUEST_TOO_LARGE, why="the archive is over 512 MiB"))
async def upload_context(request: Request, tenant: Tenant, service: Images
                         ) -> models.ImageContextInfo:
    return await service.upload_context(tenant, request.stream())


@router.post("/archives", status_code=201, openapi_extra={"requestBody": {
    "required": True, "content": {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "a `docker save` tarball or an OCI image layout as a tar (gzip "
                       "allowed)"}}}}},
    responses=errors(ErrorCode.REQUEST_TOO_LARGE, why="the archive is over 8 GiB"))
async def import_archive(request: Request, tenant: Tenant, service: Images,
                         name: Annotated[str | None, Query(
                             pattern=models.IMAGE_NAME_PATTERN)] = None,
                         tag: Annotated[str | None, Query(max_length=256)] = None
                         ) -> models.ImageInfo:
    """Import an image from an OCI archive; name it ``name`` (or leave it unnamed)."""
    return await service.import_archive(tenant, request.stream(), name, tag)


@router.post("", response_class=StreamingResponse, responses={
    200: {"description": "The build's events as they happen, one JSON object a line: "
                         "`build` (its id), `step`, `log`, then `done` or `error`",
          "content": {NDJSON: {"schema": {"$ref": "#/components/schemas/BuildEvent"}}}},
    **errors(ErrorCode.NOT_FOUND, why="no such base image or build context")})
async def build(body: models.ImageBuildRequest, tenant: Tenant,
                service: Images) -> StreamingResponse:
    events = await service.build(tenant, body)
    return StreamingResponse(_lines(events), media_type=NDJSON)


async def _lines(events: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    async for event in events:
        yield event.model_dump_json(exclude_none=False).encode() + b"\n"


@router.get("")
async def list_(tenant: Tenant, service: Images) -> models.ImageList:
    return await service.list(tenant)


@router.post("/prune")
async def prune(tenant: Tenant, service: Images) -> models.PruneInfo:
    return await service.prune()


@router.get("/builds/{build_id}", responses=errors(ErrorCode.NOT_FOUND))
async def build_info(build_id: Annotated[str, Path(max_length=64)], tenant: Tenant,
                     service: Images) -> models.BuildInfo:
    return await service.build_info(tenant, build_id)


@router.get("/{ref}", responses=errors(ErrorCode.NOT_FOUND))
async def inspect(ref: ImageRef, tenant: Tenant, service: Images) -> models.ImageInfo:
    return await service.inspect(tenant, ref)


@router.delete("/{ref}", status_code=204, responses=errors(ErrorCode.NOT_FOUND))
async def remove(ref: ImageRef, tenant: Tenant, service: Images) -> Response:
    await service.remove(tenant, ref)
    return Response(status_code=204)

