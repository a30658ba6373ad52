"""Tenants and their API keys. Only a key's sha256 is stored; the key is shown once.

A key is ``crl_`` and 43 url-safe characters (256 random bits), so its sha256 is as good a
secret as the key and a lookup by hash compares nothing secret-dependent in Python. A key
made for the e2b SDK is ``e2b_`` and 64 hex digits (256 random bits too): e2b releases
2.25 to 2.45 refuse, before sending it, a key of any other form.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, Executable, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from corral.api.errors import InternalError, InvalidArgumentError, NotFoundError

from ._time import aware, now
from .schema import api_keys, tenants, ui_sessions

KEY_PREFIX = "crl_"
#: The form of a key made for the e2b SDK (``corral keys create --e2b``).
E2B_KEY_PREFIX = "e2b_"
KEY_PREFIXES = (KEY_PREFIX, E2B_KEY_PREFIX)
MAX_KEY_LENGTH = 256
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_KEY_ID = re.compile(r"^key-[0-9a-f]{12}$")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never the key itself."""

    id: str
    tenant: str
    last4: str
    created_at: datetime
    revoked_at: datetime | None
    operator: bool = False

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class KeyRef:
    """Who a request's key says the caller is: the key's id (never the key) and tenant."""

    id: str
    tenant: str
    #: May read every tenant's audit records and the node's pools.
    operator: bool = False


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: ``key`` is its only copy."""

    id: str
    tenant: str
    key: str = ""
    operator: bool = False

    def __repr__(self) -> str:  # never print the key by accident
        return f"NewKey(id={self.id!r}, tenant={self.tenant!r})"


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, tenant: str = "default", *, e2b: bool = False,
               operator: bool = False) -> NewKey:
        """Make a key for ``tenant`` (created if new); ``e2b``: in the form the e2b SDK
        accepts (``e2b_`` and hex), which works everywhere a Corral key does; ``operator``:
        it may also read every tenant's audit records and the node's pools."""
        if not TENANT_NAME.match(tenant):
            raise InvalidArgumentError(
                f"tenant name {tenant!r:.80} must be lowercase letters, digits, '.', '_' or "
                "'-' (at most 64)")
        key = (E2B_KEY_PREFIX + secrets.token_hex(32) if e2b
               else KEY_PREFIX + secrets.token_urlsafe(32))
        key_id = f"key-{secrets.token_hex(6)}"
        with self._engine.begin() as db:
            _add_tenant(db, tenant)
            db.execute(insert(api_keys).values(id=key_id, tenant=tenant, key_hash=key_hash(key),
                                               last4=key[-4:], created_at=now(),
                                               operator=operator))
        return NewKey(id=key_id, tenant=tenant, key=key, operator=operator)

    def ensure_tenant(self, tenant: str) -> None:
        """Add ``tenant`` unless it exists (a cluster node learns its tenants from the
        control plane's calls, never from keys of its own)."""
        if not TENANT_NAME.match(tenant):
            raise InvalidArgumentError(f"tenant name {tenant!r:.80} is not valid")
        with self._engine.begin() as db:
            _add_tenant(db, tenant)

    def list(self) -> list[ApiKey]:
        with self._engine.connect() as db:
            rows = db.execute(select(api_keys).order_by(api_keys.c.created_at)).all()
        return [ApiKey(id=r.id, tenant=r.tenant, last4=r.last4, created_at=aware(r.created_at),
                       revoked_at=aware(r.revoked_at) if r.revoked_at else None,
                       operator=bool(r.operator)) for r in rows]

    def revoke(self, key_id: str) -> None:
        """Revoke a key; it stops working on the server's next request, and so do the
        console sessions it opened (deleted here)."""
        if not _KEY_ID.match(key_id):
            raise NotFoundError(f"no API key {key_id!r:.80}")
        with self._engine.begin() as db:
            done = db.execute(update(api_keys).where(api_keys.c.id == key_id,
                                                     api_keys.c.revoked_at.is_(None))
                              .values(revoked_at=now()))
            if done.rowcount == 0:
                found = db.execute(select(api_keys.c.id).where(api_keys.c.id == key_id)).first()
                if found is None:
                    raise NotFoundError(f"no API key {key_id!r}")
            db.execute(delete(ui_sessions).where(ui_sessions.c.key_id == key_id))

    def tenant_of(self, key: str) -> str | None:
        """The tenant a live key belongs to, or None for an unknown or revoked key."""
        found = self.identify(key)
        return found.tenant if found else None

    def identify(self, key: str) -> KeyRef | None:
        """Which live key ``key`` is (its id and tenant), or None if unknown or revoked."""
        if not key.startswith(KEY_PREFIXES) or len(key) > MAX_KEY_LENGTH:
            return None
        digest = key_hash(key)
        with self._engine.connect() as db:
            row = db.execute(select(api_keys.c.id, api_keys.c.tenant, api_keys.c.key_hash,
                                    api_keys.c.operator)
                             .where(api_keys.c.key_hash == digest,
                                    api_keys.c.revoked_at.is_(None))).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return KeyRef(id=str(row.id), tenant=str(row.tenant), operator=bool(row.operator))


def _add_tenant(db: Connection, tenant: str) -> None:
    """Insert ``tenant`` unless it exists, in one statement.

    ``INSERT ... ON CONFLICT DO NOTHING``: a concurrent transaction adding the same tenant
    makes this one wait for it and then insert nothing, where a look-then-insert would let
    both look, both insert, and one fail on the primary key.
    """
    values = {"name": tenant, "created_at": now()}
    statement: Executable
    if db.dialect.name == "sqlite":
        statement = sqlite.insert(tenants).values(values).on_conflict_do_nothing()
    elif db.dialect.name == "postgresql":
        statement = postgresql.insert(tenants).values(values).on_conflict_do_nothing()
    else:
        raise InternalError(f"the key store supports SQLite and PostgreSQL, not "
                            f"{db.dialect.name}")
    db.execute(statement)
