"""``/v1/audit``: the caller's tenant's audit log, newest first (``corral audit`` shows
every tenant's, straight from the store)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from corral.api.audit import AuditEvent, AuditList

from ..auth import Tenant
from ..store.audit import MAX_LIST, AuditStore

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
async def list_(request: Request, tenant: Tenant,
                sandbox_id: Annotated[str | None, Query(max_length=64)] = None,
                action: Annotated[str | None, Query(max_length=128)] = None,
                before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
                limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100) -> AuditList:
    """Who (key id) did what (action) to which sandbox, when, and how it ended; filter by
    ``sandbox_id`` or ``action``, page with ``before=next_before``."""
    store: AuditStore = request.app.state.audit
    records = await asyncio.to_thread(store.list, tenant, sandbox_id=sandbox_id,
                                      action=action, before=before, limit=limit)
    events = [AuditEvent(seq=r.seq or 0, at=r.at or datetime.now(UTC), tenant=r.tenant,
                         key_id=r.key_id, action=r.action, sandbox_id=r.sandbox_id,
                         outcome=r.outcome, status=r.status, request_id=r.request_id,
                         client=r.client)
              for r in records]
    more = len(records) == limit and records[-1].seq is not None
    return AuditList(events=events, next_before=records[-1].seq if more else None)
