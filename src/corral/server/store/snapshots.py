"""Tenants' snapshots (memory snapshots live on the node; files-only ones are images)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from ._time import aware
from .schema import snapshots


@dataclass(frozen=True)
class SnapshotRecord:
    #: ``snap-`` and 16 hex digits: for a memory snapshot, the node's own id for it.
    id: str
    tenant: str
    name: str | None
    sandbox_id: str
    memory: bool
    #: The image its sandboxes run: the source's (memory), or the files' image id.
    image: str
    runtime: str
    size_bytes: int
    created_at: datetime
    expires_at: datetime


def _record(row: Any) -> SnapshotRecord:
    return SnapshotRecord(id=row.id, tenant=row.tenant, name=row.name,
                          sandbox_id=row.sandbox_id, memory=bool(row.memory), image=row.image,
                          runtime=row.runtime, size_bytes=row.size_bytes,
                          created_at=aware(row.created_at), expires_at=aware(row.expires_at))


class SnapshotStore:
    """``snapshots``. Every read is by tenant but :meth:`all` (the server's start and its
    expiry sweep)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: SnapshotRecord) -> None:
        with self._engine.begin() as db:
            db.execute(insert(snapshots).values(
                id=record.id, tenant=record.tenant, name=record.name,
                sandbox_id=record.sandbox_id, memory=int(record.memory), image=record.image,
                runtime=record.runtime, size_bytes=record.size_bytes,
                created_at=record.created_at, expires_at=record.expires_at))

    def get(self, tenant: str, snapshot_id: str) -> SnapshotRecord | None:
        with self._engine.connect() as db:
            row = db.execute(select(snapshots).where(snapshots.c.tenant == tenant,
                                                     snapshots.c.id == snapshot_id)).first()
        return None if row is None else _record(row)

    def list(self, tenant: str) -> list[SnapshotRecord]:
        with self._engine.connect() as db:
            rows = db.execute(select(snapshots).where(snapshots.c.tenant == tenant)
                              .order_by(snapshots.c.created_at, snapshots.c.id)).all()
        return [_record(r) for r in rows]

    def all(self) -> builtins.list[SnapshotRecord]:
        with self._engine.connect() as db:
            rows = db.execute(select(snapshots).order_by(snapshots.c.created_at)).all()
        return [_record(r) for r in rows]

    def used_bytes(self, tenant: str) -> int:
        """What the tenant's snapshots take on disk, in bytes."""
        with self._engine.connect() as db:
            used = db.execute(select(func.coalesce(func.sum(snapshots.c.size_bytes), 0))
                              .where(snapshots.c.tenant == tenant)).scalar_one()
        return int(used)

    def remove(self, snapshot_id: str) -> bool:
        with self._engine.begin() as db:
            result = db.execute(delete(snapshots).where(snapshots.c.id == snapshot_id))
        return bool(result.rowcount)
