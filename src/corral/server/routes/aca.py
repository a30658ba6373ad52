"""``/aca/{pool}/...``: the Azure Container Apps dynamic-sessions API, for clients written
for Azure (Semantic Kernel's ``SessionsPythonTool`` in Python, ``SessionsPythonPlugin`` in
.NET) pointed at ``https://HOST:PORT/aca/<pool>/``. Shapes: :mod:`corral.api.aca`; the logic:
:mod:`corral.server.services.aca`.

API version 2024-02-02-preview (Python): ``POST code/execute``, ``POST files/upload``,
``GET files``, ``GET files/content/{name}``. API version 2024-10-02-preview (.NET):
``POST executions``, ``POST files``, ``GET files``, ``GET files/{name}/content`` and
``GET files/{name}``.

The clients' quirks, tolerated: the session identifier arrives unescaped (``&`` would
split it, so a query of the clients' own form, ``identifier=...&api-version=V``, is read
as one identifier up to the last ``&api-version=``; a ``#`` cuts it and the rest of the
query on the client, so ``api-version`` may be missing); an upload may carry a JSON
``Content-Type`` without a boundary (read from the body); paths are served exactly, with
no redirects. Authentication is the API key as the bearer token, as everywhere.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import unquote, unquote_to_bytes

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import StreamingResponse
from starlette.types import Scope

from corral.api import aca, models
from corral.api.errors import ErrorCode, NotFoundError

from ..auth import Tenant
from ..openapi import errors
from ..services.aca import DATA_DIR, AcaService, confine, relative_name

router = APIRouter(prefix="/aca/{pool}", tags=["aca"])
Pool = Annotated[str, Path(max_length=64, description="a session pool (`default` exists)")]
_CLIENT_QUERY: Final = re.compile(rb"^identifier=(.*)&api-version=([0-9A-Za-z.\-]{1,40})$",
                                  re.DOTALL)
_UPLOADS: Final = re.compile(r"^/aca/[^/]+/files(/upload)?$")
_ERRORS = errors(ErrorCode.NOT_FOUND, ErrorCode.SANDBOX_NOT_RUNNING,
                 ErrorCode.SANDBOX_TIMEOUT, ErrorCode.PERMISSION_DENIED,
                 ErrorCode.ALREADY_EXISTS)
_QUERY = {"parameters": [
    {"name": "identifier", "in": "query", "required": True,
     "description": "the session's identifier, chosen by the client (sent unescaped by "
                    "the Semantic Kernel clients; read up to the last `&api-version=`)",
     "schema": {"type": "string"}},
    {"name": "api-version", "in": "query", "required": False,
     "description": f"`{aca.V1}` (the default) or `{aca.V2}`",
     "schema": {"type": "string"}},
    {"name": "path", "in": "query", "required": False,
     "description": f"({aca.V2}) the directory under `{DATA_DIR}` meant",
     "schema": {"type": "string"}}]}
_MULTIPART = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}}}}}
_DOWNLOAD = {"content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}


def is_upload(scope: Scope) -> bool:
    """Whether a request is an upload, whose body the sandbox's disk bounds."""
    return scope.get("method") == "POST" and bool(_UPLOADS.match(scope.get("path", "")))


async def _service(request: Request) -> AcaService:
    service: AcaService = request.app.state.aca
    return service


Aca = Annotated[AcaService, Depends(_service)]


class SessionQuery:
    """The query of a dynamic-sessions request, read from its raw bytes."""

    def __init__(self, request: Request) -> None:
        raw: bytes = request.scope.get("query_string", b"")
        params: dict[bytes, bytes] = {}
        match = _CLIENT_QUERY.match(raw)
        if match:
            params = {b"identifier": match.group(1), b"api-version": match.group(2)}
        else:
            for item in raw.split(b"&"):
                key, _, value = item.partition(b"=")
                params.setdefault(key, value)
        # Percent-decoded, but '+' kept: the clients never form-encode.
        self.identifier = unquote_to_bytes(params.get(b"identifier", b""))
        version = unquote(params.get(b"api-version", b"").decode("latin-1"))
        agent = request.headers.get("user-agent", "")
        # No api-version (a '#' in the identifier cut it): the .NET client says who it is.
        self.v2 = version >= aca.V2[:10] if version else "Language=dotnet" in agent
        path = params.get(b"path")
        self.directory = (DATA_DIR if path is None else
                          confine(unquote(path.decode("latin-1")), allow_root=True))

    @property
    def identifier_text(self) -> str:
        return self.identifier.decode("utf-8", "replace")


Query = Annotated[SessionQuery, Depends(SessionQuery)]


@router.post("/code/execute", responses=_ERRORS, openapi_extra=_QUERY)
async def execute_v1(pool: Pool, body: aca.ExecuteRequestV1, query: Query, tenant: Tenant,
                     service: Aca) -> aca.ExecuteResponseV1:
    """Run Python code in the session (2024-02-02-preview); state lasts across calls."""
    execution = await _run(service, tenant, pool, query, body.properties)
    stdout, stderr, result = _outputs(execution)
    return aca.ExecuteResponseV1(properties=aca.ExecutionResultV1(
        status="Failure" if execution.error else "Success", result=result, stdout=stdout,
        stderr=stderr, executionTimeInMilliseconds=_millis(execution)))


