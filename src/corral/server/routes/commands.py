"""``/v1/sandboxes/{id}/commands``: run (JSON, or NDJSON with ``stream``), background
start, connect (follow a running command again), stdin, signals, a terminal's resize, and
the list of running commands, and the history of those run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse

from corral.api import models
from corral.api.errors import ErrorCode, SandboxError

from ..auth import Tenant
from ..metrics import Metrics as MetricsT
from ..openapi import errors
from ._deps import Commands, Metrics, SandboxId

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/commands", tags=["commands"])
NDJSON = "application/x-ndjson"
CommandId = Annotated[int, Path(ge=0, le=2**53)]


_EVENTS = {"$ref": "#/components/schemas/CommandEvent"}
_RESULT = {"oneOf": [{"$ref": "#/components/schemas/CommandResult"},
                     {"$ref": "#/components/schemas/CommandStarted"}]}


@router.post("", response_model=None, responses={200: {
    "description": "A CommandResult once the command ended; CommandStarted at once with "
                   "`background`; with `stream`, NDJSON: one CommandEvent per line",
    "content": {"application/json": {"schema": _RESULT}, NDJSON: {"schema": _EVENTS}}}})
async def run(sandbox_id: SandboxId, body: models.CommandRequest, tenant: Tenant,
              service: Commands, metrics: Metrics
              ) -> models.CommandResult | models.CommandStarted | Response:
    try:
        if body.stream:
            events = await service.stream(tenant, sandbox_id, body)
            return StreamingResponse(_counted(events, metrics), media_type=NDJSON,
                                     headers={"Cache-Control": "no-store"})
        if body.background:
            started = await service.background(tenant, sandbox_id, body)
            metrics.commands.labels("background").inc()
            return started
        result = await service.run(tenant, sandbox_id, body)
    except SandboxError:
        metrics.commands.labels("error").inc()
        raise
    metrics.command_ended(result.exit_code, result.reason)
    return result


async def _counted(events: AsyncIterator[bytes], metrics: MetricsT) -> AsyncIterator[bytes]:
    """Pass the NDJSON lines on, counting the command's outcome from its last event."""
    async for line in events:
        if line.startswith(b'{"type":"exit"'):
            end = models.ExitEvent.model_validate(json.loads(line))
            metrics.command_ended(end.exit_code, end.reason)
        elif line.startswith(b'{"type":"error"'):
            metrics.commands.labels("error").inc()
        yield line


@router.get("")
async def list_(sandbox_id: SandboxId, tenant: Tenant, service: Commands
                ) -> models.ProcessList:
    return await service.list(tenant, sandbox_id)


@router.get("/history")
async def history(sandbox_id: SandboxId, tenant: Tenant, service: Commands
                  ) -> models.CommandHistory:
    """The last 100 commands started through the API in this sandbox, newest first, each
    with the first 16 KiB of its stdout and stderr (``truncated`` when cut) and how it
    ended (``ended_at`` null while it runs). A stopped sandbox's is kept for the server's
    metrics retention. Reading it is not activity and never resumes the sandbox."""
    return await service.commands_history(tenant, sandbox_id)


@router.post("/{command_id}/connect", response_class=StreamingResponse, responses={
    200: {"description": "NDJSON: one CommandEvent per line, from now on (a `started`, its "
                         "output, then `exit` or `error`)",
          "content": {NDJSON: {"schema": _EVENTS}}},
    **errors(ErrorCode.NOT_FOUND, ErrorCode.INVALID_ARGUMENT,
             why="no such running command, or its output is already streamed to the "
                 "request that started it")})
async def connect(sandbox_id: SandboxId, command_id: CommandId, tenant: Tenant,
                  service: Commands, metrics: Metrics) -> Response:
    """Follow a running command again: a background one, or one whose output stream ended
    at a pause or a server restart. Its output from now on (what it wrote while nobody
    followed it is gone); leaving early stops the output, and the command runs on."""
    events = await service.connect(tenant, sandbox_id, command_id)
    return StreamingResponse(_counted(events, metrics), media_type=NDJSON,
                             headers={"Cache-Control": "no-store"})


@router.post("/{command_id}/stdin", status_code=204, openapi_extra={"requestBody": {
    "required": False, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}})
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


@router.post("/{command_id}/resize", status_code=204, responses=errors(
    ErrorCode.NOT_FOUND, ErrorCode.INVALID_ARGUMENT,
    why="no such running command, or it was not started with a pty"))
async def resize(sandbox_id: SandboxId, command_id: CommandId, body: models.PtySize,
                 tenant: Tenant, service: Commands) -> Response:
    """Set the size of a command's terminal (one started with ``pty``); it gets SIGWINCH."""
    await service.resize(tenant, sandbox_id, command_id, body)
    return Response(status_code=204)
