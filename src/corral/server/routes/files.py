"""``/v1/sandboxes/{id}/files``: streamed download (GET) and upload (PUT) of one file,
``list``, ``stat``, ``exists``, ``mkdir``, ``rename``, DELETE, ``watch`` (a directory's
changes as NDJSON), and ``signed-urls``: a download or upload that needs no key
(:mod:`corral.server.file_urls`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Scope

from corral.api import models
from corral.api.errors import ErrorCode
from corral.api.limits import (DEFAULT_WATCH_LIFETIME, MAX_LIST_DEPTH, MAX_PATH,
                               MAX_WATCH_LIFETIME)

from ..auth import Tenant
from ..file_urls import FileUrls
from ..openapi import errors
from . import aca
from ._deps import Files, Sandboxes, SandboxId

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])
FilePath = Annotated[str, Query(min_length=1, max_length=MAX_PATH)]
_UPLOAD = re.compile(r"^/v1/sandboxes/[^/]+/files$")


def is_upload(scope: Scope) -> bool:
    """Whether a request is a file upload (here, or through the dynamic-sessions façade),
    whose body the sandbox's disk bounds."""
    return ((scope.get("method") == "PUT" and bool(_UPLOAD.match(scope.get("path", ""))))
            or aca.is_upload(scope))


@router.get("", response_class=StreamingResponse,
            responses={200: {"description": "The file's bytes, streamed",
                             "content": {"application/octet-stream": {
                                 "schema": {"type": "string", "format": "binary"}}}}})
async def download(sandbox_id: SandboxId, path: FilePath, tenant: Tenant,
                   service: Files) -> StreamingResponse:
    chunks = await service.read_stream(tenant, sandbox_id, path)
    return StreamingResponse(chunks, media_type="application/octet-stream")


#: How the spec describes a raw byte request body (FastAPI cannot see one read by hand).
RAW_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}


@router.put("", openapi_extra=RAW_BODY)
async def upload(sandbox_id: SandboxId, path: FilePath, request: Request, tenant: Tenant,
                 service: Files, mode: Annotated[int, Query(ge=0, le=0o7777)] = 0o644,
                 user: Annotated[str | None, Query(min_length=1, max_length=64)] = None
                 ) -> models.WriteResult:
    """The raw request body becomes the file, written atomically (parents created).
    ``user`` (a name or uid of the image) owns the file and the parents created."""
    owner: str | int | None = int(user) if user is not None and user.isdigit() else user
    return await service.write(tenant, sandbox_id, path, request.stream(), mode, owner)


@router.delete("", status_code=204)
async def remove(sandbox_id: SandboxId, path: FilePath, tenant: Tenant, service: Files,
                 recursive: bool = False) -> Response:
    await service.remove(tenant, sandbox_id, path, recursive)
    return Response(status_code=204)


@router.get("/list")
async def list_(sandbox_id: SandboxId, tenant: Tenant, service: Files,
                path: FilePath = ".", depth: Annotated[int, Query(ge=1, le=MAX_LIST_DEPTH)] = 1
                ) -> models.EntryList:
    return await service.list(tenant, sandbox_id, path, depth)


@router.get("/stat")
async def stat(sandbox_id: SandboxId, path: FilePath, tenant: Tenant,
               service: Files) -> models.EntryInfo:
    return await service.stat(tenant, sandbox_id, path)


@router.get("/exists")
async def exists(sandbox_id: SandboxId, path: FilePath, tenant: Tenant,
                 service: Files) -> models.Exists:
    return await service.exists(tenant, sandbox_id, path)


@router.post("/mkdir")
async def mkdir(sandbox_id: SandboxId, body: models.MakeDir, tenant: Tenant,
                service: Files) -> models.Created:
    return await service.mkdir(tenant, sandbox_id, body)


@router.post("/rename", status_code=204)
async def rename(sandbox_id: SandboxId, body: models.Rename, tenant: Tenant,
                 service: Files) -> Response:
    await service.rename(tenant, sandbox_id, body)
    return Response(status_code=204)


@router.post("/signed-urls", status_code=201)
async def signed_url(sandbox_id: SandboxId, body: models.FileUrlRequest, request: Request,
                     tenant: Tenant, sandboxes: Sandboxes) -> models.SignedUrl:
    """A URL that downloads (GET) or uploads (PUT) ``path`` with no key until it expires."""
    await sandboxes.describe(tenant, sandbox_id)  # the tenant's, or 404
    urls: FileUrls = request.app.state.file_urls
    user = None if body.user is None else str(body.user)
    query, expires = urls.query(sandbox_id, body.operation, body.path, user, body.expires_in)
    base = str(request.base_url).rstrip("/")
    return models.SignedUrl(url=f"{base}/v1/sandboxes/{sandbox_id}/files?{query}",
                            expires_at=datetime.fromtimestamp(expires, UTC))
@router.get("/watch", response_class=StreamingResponse, responses={
    200: {"description": "NDJSON: one WatchEvent per line as changes happen (names "
                         "relative to `path`), or an `error` line last; the stream ends "
                         "after `timeout` seconds or when the directory goes",
          "content": {"application/x-ndjson": {"schema": {
              "$ref": "#/components/schemas/WatchStreamEvent"}}}},
    **errors(ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.INVALID_ARGUMENT,
             why="the sandbox's watches, or the tree's directories, are at their bound; "
                 "or `path` is not a directory")})
async def watch(sandbox_id: SandboxId, path: FilePath, tenant: Tenant, service: Files,
                recursive: bool = False,
                timeout: Annotated[float, Query(gt=0, le=MAX_WATCH_LIFETIME)]
                = DEFAULT_WATCH_LIFETIME) -> StreamingResponse:
    """Watch a directory (with ``recursive``, every directory under it, those made later
    too) for ``timeout`` seconds. Answers once it is watched; leaving early stops it."""
    lines = await service.watch(tenant, sandbox_id, path, recursive, timeout)
    return StreamingResponse(lines, media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store"})
