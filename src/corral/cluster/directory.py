"""The control plane's shared records (``cluster_nodes``, ``cluster_sandboxes``).

Every API server of a cluster reads and writes them in the one database (PostgreSQL when
there are several), so any of them can serve any sandbox and carry on when another stops.
Writes are single statements that say what they expect (``WHERE state = 'live'``), so two
API servers marking the same node lost, or one marking it lost while another sees it come
back, end in one answer whichever runs first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..server.store._time import aware, now
from ..server.store.schema import STOP_REASON_LENGTH, bounded, cluster_nodes, cluster_sandboxes

LIVE, LOST, STOPPED = "live", "lost", "stopped"


@dataclass(frozen=True)
class NodeRecord:
    name: str
    url: str
    labels: dict[str, str]
    state: str
    reason: str | None
    cordoned: bool
    draining: bool
    seen_at: datetime
    lost_at: datetime | None


@dataclass(frozen=True)
class Placement:
    """Where a sandbox runs and whose it is."""

    id: str
    tenant: str
    node: str
    state: str
    reason: str | None
    info: dict[str, Any]
    created_at: datetime
    lost_at: datetime | None


def _node(row: Any) -> NodeRecord:
    return NodeRecord(name=row.name, url=row.url, labels=dict(row.labels or {}),
                      state=row.state, reason=row.reason, cordoned=bool(row.cordoned),
                      draining=bool(row.draining), seen_at=aware(row.seen_at),
                      lost_at=aware(row.lost_at) if row.lost_at else None)


def _placement(row: Any) -> Placement:
    return Placement(id=row.id, tenant=row.tenant, node=row.node, state=row.state,
                     reason=row.reason, info=dict(row.info), created_at=aware(row.created_at),
                     lost_at=aware(row.lost_at) if row.lost_at else None)


class Directory:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- nodes -----------------------------------------------------------------------------

    def nodes(self) -> list[NodeRecord]:
        with self._engine.connect() as db:
            rows = db.execute(select(cluster_nodes).order_by(cluster_nodes.c.name)).all()
        return [_node(r) for r in rows]

    def node(self, name: str) -> NodeRecord | None:
        with self._engine.connect() as db:
            row = db.execute(select(cluster_nodes).where(cluster_nodes.c.name == name)).first()
        return None if row is None else _node(row)

    def node_seen(self, name: str, url: str, labels: dict[str, str]) -> bool:
        """Record that ``name`` answered; True if it was lost (or new) until now."""
        at = now()
        with self._engine.begin() as db:
            done = db.execute(update(cluster_nodes).where(cluster_nodes.c.name == name).values(
                url=url, labels=labels, seen_at=at))
            if done.rowcount == 0:
                try:
                    db.execute(insert(cluster_nodes).values(
                        name=name, url=url, labels=labels, state="ready", reason=None,
                        cordoned=False, draining=False, seen_at=at, lost_at=None))
                except IntegrityError:
                    pass  # another API server added it first
                return True
            back = db.execute(update(cluster_nodes).where(
                cluster_nodes.c.name == name, cluster_nodes.c.state != "ready").values(
                state="ready", reason=None, lost_at=None))
        return bool(back.rowcount)

    def node_lost(self, name: str, reason: str) -> int:
        """Mark ``name`` lost and its live sandboxes lost with ``reason``; how many
        sandboxes this marked (0 if another API server did it first)."""
        at = now()
        reason = bounded(reason, STOP_REASON_LENGTH) or ""
        with self._engine.begin() as db:
            db.execute(update(cluster_nodes).where(
                cluster_nodes.c.name == name, cluster_nodes.c.state == "ready").values(
                state="lost", reason=reason, lost_at=at))
            done = db.execute(update(cluster_sandboxes).where(
                cluster_sandboxes.c.node == name, cluster_sandboxes.c.state == LIVE).values(
                state=LOST, reason=reason, lost_at=at))
        return int(done.rowcount)

    def set_node(self, name: str, *, cordoned: bool | None = None,
                 draining: bool | None = None) -> bool:
        values: dict[str, bool] = {}
        if cordoned is not None:
            values["cordoned"] = cordoned
        if draining is not None:
            values["draining"] = draining
        with self._engine.begin() as db:
            done = db.execute(update(cluster_nodes).where(cluster_nodes.c.name == name)
                              .values(**values))
        return bool(done.rowcount)

    # -- sandboxes -------------------------------------------------------------------------

    def add(self, sandbox_id: str, tenant: str, node: str, info: dict[str, Any]) -> None:
        with self._engine.begin() as db:
            db.execute(insert(cluster_sandboxes).values(
                id=sandbox_id, tenant=tenant, node=node, state=LIVE, reason=None, info=info,
                created_at=now(), lost_at=None))

    def get(self, sandbox_id: str) -> Placement | None:
        with self._engine.connect() as db:
            row = db.execute(select(cluster_sandboxes)
                             .where(cluster_sandboxes.c.id == sandbox_id)).first()
        return None if row is None else _placement(row)

    def get_many(self, sandbox_ids: list[str]) -> list[Placement]:
        with self._engine.connect() as db:
            rows = db.execute(select(cluster_sandboxes)
                              .where(cluster_sandboxes.c.id.in_(sandbox_ids))).all()
        return [_placement(r) for r in rows]

    def nodes_of(self, tenant: str) -> list[str]:
        """The nodes that run, or ran, sandboxes of ``tenant`` (but for lost ones)."""
        with self._engine.connect() as db:
            rows = db.execute(select(cluster_sandboxes.c.node).distinct().where(
                cluster_sandboxes.c.tenant == tenant, cluster_sandboxes.c.state != LOST)
                .order_by(cluster_sandboxes.c.node)).all()
        return [r.node for r in rows]

    def of_tenant(self, tenant: str, states: tuple[str, ...]) -> list[Placement]:
        with self._engine.connect() as db:
            rows = db.execute(select(cluster_sandboxes).where(
                cluster_sandboxes.c.tenant == tenant, cluster_sandboxes.c.state.in_(states))
                .order_by(cluster_sandboxes.c.created_at)).all()
        return [_placement(r) for r in rows]

    def on_node(self, node: str, states: tuple[str, ...]) -> list[Placement]:
        with self._engine.connect() as db:
            rows = db.execute(select(cluster_sandboxes).where(
                cluster_sandboxes.c.node == node, cluster_sandboxes.c.state.in_(states))).all()
        return [_placement(r) for r in rows]

    def count(self, tenant: str | None = None) -> int:
        """Sandboxes live or lost (still counted: their node may come back)."""
        query = select(func.count()).select_from(cluster_sandboxes).where(
            cluster_sandboxes.c.state.in_((LIVE, LOST)))
        if tenant is not None:
            query = query.where(cluster_sandboxes.c.tenant == tenant)
        with self._engine.connect() as db:
            return int(db.execute(query).scalar_one())

    def counts(self) -> dict[tuple[str, str], int]:
        """Sandboxes live or lost, by (tenant, state): one grouped query."""
        with self._engine.connect() as db:
            rows = db.execute(
                select(cluster_sandboxes.c.tenant, cluster_sandboxes.c.state, func.count())
                .where(cluster_sandboxes.c.state.in_((LIVE, LOST)))
                .group_by(cluster_sandboxes.c.tenant, cluster_sandboxes.c.state)).all()
        return {(str(tenant), str(state)): int(count) for tenant, state, count in rows}

    def set_state(self, sandbox_ids: list[str], state: str, reason: str | None, *,
                  was: tuple[str, ...]) -> int:
        if not sandbox_ids:
            return 0
        with self._engine.begin() as db:
            done = db.execute(update(cluster_sandboxes).where(
                cluster_sandboxes.c.id.in_(sandbox_ids), cluster_sandboxes.c.state.in_(was))
                .values(state=state, reason=bounded(reason, STOP_REASON_LENGTH),
                        lost_at=None if state == LIVE else cluster_sandboxes.c.lost_at))
        return int(done.rowcount)

    def give_up(self, grace: float) -> list[Placement]:
        """Mark stopped the sandboxes lost longer than ``grace`` seconds; those marked."""
        cutoff = now() - timedelta(seconds=grace)
        with self._engine.begin() as db:
            rows = db.execute(select(cluster_sandboxes).where(and_(
                cluster_sandboxes.c.state == LOST, cluster_sandboxes.c.lost_at < cutoff))).all()
            ids = [r.id for r in rows]
            if ids:
                db.execute(update(cluster_sandboxes).where(
                    cluster_sandboxes.c.id.in_(ids), cluster_sandboxes.c.state == LOST).values(
                    state=STOPPED))
        return [_placement(r) for r in rows]
