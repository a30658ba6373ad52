"""The web console's sessions: an opaque id in a cookie -> the API key that logged in.

A session id is 256 random bits (``token_urlsafe(32)``), kept only as its sha256, so the
table is no more use to a reader than the keys' table. Its CSRF token is derived from the
id (:func:`csrf_token`): nothing more to store, and a reader of the table cannot make one.

A session ends at the first of: its idle lifetime without a request, its absolute
lifetime, logout, its key's revocation (the lookup joins the key, and revoking deletes the
key's sessions), or a newer session of the same key pushing it past ``per_key``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, delete, insert, or_, select, update

from ._time import aware, now
from .keys import KeyRef
from .schema import api_keys, ui_sessions

#: What a session id looks like (``token_urlsafe(32)``); anything else is not looked up.
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    """The token a request authenticated by the session's cookie must also carry."""
    return hashlib.sha256(b"corral-csrf\0" + session_id.encode()).hexdigest()


@dataclass(frozen=True)
class SessionPolicy:
    """How long sessions last and how many a key may hold (see ``UiSettings``)."""

    idle: timedelta
    lifetime: timedelta
    per_key: int

    @property
    def touch(self) -> timedelta:
        """How stale ``last_seen_at`` may get before a request writes it again: a write
        per request would be a write per page's dozen calls, for no gain in precision."""
        return min(timedelta(seconds=60), self.idle / 10)


class UiSessionStore:
    def __init__(self, engine: Engine, policy: SessionPolicy) -> None:
        self._engine = engine
        self.policy = policy

    def create(self, key: KeyRef) -> str:
        """A new session of ``key``; returns its id (the cookie's value, never stored).
        Drops the key's oldest sessions past ``per_key``, and every expired session."""
        session_id = secrets.token_urlsafe(32)
        at = now()
        with self._engine.begin() as db:
            db.execute(delete(ui_sessions).where(or_(
                ui_sessions.c.created_at <= at - self.policy.lifetime,
                ui_sessions.c.last_seen_at <= at - self.policy.idle)))
            db.execute(insert(ui_sessions).values(
                id_hash=session_hash(session_id), key_id=key.id, created_at=at,
                last_seen_at=at))
            extra = db.execute(
                select(ui_sessions.c.id_hash).where(ui_sessions.c.key_id == key.id)
                .order_by(ui_sessions.c.created_at.desc(), ui_sessions.c.id_hash)
                .offset(self.policy.per_key)).scalars().all()
            if extra:
                db.execute(delete(ui_sessions).where(ui_sessions.c.id_hash.in_(extra)))
        return session_id

    def find(self, session_id: str) -> KeyRef | None:
        """The live key of a live session, or None (unknown, expired, key revoked)."""
        if not _SESSION_ID.match(session_id):
            return None
        digest = session_hash(session_id)
        at = now()
        with self._engine.begin() as db:
            row = db.execute(
                select(ui_sessions.c.created_at, ui_sessions.c.last_seen_at,
                       api_keys.c.id, api_keys.c.tenant, api_keys.c.operator,
                       api_keys.c.revoked_at)
                .join(api_keys, api_keys.c.id == ui_sessions.c.key_id)
                .where(ui_sessions.c.id_hash == digest)).first()
            if row is None:
                return None
            seen = aware(row.last_seen_at)
            if (row.revoked_at is not None
                    or aware(row.created_at) + self.policy.lifetime <= at
                    or seen + self.policy.idle <= at):
                db.execute(delete(ui_sessions).where(ui_sessions.c.id_hash == digest))
                return None
            if at - seen >= self.policy.touch:
                db.execute(update(ui_sessions).where(ui_sessions.c.id_hash == digest)
                           .values(last_seen_at=at))
        return KeyRef(id=str(row.id), tenant=str(row.tenant), operator=bool(row.operator))

    def delete(self, session_id: str) -> None:
        with self._engine.begin() as db:
            db.execute(delete(ui_sessions).where(
                ui_sessions.c.id_hash == session_hash(session_id)))

    def count(self, key_id: str) -> int:
        with self._engine.connect() as db:
            return len(db.execute(select(ui_sessions.c.id_hash).where(
                ui_sessions.c.key_id == key_id)).all())
