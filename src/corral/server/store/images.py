"""Tenants' image names and their builds (the images themselves live on the node)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from ._time import aware, now
from .schema import STOP_REASON_LENGTH, bounded, builds, images

#: The log a build keeps once it has ended: its last characters.
MAX_BUILD_LOG = 256 * 1024


@dataclass(frozen=True)
class ImageRecord:
    tenant: str
    #: The tenant's name for it (``name:tag``), or its id for an unnamed build.
    name: str
    id: str
    size_bytes: int
    created_at: datetime
    build: str | None = None


@dataclass(frozen=True)
class BuildRecord:
    id: str
    tenant: str
    name: str | None
    state: str
    started_at: datetime
    finished_at: datetime | None = None
    image: str | None = None
    error: str | None = None
    log: str = ""


def _image(row: Any) -> ImageRecord:
    return ImageRecord(tenant=row.tenant, name=row.name, id=row.id, size_bytes=row.size_bytes,
                       created_at=aware(row.created_at), build=row.build)


class ImageNameStore:
    """``images`` and ``builds``. Every read is by tenant: no call crosses tenants but
    :meth:`all_ids`, which says which images someone still names (for pruning)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put(self, record: ImageRecord) -> None:
        """Name ``record.id`` ``record.name`` for the tenant, replacing what the name was."""
        with self._engine.begin() as db:
            db.execute(delete(images).where(images.c.tenant == record.tenant,
                                            images.c.name == record.name))
            db.execute(insert(images).values(
                tenant=record.tenant, name=record.name, id=record.id,
                size_bytes=record.size_bytes, build=record.build,
                created_at=record.created_at))

    def get(self, tenant: str, name: str) -> ImageRecord | None:
        with self._engine.connect() as db:
            row = db.execute(select(images).where(images.c.tenant == tenant,
                                                  images.c.name == name)).first()
        return None if row is None else _image(row)

    def by_id(self, tenant: str, image_id: str) -> ImageRecord | None:
        """One of the tenant's rows for ``image_id`` (its named one first), or None."""
        with self._engine.connect() as db:
            rows = db.execute(select(images).where(images.c.tenant == tenant,
                                                   images.c.id == image_id)).all()
        found = sorted((_image(r) for r in rows), key=lambda r: r.name == r.id)
        return found[0] if found else None

    def list(self, tenant: str) -> list[ImageRecord]:
        with self._engine.connect() as db:
            rows = db.execute(select(images).where(images.c.tenant == tenant)
                              .order_by(images.c.name)).all()
        return [_image(r) for r in rows]

    def remove(self, tenant: str, name: str) -> bool:
        with self._engine.begin() as db:
            result = db.execute(delete(images).where(images.c.tenant == tenant,
                                                     images.c.name == name))
        return bool(result.rowcount)

    def used_bytes(self, tenant: str) -> int:
        """The disk the tenant's images take, each image once (by id)."""
        with self._engine.connect() as db:
            rows = db.execute(select(images.c.id, func.max(images.c.size_bytes))
                              .where(images.c.tenant == tenant).group_by(images.c.id)).all()
        return sum(int(size) for _, size in rows)

    def all_ids(self) -> set[str]:
        with self._engine.connect() as db:
            return {row.id for row in db.execute(select(images.c.id).distinct())}

    # -- builds ----------------------------------------------------------------------------

    def start_build(self, build_id: str, tenant: str, name: str | None) -> BuildRecord:
        record = BuildRecord(id=build_id, tenant=tenant, name=name, state="running",
                             started_at=now())
        with self._engine.begin() as db:
            db.execute(insert(builds).values(id=build_id, tenant=tenant, name=name,
                                             state="running", started_at=record.started_at))
        return record

    def end_build(self, build_id: str, state: str, log: str, image: str | None = None,
                  error: str | None = None) -> None:
        with self._engine.begin() as db:
            db.execute(update(builds).where(builds.c.id == build_id).values(
                state=state, finished_at=now(), image=image,
                error=bounded(error, STOP_REASON_LENGTH), log=log[-MAX_BUILD_LOG:]))

    def build(self, tenant: str, build_id: str) -> BuildRecord | None:
        with self._engine.connect() as db:
            row = db.execute(select(builds).where(builds.c.tenant == tenant,
                                                  builds.c.id == build_id)).first()
        if row is None:
            return None
        return BuildRecord(id=row.id, tenant=row.tenant, name=row.name, state=row.state,
                           started_at=aware(row.started_at),
                           finished_at=aware(row.finished_at) if row.finished_at else None,
                           image=row.image, error=row.error, log=row.log or "")

    def fail_running(self, reason: str) -> int:
        """Mark builds a previous server left running as failed (at start)."""
        with self._engine.begin() as db:
            result = db.execute(update(builds).where(builds.c.state == "running").values(
                state="failed", finished_at=now(), error=reason))
        return int(result.rowcount)
