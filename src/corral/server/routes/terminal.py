"""``WS /v1/sandboxes/{id}/terminal``: an interactive terminal over one WebSocket.

The handshake authenticates as every request does (``Authorization: Bearer <key>`` or
``X-API-Key``; see :mod:`corral.server.auth`), or with the web console's session cookie,
its CSRF token in ``?csrf=`` and an ``Origin`` that is the server's own (a browser cannot
set a WebSocket's headers; :mod:`corral.server.sessions`). Then, in order:

1. the client sends one text message, a :class:`~corral.api.models.TerminalRequest`
   (``{"pty": {"cols": 80, "rows": 24}}``, and optionally ``cmd``, ``env``, ``cwd``,
   ``user``, ``timeout``), within :data:`START_WAIT` seconds;
2. the server answers a ``started`` event (``{"type": "started", "id", "pid"}``) as text,
   or an ``error`` event and closes (1008 for a bad request, 1011 otherwise);
3. binary messages both ways: the terminal's output from the server, keys typed from the
   client (each at most :data:`MAX_INPUT` bytes); text messages from the client are
   controls: ``{"type": "resize", "cols", "rows"}`` and ``{"type": "signal", "signal"}``;
4. at the command's end the server sends its ``exit`` event (or an ``error`` event) as
   text and closes (1000).

A client that leaves (or breaks these rules: closed with 1008) kills the command, as
leaving a streamed command's NDJSON does. The command's id also takes the HTTP calls
(``.../commands/{cid}/stdin``, ``/resize``, ``/signal``). The start is audited as
``command.run``, as the HTTP route's.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import anyio
from fastapi import APIRouter, WebSocket
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from corral.api import models
from corral.api.errors import (ErrorCode, InvalidArgumentError, NotFoundError,
                               SandboxError, http_status)

from ..auth import tenant_of
from ..logs import REQUEST_ID_SCOPE
from ..ratelimit import KEY_ID_SCOPE
from ..services import CommandService
from ..store.audit import AuditRecord, AuditStore

router = APIRouter()
PATH: Final = "/v1/sandboxes/{sandbox_id}/terminal"
#: Seconds the client has to send its TerminalRequest after the handshake.
START_WAIT: Final = 30.0
#: Largest message of keys typed, and of a text message (request or control), in bytes.
MAX_INPUT: Final = 1024 * 1024
_CONTROL: TypeAdapter[models.TerminalControl] = TypeAdapter(models.TerminalControl)
_BAD_REQUEST: Final = 1008
_SERVER_ERROR: Final = 1011


class _Violation(Exception):
    """The client broke the route's rules: closed with 1008 and why."""


@router.websocket(PATH)
async def terminal(websocket: WebSocket, sandbox_id: str) -> None:
    tenant = tenant_of(websocket.scope)
    if tenant is None:  # only if the authentication layer was left out of the app
        await websocket.close(_BAD_REQUEST)
        return
    service: CommandService = websocket.app.state.commands
    await websocket.accept()
    try:
        request = await _first(websocket)
        events = await service.events(tenant, sandbox_id[:64], request.command())
    except _Violation as exc:
        await _end(websocket, ErrorCode.INVALID_ARGUMENT, str(exc), _BAD_REQUEST)
        return
    except SandboxError as exc:
        await _audit(websocket, tenant, sandbox_id, exc.code.value, http_status(exc.code))
        await _end(websocket, exc.code, exc.message,
                   _BAD_REQUEST if exc.code == ErrorCode.INVALID_ARGUMENT else _SERVER_ERROR)
        return
    except WebSocketDisconnect:
        return
    await _audit(websocket, tenant, sandbox_id, "ok", 101)
    async with contextlib.aclosing(events):
        started = await anext(events)
        if not isinstance(started, models.StartedEvent):
            await websocket.send_text(started.model_dump_json())
            await websocket.close(_SERVER_ERROR)
            return
        await websocket.send_text(started.model_dump_json())
        violation: list[str] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_keys, websocket, service, tenant, sandbox_id, started.id,
                             tasks.cancel_scope, violation)
            async for event in events:
                if isinstance(event, models.OutputEvent):
                    await websocket.send_bytes(event.payload())
                else:  # exit or error: the last
                    await websocket.send_text(event.model_dump_json())
            tasks.cancel_scope.cancel()
    if violation:
        await _close(websocket, _BAD_REQUEST, violation[0])
    elif not _gone(websocket):
        await _close(websocket, 1000)


async def _first(websocket: WebSocket) -> models.TerminalRequest:
    with anyio.move_on_after(START_WAIT) as waited:
        message = await websocket.receive()
    if waited.cancelled_caught:
        raise _Violation(f"no TerminalRequest within {START_WAIT:g} s")
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None or len(text) > MAX_INPUT:
        raise _Violation("the first message is a TerminalRequest, as JSON text")
    try:
        return models.TerminalRequest.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise _Violation(f"invalid TerminalRequest: {problems}") from None


async def _keys(websocket: WebSocket, service: CommandService, tenant: str, sandbox_id: str,
                command_id: int, scope: anyio.CancelScope, violation: list[str]) -> None:
    """The client's messages, to the command, until it leaves or breaks the rules; then
    ``scope`` is cancelled (the command is killed on the way out)."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if len(data or text or "") > MAX_INPUT:
                violation.append(f"a message is over {MAX_INPUT} bytes")
                return
            if data is not None:
                await service.send_stdin(tenant, sandbox_id, command_id, data, eof=False)
                continue
            try:
                control = _CONTROL.validate_json(text or "")
            except ValidationError:
                violation.append('text messages are {"type": "resize", "cols", "rows"} or '
                                 '{"type": "signal", "signal"}')
                return
            if isinstance(control, models.TerminalResize):
                await service.resize(tenant, sandbox_id, command_id,
                                     models.PtySize(cols=control.cols, rows=control.rows))
            else:
                await service.signal(tenant, sandbox_id, command_id, control.signal)
    except (NotFoundError, InvalidArgumentError):
        # The command ended under an input or a control: its exit follows on the events.
        await asyncio.Event().wait()
    finally:
        if violation or _gone(websocket):
            scope.cancel()


def _gone(websocket: WebSocket) -> bool:
    return websocket.application_state == WebSocketState.DISCONNECTED or (
        websocket.client_state == WebSocketState.DISCONNECTED)


async def _end(websocket: WebSocket, code: ErrorCode, message: str, close: int) -> None:
    event = models.ErrorEvent(error=models.ErrorDetail(code=code.value, message=message))
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_text(event.model_dump_json())
    await _close(websocket, close, message)


async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    # A close reason is at most 123 bytes.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.close(code, reason.encode()[:120].decode(errors="ignore"))


async def _audit(websocket: WebSocket, tenant: str, sandbox_id: str, outcome: str,
                 status: int) -> None:
    """The start in the audit trail, as ``command.run`` (HTTP requests get theirs from the
    audit layer, which sees no WebSocket)."""
    store: AuditStore | None = getattr(websocket.app.state, "audit", None)
    if store is None:
        return
    scope = websocket.scope
    client = scope.get("client")
    record = AuditRecord(tenant=tenant, action="command.run", outcome=outcome,
                         status=status,
                         key_id=scope.get(KEY_ID_SCOPE), sandbox_id=sandbox_id[:64],
                         request_id=scope.get(REQUEST_ID_SCOPE),
                         client=str(client[0]) if client else None)
    with contextlib.suppress(Exception):
        await asyncio.to_thread(store.add, record)

