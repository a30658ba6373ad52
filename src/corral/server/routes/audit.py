"""``/v1/audit``: the caller's tenant's audit log, newest first; an operator's key may ask
for every tenant's (``all_tenants=true``), as ``corral audit`` shows it from the store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from corral.api.audit import AuditEvent, AuditList
from corral.api.errors import ErrorCode, PermissionDeniedError

from ..auth import Tenant, is_operator
from ..openapi import errors
from ..store.audit import MAX_LIST, AuditStore

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", responses=errors(ErrorCode.PERMISSION_DENIED,
                                 why="`all_tenants` asked with a key not an operator's"))
async def list_(request: Request, tenant: Tenant,
                all_tenants: bool = False,
                sandbox_id: Annotated[str | None, Query(max_length=64)] = None,
                action: Annotated[str | None, Query(max_length=128)] = None,
                before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
                limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100) -> AuditList:
    """Who (key id) did what (action) to which sandbox, when, and how it ended; filter by
    ``sandbox_id`` or ``action``, page with ``before=next_before``; ``all_tenants=true``
    (operators' keys only): every tenant's."""
    if all_tenants and not is_operator(request.scope):
        raise PermissionDeniedError("only an operator's key may list every tenant's records "
                                    "(all_tenants); `corral keys create --operator` makes one")
    store: AuditStore = request.app.state.audit
    records = await asyncio.to_thread(store.list, None if all_tenants else tenant,
                                      sandbox_id=sandbox_id,
                                      action=action, before=before, limit=limit)
    events = [AuditEvent(seq=r.seq or 0, at=r.at or datetime.now(UTC), tenant=r.tenant,
                         key_id=r.key_id, action=r.action, sandbox_id=r.sandbox_id,
                         outcome=r.outcome, status=r.status, request_id=r.request_id,
                         client=r.client)
              for r in records]
    more = len(records) == limit and records[-1].seq is not None
    return AuditList(events=events, next_before=records[-1].seq if more else None)
