"""Tenants' volume names (the volumes themselves live on the node)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from corral.api.errors import AlreadyExistsError

from ._time import aware
from .schema import volumes


@dataclass(frozen=True)
class VolumeRecord:
    tenant: str
    name: str
    id: str
    size_mib: int
    created_at: datetime


def _record(row: Any) -> VolumeRecord:
    return VolumeRecord(tenant=row.tenant, name=row.name, id=row.id, size_mib=row.size_mib,
                        created_at=aware(row.created_at))


class VolumeNameStore:
    """``volumes``; every read is by tenant."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: VolumeRecord) -> None:
        """AlreadyExistsError if the tenant has a volume of that name."""
        try:
            with self._engine.begin() as db:
                db.execute(insert(volumes).values(
                    tenant=record.tenant, name=record.name, id=record.id,
                    size_mib=record.size_mib, created_at=record.created_at))
        except IntegrityError:
            raise AlreadyExistsError(f"you already have a volume named {record.name!r}"
                                     ) from None

    def get(self, tenant: str, name: str) -> VolumeRecord | None:
        with self._engine.connect() as db:
            row = db.execute(select(volumes).where(volumes.c.tenant == tenant,
                                                   volumes.c.name == name)).first()
        return None if row is None else _record(row)

    def list(self, tenant: str) -> list[VolumeRecord]:
        with self._engine.connect() as db:
            rows = db.execute(select(volumes).where(volumes.c.tenant == tenant)
                              .order_by(volumes.c.name)).all()
        return [_record(r) for r in rows]

    def count(self, tenant: str) -> int:
        return len(self.list(tenant))

    def remove(self, tenant: str, name: str) -> bool:
        with self._engine.begin() as db:
            result = db.execute(delete(volumes).where(volumes.c.tenant == tenant,
                                                      volumes.c.name == name))
        return bool(result.rowcount)
