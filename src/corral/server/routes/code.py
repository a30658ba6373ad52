"""``/v1/sandboxes/{id}/code``: run a cell (JSON, or NDJSON with ``stream``), and the
code contexts under ``.../code/contexts``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import StreamingResponse

from corral.api import models

from ..auth import Tenant
from ..services.code import CodeService
from ._deps import SandboxId

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/code", tags=["code"])
NDJSON = "application/x-ndjson"
ContextId = Annotated[str, Path(max_length=64)]


async def _code(request: Request) -> CodeService:
    service: CodeService = request.app.state.code
    return service


Code = Annotated[CodeService, Depends(_code)]


@router.post("", response_model=None, responses={200: {
    "description": "An Execution once the cell ended; with `stream`, NDJSON: one CodeEvent "
                   "per line (`stdout`/`stderr`, `result`, `execution_error`, then `end`, "
                   "or `error` if the sandbox failed)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Execution"}},
                NDJSON: {"schema": {"$ref": "#/components/schemas/CodeEvent"}}}}})
async def run(sandbox_id: SandboxId, body: models.RunCodeRequest, tenant: Tenant,
              service: Code) -> models.Execution | Response:
    if body.stream:
        lines = await service.stream(tenant, sandbox_id, body)
        return StreamingResponse(lines, media_type=NDJSON, headers={"Cache-Control": "no-store"})
    return await service.run(tenant, sandbox_id, body)


@router.post("/contexts", status_code=201)
async def create_context(sandbox_id: SandboxId, body: models.ContextCreate, tenant: Tenant,
                         service: Code) -> models.CodeContext:
    return await service.create_context(tenant, sandbox_id, body)


@router.get("/contexts")
async def list_contexts(sandbox_id: SandboxId, tenant: Tenant, service: Code
                        ) -> models.ContextList:
    return await service.list_contexts(tenant, sandbox_id)


@router.post("/contexts/{context_id}/restart")
async def restart_context(sandbox_id: SandboxId, context_id: ContextId, tenant: Tenant,
                          service: Code) -> models.CodeContext:
    return await service.restart_context(tenant, sandbox_id, context_id)


@router.post("/contexts/{context_id}/interrupt", status_code=204)
async def interrupt(sandbox_id: SandboxId, context_id: ContextId, tenant: Tenant,
                    service: Code) -> Response:
    await service.interrupt(tenant, sandbox_id, context_id)
    return Response(status_code=204)


@router.delete("/contexts/{context_id}", status_code=204)
async def delete_context(sandbox_id: SandboxId, context_id: ContextId, tenant: Tenant,
                         service: Code) -> Response:
    await service.delete_context(tenant, sandbox_id, context_id)
    return Response(status_code=204)