@router.post("/executions", responses=_ERRORS, openapi_extra=_QUERY)
async def execute_v2(pool: Pool, body: aca.ExecutionProperties, query: Query, tenant: Tenant,
                     service: Aca) -> aca.ExecutionV2:
    """Run Python code in the session (2024-10-02-preview); state lasts across calls."""
    execution = await _run(service, tenant, pool, query, body)
    stdout, stderr, result = _outputs(execution)
    return aca.ExecutionV2(
        id=str(uuid.uuid4()), identifier=query.identifier_text,
        sessionId=query.identifier_text, executionType=body.execution_type,
        status="Failed" if execution.error else "Succeeded",
        result=aca.ExecutionDetailsV2(stdout=stdout, stderr=stderr, executionResult=result,
                                      executionTimeInMilliseconds=_millis(execution)))


@router.post("/files/upload", responses=_ERRORS, openapi_extra={**_QUERY, **_MULTIPART})
async def upload_v1(pool: Pool, request: Request, query: Query, tenant: Tenant,
                    service: Aca) -> aca.FileListV1:
    """Upload the body's `file` part to `/mnt/data/<filename>` (2024-02-02-preview)."""
    entry, _ = await service.upload(tenant, pool, query.identifier, request.stream(),
                                    request.headers.get("content-type", ""), query.directory)
    return aca.FileListV1(value=[_v1(entry)])


@router.post("/files", responses=_ERRORS, openapi_extra={**_QUERY, **_MULTIPART})
async def upload_v2(pool: Pool, request: Request, query: Query, tenant: Tenant,
                    service: Aca) -> aca.FileV2:
    """Upload the body's `file` part into `path` (default `/mnt/data`) (2024-10-02-preview)."""
    entry, _ = await service.upload(tenant, pool, query.identifier, request.stream(),
                                    request.headers.get("content-type", ""), query.directory)
    return _v2(entry, query.directory)


@router.get("/files", responses=_ERRORS, openapi_extra=_QUERY)
async def list_files(pool: Pool, query: Query, tenant: Tenant,
                     service: Aca) -> aca.FileListV1 | aca.FileListV2:
    """The session's files: every file under `/mnt/data`, by relative path
    (2024-02-02-preview); the entries of `path` (2024-10-02-preview)."""
    if query.v2:
        entries = await service.list(tenant, pool, query.identifier, query.directory,
                                     recursive=False)
        return aca.FileListV2(value=[_v2(e, query.directory) for e in entries])
    entries = await service.list(tenant, pool, query.identifier)
    return aca.FileListV1(value=[_v1(e) for e in entries])


@router.get("/files/{name:path}", response_model=None, openapi_extra=_QUERY,
            responses={**_ERRORS, 200: {
                "description": "`files/content/{name}` (2024-02-02-preview) and "
                               "`files/{name}/content` (2024-10-02-preview): the file's "
                               "bytes; `files/{name}` (2024-10-02-preview): its entry",
                "content": {**_DOWNLOAD["content"], "application/json": {
                    "schema": {"$ref": "#/components/schemas/FileV2"}}}}})
async def file(pool: Pool, name: Annotated[str, Path(json_schema_extra={"format": "path"})],
               query: Query, tenant: Tenant, service: Aca) -> Any:
    """Download a file, or (2024-10-02-preview) describe one."""
    if query.v2 and name.endswith("/content"):
        path = confine(name[:-len("/content")], query.directory)
    elif not query.v2 and name.startswith("content/"):
        path = confine(name[len("content/"):])
    elif query.v2:
        path = confine(name, query.directory)
        entry = await service.stat(tenant, pool, query.identifier, path)
        return _v2(entry, query.directory)
    else:
        raise NotFoundError("no such operation: download a file with files/content/{name}")
    chunks = await service.download(tenant, pool, query.identifier, path)
    return StreamingResponse(chunks, media_type="application/octet-stream")


async def _run(service: AcaService, tenant: str, pool: str, query: SessionQuery,
               properties: aca.ExecutionProperties) -> models.Execution:
    timeout = min(max(properties.timeout_in_seconds, 1), aca.MAX_EXECUTION_TIMEOUT)
    return await service.execute(tenant, pool, query.identifier, properties.code, timeout)


def _outputs(execution: models.Execution) -> tuple[str, str, Any]:
    """stdout, stderr (the traceback appended) and Azure's ``result``: the cell's value as
    text, an image it showed, or the error's one-line form."""
    stdout = "".join(execution.logs.stdout)
    stderr = "".join(execution.logs.stderr)
    if execution.error is not None:
        error = execution.error
        trace = error.traceback or f"{error.name}: {error.value}"
        stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + trace
        return stdout, stderr, f"{error.name}: {error.value}"
    result: Any = ""
    for item in execution.results:
        if item.is_main_result and item.text is not None:
            return stdout, stderr, item.text
        if item.png is not None and not result:
            result = {"type": "image", "format": "png", "base64_data": item.png}
    return stdout, stderr, result


def _millis(execution: models.Execution) -> int:
    return max(0, int(execution.duration * 1000))


def _time(entry: models.EntryInfo) -> str:
    return datetime.fromtimestamp(entry.mtime, UTC).isoformat().replace("+00:00", "Z")


def _v1(entry: models.EntryInfo) -> aca.FileEntryV1:
    return aca.FileEntryV1(properties=aca.FileV1(
        filename=relative_name(entry.path), size=entry.size, lastModifiedTime=_time(entry)))


def _v2(entry: models.EntryInfo, directory: str) -> aca.FileV2:
    is_file = entry.type != "dir"
    return aca.FileV2(name=relative_name(entry.path, directory),
                      sizeInBytes=entry.size if is_file else None,
                      lastModifiedAt=_time(entry),
                      contentType="application/octet-stream" if is_file else None,
                      type="File" if is_file else "Directory")

