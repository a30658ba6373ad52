"""The audit log's records: appended per audited request, listed newest first, pruned.

Retention (:meth:`AuditStore.prune`): the newest ``max_rows`` records, none older than
``max_age``; the server prunes at most once a minute as it writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from ._time import aware, now
from .schema import audit_log, bounded

#: Most records one listing returns.
MAX_LIST = 1000


@dataclass(frozen=True)
class AuditRecord:
    tenant: str
    action: str
    outcome: str
    status: int
    key_id: str | None = None
    sandbox_id: str | None = None
    request_id: str | None = None
    client: str | None = None
    at: datetime | None = None  # when written, if not given
    seq: int | None = None  # the store's order; set on records read back


def _record(row: Any) -> AuditRecord:
    return AuditRecord(seq=int(row.seq), at=aware(row.at), tenant=row.tenant,
                       key_id=row.key_id, action=row.action, sandbox_id=row.sandbox_id,
                       outcome=row.outcome, status=int(row.status), request_id=row.request_id,
                       client=row.client)


class AuditStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, *records: AuditRecord) -> None:
        if not records:
            return
        rows = [{"at": r.at or now(), "tenant": r.tenant[:64], "key_id": bounded(r.key_id, 32),
                 "action": bounded(r.action, 128), "sandbox_id": bounded(r.sandbox_id, 64),
                 "outcome": r.outcome[:32], "status": r.status,
                 "request_id": bounded(r.request_id, 64), "client": bounded(r.client, 64)}
                for r in records]
        with self._engine.begin() as db:
            db.execute(insert(audit_log), rows)

    def list(self, tenant: str | None, *, sandbox_id: str | None = None,
             action: str | None = None, before: int | None = None,
             limit: int = 100) -> list[AuditRecord]:
        """Records newest first; ``tenant`` None lists every tenant's (the CLI's view)."""
        query = select(audit_log)
        if tenant is not None:
            query = query.where(audit_log.c.tenant == tenant)
        if sandbox_id is not None:
            query = query.where(audit_log.c.sandbox_id == sandbox_id)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        if before is not None:
            query = query.where(audit_log.c.seq < before)
        query = query.order_by(audit_log.c.seq.desc()).limit(max(1, min(limit, MAX_LIST)))
        with self._engine.connect() as db:
            return [_record(row) for row in db.execute(query)]

    def count(self) -> int:
        with self._engine.connect() as db:
            return int(db.execute(select(func.count()).select_from(audit_log)).scalar_one())

    def prune(self, max_rows: int, max_age: timedelta | None) -> int:
        """Delete all but the newest ``max_rows`` records (0: no bound) and those older
        than ``max_age`` (None: no bound); returns how many went."""
        gone = 0
        with self._engine.begin() as db:
            if max_age is not None:
                gone += db.execute(delete(audit_log).where(
                    audit_log.c.at < now() - max_age)).rowcount
            if max_rows > 0:
                edge = db.execute(select(audit_log.c.seq).order_by(audit_log.c.seq.desc())
                                  .offset(max_rows).limit(1)).scalar()
                if edge is not None:
                    gone += db.execute(delete(audit_log).where(
                        audit_log.c.seq <= edge)).rowcount
        return int(gone)
