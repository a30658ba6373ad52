"""Dynamic-sessions map: (tenant, pool, sha256 of the session identifier) -> sandbox id.

Writers race only on a session's first request (or on replacing a stopped sandbox): both
are compare-and-set, so two servers on one database, or two requests on one server, agree
on a single sandbox per session and the loser kills its own.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import ColumnElement, Engine, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ._time import now
from .schema import aca_sessions


def identifier_hash(identifier: bytes) -> str:
    """What the store keeps of a session identifier: never the identifier itself."""
    return hashlib.sha256(identifier).hexdigest()


class AcaSessionStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, tenant: str, pool: str, ident_hash: str) -> str | None:
        """The sandbox serving the session, if one was recorded."""
        with self._engine.connect() as db:
            row = db.execute(select(aca_sessions.c.sandbox_id).where(
                _key(tenant, pool, ident_hash))).first()
        return None if row is None else str(row.sandbox_id)

    def claim(self, tenant: str, pool: str, ident_hash: str, sandbox_id: str,
              replacing: str | None) -> str:
        """Record ``sandbox_id`` for the session unless another writer got there first;
        returns the sandbox the session now has (``sandbox_id`` if the claim won).

        ``replacing`` is the sandbox the caller saw (None: no row): the row changes only
        if it still names that one.
        """
        if replacing is None:
            try:
                with self._engine.begin() as db:
                    db.execute(insert(aca_sessions).values(
                        tenant=tenant, pool=pool, identifier_hash=ident_hash,
                        sandbox_id=sandbox_id, created_at=now()))
                return sandbox_id
            except IntegrityError:
                pass  # someone else's first request won
        else:
            with self._engine.begin() as db:
                done = db.execute(update(aca_sessions).where(
                    _key(tenant, pool, ident_hash),
                    aca_sessions.c.sandbox_id == replacing).values(
                        sandbox_id=sandbox_id, created_at=now()))
            if done.rowcount:
                return sandbox_id
        current = self.get(tenant, pool, ident_hash)
        if current is None:  # deleted between our write and read: claim it as new
            return self.claim(tenant, pool, ident_hash, sandbox_id, None)
        return current

    def forget(self, sandbox_id: str) -> int:
        """Drop every session served by ``sandbox_id`` (it stopped); returns how many."""
        with self._engine.begin() as db:
            done = db.execute(delete(aca_sessions).where(
                aca_sessions.c.sandbox_id == sandbox_id))
        return int(done.rowcount)

    def forget_all_but(self, sandbox_ids: set[str]) -> int:
        """Drop the sessions whose sandbox is not among ``sandbox_ids`` (at start)."""
        with self._engine.begin() as db:
            rows = db.execute(select(aca_sessions.c.sandbox_id).distinct()).all()
            gone = [r.sandbox_id for r in rows if r.sandbox_id not in sandbox_ids]
            for start in range(0, len(gone), 500):
                db.execute(delete(aca_sessions).where(
                    aca_sessions.c.sandbox_id.in_(gone[start:start + 500])))
        return len(gone)


def _key(tenant: str, pool: str, ident_hash: str) -> ColumnElement[bool]:
    return and_(aca_sessions.c.tenant == tenant, aca_sessions.c.pool == pool,
                aca_sessions.c.identifier_hash == ident_hash)
