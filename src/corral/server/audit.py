"""The audit trail: one record per request that changes or reads a sandbox's contents.

Recorded in one place, this middleware (after authentication and rate limits: refused
requests did nothing and are in the access log only), from what every request has:
the tenant and key id authentication found, the route template the path matches, the
sandbox id in the path (or, for a create, in the answer), and the status. It never reads
the request body, so no command, path, env or file content can reach the log; the action
is named by the route (:data:`ACTIONS`), and a route not listed there that is not a read
is recorded as ``"<METHOD> <template>"``, so new routes are audited without a change here.

A record is committed before the response starts, so a caller that saw an answer can
find its record; a request whose client left before any answer is recorded with status 0.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import code_for_status

from .auth import tenant_of
from .logs import REQUEST_ID_SCOPE, SANDBOX_SCOPE
from .metrics import UNMATCHED, error_code_of
from .ratelimit import KEY_ID_SCOPE
from .settings import AuditSettings
from .store.audit import AuditRecord, AuditStore

log = logging.getLogger(__name__)
#: Sandbox lifecycle events, with the sandbox's id, for the structured log.
events = logging.getLogger("corral.server.events")
_LIFECYCLE: Final = frozenset({"sandbox.create", "sandbox.kill"})

_SANDBOX = "/v1/sandboxes/{sandbox_id}"
_ACA = "/aca/{pool}"
ACTIONS: Final = {
    ("POST", "/v1/sandboxes"): "sandbox.create",
    ("DELETE", _SANDBOX): "sandbox.kill",
    ("POST", f"{_SANDBOX}/timeout"): "sandbox.set_timeout",
    ("PUT", f"{_SANDBOX}/network"): "sandbox.set_network",
    ("POST", f"{_SANDBOX}/commands"): "command.run",
    ("POST", f"{_SANDBOX}/commands/{{command_id}}/stdin"): "command.stdin",
    ("POST", f"{_SANDBOX}/commands/{{command_id}}/signal"): "command.signal",
    ("GET", f"{_SANDBOX}/files"): "file.read",
    ("PUT", f"{_SANDBOX}/files"): "file.write",
    ("DELETE", f"{_SANDBOX}/files"): "file.remove",
    ("POST", f"{_SANDBOX}/files/mkdir"): "file.mkdir",
    ("POST", f"{_SANDBOX}/files/rename"): "file.rename",
    # The Azure Container Apps façade: the sandbox is the session's, found by the route.
    ("POST", f"{_ACA}/code/execute"): "aca.execute",
    ("POST", f"{_ACA}/executions"): "aca.execute",
    ("POST", f"{_ACA}/files/upload"): "aca.file.upload",
    ("POST", f"{_ACA}/files"): "aca.file.upload",
    ("GET", f"{_ACA}/files"): "aca.file.list",
    ("GET", f"{_ACA}/files/{{name}}"): "aca.file.read",
    # MCP: one route for every tool call; the body (which tool) is never read here.
    ("POST", "/mcp"): "mcp.request",
    ("GET", "/mcp"): "mcp.request",
    ("DELETE", "/mcp"): "mcp.request",
    # The console's logout; its login is recorded by its route, which finds the tenant.
    ("POST", "/ui/api/logout"): "ui.logout",
}
_READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: The sandbox a route found for its request when the path names none (an ``/aca``
#: session's): set by the route's service with :func:`found_sandbox`, read for the record.
_FOUND: contextvars.ContextVar[str | None] = contextvars.ContextVar("corral_audit_sandbox",
                                                                    default=None)


def found_sandbox(sandbox_id: str) -> None:
    """Say which sandbox the request being served acts on, for its audit record."""
    _FOUND.set(sandbox_id)
#: Seconds between two prunes of the table.
PRUNE_INTERVAL: Final = 60.0


def action_of(method: str, template: str,
              extra: Mapping[tuple[str, str], str] | None = None) -> str | None:
    """The audited action of a request, or None for one that is not audited; ``extra``:
    actions of routes outside ``/v1`` (the E2B API's)."""
    action = ACTIONS.get((method, template)) or (extra or {}).get((method, template))
    if action is not None:
        return action
    if method in _READS or template == UNMATCHED or not template.startswith("/v1/"):
        return None
    if template.startswith("/v1/audit"):
        return None
    return f"{method} {template}"


class AuditTrail:
    def __init__(self, app: ASGIApp, store: AuditStore, settings: AuditSettings,
                 route: Callable[[str], tuple[str, str | None]],
                 actions: Mapping[tuple[str, str], str] | None = None) -> None:
        self.app = app
        self._actions = dict(actions or {})
        self.store = store
        self.settings = settings
        self._route = route
        self._pruned = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = tenant_of(scope) if scope["type"] == "http" else None
        if tenant is None:
            await self.app(scope, receive, send)
            return
        template, sandbox_id = self._route(scope["path"])
        # Not in the path for E2B's envd calls: their authentication found it in a header.
        sandbox_id = sandbox_id or scope.get(SANDBOX_SCOPE)
        action = action_of(scope["method"], template, self._actions)
        if action is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        draft = AuditRecord(tenant=tenant, action=action, outcome="", status=0,
                            key_id=scope.get(KEY_ID_SCOPE), sandbox_id=sandbox_id,
                            request_id=scope.get(REQUEST_ID_SCOPE),
                            client=str(client[0]) if client else None)
        recorded = False
        start: Message | None = None
        found = _FOUND.set(None)

        async def write(status: int, body: bytes) -> None:
            nonlocal recorded
            recorded = True
            sid = draft.sandbox_id or _FOUND.get()
            if sid is None and status == 201 and draft.action == "sandbox.create":
                # Corral's answer names it "id", the E2B API's "sandboxID".
                sid = _json_field(body, "id") or _json_field(body, "sandboxID")
                if sid:
                    scope[SANDBOX_SCOPE] = sid
            outcome = _outcome(status, body)
            await self._write(AuditRecord(
                tenant=draft.tenant, action=draft.action, outcome=outcome,
                status=status, key_id=draft.key_id, sandbox_id=sid,
                request_id=draft.request_id, client=draft.client))
            if sid and outcome == "ok" and draft.action in _LIFECYCLE:
                events.info("sandbox %s: %s", sid, draft.action, extra={
                    "event": draft.action, "tenant": draft.tenant, "key_id": draft.key_id})

        async def auditing(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and not recorded:
                status = int(message["status"])
                if 200 <= status < 300 and action != "sandbox.create":
                    await write(status, b"")
                else:  # the body says the code, or the new sandbox's id
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                held, start = start, None
                await write(int(held["status"]), message.get("body", b""))
                await send(held)
            await send(message)

        try:
            await self.app(scope, receive, auditing)
        finally:
            if not recorded:
                await self._write(replace(draft, outcome="no_response",
                                          sandbox_id=draft.sandbox_id or _FOUND.get()))
            _FOUND.reset(found)

    async def _write(self, record: AuditRecord) -> None:
        try:
            await asyncio.to_thread(self.store.add, record)
        except Exception:
            # The action has happened (or not) either way; a failed record must not turn
            # its answer into an error. Said loudly, once per failure.
            log.exception("writing the audit record of a %s failed", record.action)
            return
        if time.monotonic() - self._pruned >= PRUNE_INTERVAL:
            self._pruned = time.monotonic()
            age = self.settings.max_age_days
            try:
                await asyncio.to_thread(self.store.prune, self.settings.max_rows,
                                        timedelta(days=age) if age > 0 else None)
            except Exception:
                log.exception("pruning the audit log failed")


async def record(app: Any, scope: Scope, tenant: str, key_id: str | None, action: str,
                 outcome: str, status: int, sandbox_id: str | None = None) -> None:
    """Write one record from a route, for what this layer cannot see: a WebSocket, or a
    request that names its tenant only once the route ran (the console's login)."""
    store: AuditStore | None = getattr(app.state, "audit", None)
    if store is None:
        return
    client = scope.get("client")
    entry = AuditRecord(tenant=tenant, action=action, outcome=outcome, status=status,
                        key_id=key_id, sandbox_id=sandbox_id,
                        request_id=scope.get(REQUEST_ID_SCOPE),
                        client=str(client[0]) if client else None)
    try:
        await asyncio.to_thread(store.add, entry)
    except Exception:
        log.exception("writing the audit record of a %s failed", action)


def _outcome(status: int, body: bytes) -> str:
    if 200 <= status < 400:
        return "ok"
    return error_code_of(body) or code_for_status(status).value


def _json_field(body: bytes, name: str) -> str | None:
    if len(body) > 65536:
        return None
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
