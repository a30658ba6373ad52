"""``/v1/sandboxes/{id}/commands``: run (JSON, or NDJSON with ``stream``), background
start, stdin, signals, and the list of running commands."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse

from corral.api import models

from ..auth import Tenant
from ._deps import Commands, SandboxId

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/commands", tags=["commands"])
NDJSON = "application/x-ndjson"
CommandId = Annotated[int, Path(ge=0, le=2**53)]


@router.post("", response_model=None, responses={
    200: {"description": "CommandResult, or with `stream` NDJSON events",
          "content": {NDJSON: {}}}})
async def run(sandbox_id: SandboxId, body: models.CommandRequest, tenant: Tenant,
              service: Commands) -> models.CommandResult | models.CommandStarted | Response:
    if body.stream:
        events = await service.stream(tenant, sandbox_id, body)
        return StreamingResponse(events, media_type=NDJSON,
                                 headers={"Cache-Control": "no-store"})
    if body.background:
        return await service.background(tenant, sandbox_id, body)
    return await service.run(tenant, sandbox_id, body)


@router.get("")
async def list_(sandbox_id: SandboxId, tenant: Tenant, service: Commands
                ) -> models.ProcessList:
    return await service.list(tenant, sandbox_id)


@router.post("/{command_id}/stdin", status_code=204)
async def stdin(sandbox_id: SandboxId, command_id: CommandId, request: Request,
                tenant: Tenant, service: Commands, eof: bool = False) -> Response:
    """The raw request body goes to the command's stdin; ``eof=true`` closes it after."""
    data = await request.body()
    await service.send_stdin(tenant, sandbox_id, command_id, data, eof)
    return Response(status_code=204)


@router.post("/{command_id}/signal", status_code=204)
async def signal(sandbox_id: SandboxId, command_id: CommandId, body: models.SignalRequest,
                 tenant: Tenant, service: Commands) -> Response:
    await service.signal(tenant, sandbox_id, command_id, body.signal)
    return Response(status_code=204)
