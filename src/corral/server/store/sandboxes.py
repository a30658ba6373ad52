"""Sandbox records: one row per sandbox, rewritten on every state change the server sees."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from ._time import aware
from .schema import STOP_REASON_LENGTH, bounded, sandboxes

#: Not yet stopped: the sandbox (or what it saved, paused) is still on its node.
ACTIVE_STATES = ("starting", "running", "paused", "stopping")


@dataclass(frozen=True)
class SandboxRecord:
    id: str
    tenant: str
    image: str
    runtime: str
    state: str
    resources: dict[str, Any]
    metadata: dict[str, str]
    created_at: datetime
    expires_at: datetime
    stop_reason: str | None = None
    idle_timeout: float | None = None
    #: The network policy's wire form ("none", "all" or allow/deny lists).
    network: str | dict[str, list[str]] = "none"
    #: The secret that opens its exposed ports; None only in records from before ports.
    port_token: str | None = None
    #: Its ports reachable without a credential.
    public_ports: tuple[int, ...] = ()
    #: The volumes it mounts, as the API writes them ({"path", "volume", "read_only"}).
    volumes: tuple[dict[str, Any], ...] = ()
    #: Why it is in its state now (a stopped one's is its stop_reason).
    state_reason: str | None = None
    #: When it was paused, while it is.
    paused_at: datetime | None = None
    #: What its idle timeout and the end of its lifetime do: "kill" or "pause".
    on_idle: str = "kill"
    on_timeout: str = "kill"
    #: Seconds it may stay paused before it is killed; None in rows from before: the
    #: server's default.
    paused_ttl: float | None = None


def _record(row: Any) -> SandboxRecord:
    return SandboxRecord(id=row.id, tenant=row.tenant, image=row.image, runtime=row.runtime,
                         state=row.state, resources=dict(row.resources),
                         metadata=dict(row.metadata), created_at=aware(row.created_at),
                         expires_at=aware(row.expires_at), stop_reason=row.stop_reason,
                         idle_timeout=row.idle_timeout,
                         network=row.network if row.network is not None else "none",
                         port_token=row.port_token,
                         volumes=tuple(v for v in row.volumes or () if isinstance(v, dict)),
                         public_ports=tuple(p for p in row.public_ports or ()
                                            if isinstance(p, int)),
                         state_reason=row.state_reason,
                         paused_at=None if row.paused_at is None else aware(row.paused_at),
                         on_idle=row.on_idle or "kill", on_timeout=row.on_timeout or "kill",
                         paused_ttl=row.paused_ttl)


class SandboxStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: SandboxRecord) -> None:
        with self._engine.begin() as db:
            db.execute(insert(sandboxes).values(
                id=record.id, tenant=record.tenant, image=record.image, runtime=record.runtime,
                state=record.state, resources=record.resources, metadata=record.metadata,
                created_at=record.created_at, expires_at=record.expires_at,
                stop_reason=bounded(record.stop_reason, STOP_REASON_LENGTH),
                idle_timeout=record.idle_timeout, network=record.network,
                port_token=record.port_token, public_ports=list(record.public_ports),
                volumes=list(record.volumes) or None,
                state_reason=bounded(record.state_reason, STOP_REASON_LENGTH),
                paused_at=record.paused_at, on_idle=record.on_idle,
                on_timeout=record.on_timeout, paused_ttl=record.paused_ttl))

    def set_network(self, sandbox_id: str, network: str | dict[str, list[str]]) -> None:
        with self._engine.begin() as db:
            db.execute(update(sandboxes).where(sandboxes.c.id == sandbox_id).values(
                network=network))

    def set_ports(self, sandbox_id: str, token: str, public: tuple[int, ...]) -> None:
        with self._engine.begin() as db:
            db.execute(update(sandboxes).where(sandboxes.c.id == sandbox_id).values(
                port_token=token, public_ports=list(public)))

    def set_state(self, sandbox_id: str, state: str, stop_reason: str | None,
                  expires_at: datetime, state_reason: str | None = None,
                  paused_at: datetime | None = None) -> None:
        """Write a sandbox's state now: each field as given (None clears the reasons and
        the pause time)."""
        with self._engine.begin() as db:
            db.execute(update(sandboxes).where(sandboxes.c.id == sandbox_id).values(
                state=state, stop_reason=bounded(stop_reason, STOP_REASON_LENGTH),
                expires_at=expires_at,
                state_reason=bounded(state_reason, STOP_REASON_LENGTH),
                paused_at=paused_at))

    def active(self) -> list[SandboxRecord]:
        """Every tenant's sandboxes not yet recorded stopped."""
        with self._engine.connect() as db:
            rows = db.execute(select(sandboxes).where(
                sandboxes.c.state.in_(ACTIVE_STATES))).all()
        return [_record(r) for r in rows]

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        with self._engine.connect() as db:
            row = db.execute(select(sandboxes).where(sandboxes.c.id == sandbox_id)).first()
        return None if row is None else _record(row)

    def list(self, tenant: str, metadata: Mapping[str, str] | None = None,
             state: str | None = None, limit: int = 1000) -> list[SandboxRecord]:
        """A tenant's sandboxes, newest first. Metadata is matched here rather than in SQL:
        JSON operators differ between SQLite and PostgreSQL, and a tenant's rows are few."""
        query = select(sandboxes).where(sandboxes.c.tenant == tenant)
        if state is not None:
            query = query.where(sandboxes.c.state == state)
        with self._engine.connect() as db:
            rows = db.execute(query.order_by(sandboxes.c.created_at.desc())).all()
        wanted = dict(metadata or {})
        found = [r for r in map(_record, rows)
                 if all(r.metadata.get(k) == v for k, v in wanted.items())]
        return found[:limit]

    def stop_all_active(self, reason: str) -> int:
        """Mark every not-yet-stopped sandbox stopped (their node is gone); returns how many."""
        with self._engine.begin() as db:
            done = db.execute(update(sandboxes).where(sandboxes.c.state.in_(ACTIVE_STATES))
                              .values(state="stopped",
                                      stop_reason=bounded(reason, STOP_REASON_LENGTH),
                                      paused_at=None))
        return int(done.rowcount)
