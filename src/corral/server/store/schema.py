"""Tables, and the engine that holds them.

Portable across SQLite and PostgreSQL: only Core types, no dialect's SQL. PostgreSQL
enforces ``String`` lengths where SQLite does not, so writers bound free text to the column
(:func:`bounded`). Columns added after a database was first created are added on open
(:func:`_add_missing_columns`): nullable ones only, which every dialect can add in place.
Processes opening one database at once (``corral serve`` and ``corral keys create``, or
several API servers on one PostgreSQL) make its tables one at a time (:func:`_schema_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)

STOP_REASON_LENGTH = 2048
#: PostgreSQL advisory lock held while the tables are made (any constant: "corral").
SCHEMA_LOCK_KEY = 0x636F7272616C

metadata = MetaData()

tenants = Table(
    "tenants", metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), ForeignKey("tenants.name"), nullable=False),
    # sha256 of the key, hex. The key itself is shown once, at creation, and never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("last4", String(4), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # May see every tenant's audit records and the node's pools; NULL (rows from before): no.
    Column("operator", Boolean, nullable=True),
)

#: The web console's sessions (``/ui``): a session id is a cookie's secret, kept only as
#: its sha256, like keys. A session is its key's: the key revoked, it works no more.
ui_sessions = Table(
    "ui_sessions", metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("key_id", String(32), ForeignKey("api_keys.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Index("ix_ui_sessions_key", "key_id", "created_at"),
)

sandboxes = Table(
    "sandboxes", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), ForeignKey("tenants.name"), nullable=False),
    Column("image", String(128), nullable=False),
    Column("runtime", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("resources", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("stop_reason", String(STOP_REASON_LENGTH), nullable=True),
    # Seconds without API activity after which the server stops it; NULL: never.
    Column("idle_timeout", Float, nullable=True),
    # Its network policy as the API writes it; NULL: "none" (and rows from before).
    Column("network", JSON, nullable=True),
    # The secret that opens its exposed ports (shown to its owner, so kept as is: whoever
    # reads this table holds every key hash and tenant anyway); NULL in rows from before.
    Column("port_token", String(64), nullable=True),
    # Its ports reachable without a credential, a list of numbers; NULL: none.
    Column("public_ports", JSON, nullable=True),
    # The volumes it mounts: [{"path", "volume" (the name), "read_only"}]; NULL: none.
    Column("volumes", JSON, nullable=True),
    # Why it is in its state now ("paused: idle for 300 s", ...); NULL: nothing to say.
    Column("state_reason", String(STOP_REASON_LENGTH), nullable=True),
    # When it was paused, while it is; kept for the paused TTL across restarts.
    Column("paused_at", DateTime(timezone=True), nullable=True),
    # What its idle timeout and the end of its lifetime do: "kill" or "pause"; NULL: kill.
    Column("on_idle", String(8), nullable=True),
    Column("on_timeout", String(8), nullable=True),
    # Seconds it may stay paused before it is killed; NULL (rows from before): the server's.
    Column("paused_ttl", Float, nullable=True),
    Index("ix_sandboxes_tenant_state", "tenant", "state"),
)

#: Azure Container Apps dynamic sessions (the ``/aca`` façade): which sandbox serves a
#: tenant's session identifier in a pool. The identifier is kept only as its sha256 (it
#: may be a user's or a conversation's id, of any length); the tenant is part of the key,
#: so two tenants' equal identifiers never meet. A row outlives its sandbox only until
#: the sandbox is seen stopped: the next request with that identifier starts a new one.
aca_sessions = Table(
    "aca_sessions", metadata,
    Column("tenant", String(64), ForeignKey("tenants.name"), primary_key=True),
    Column("pool", String(64), primary_key=True),
    Column("identifier_hash", String(64), primary_key=True),
    Column("sandbox_id", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_aca_sessions_sandbox", "sandbox_id"),
)

#: The audit log: who did what to which sandbox, and how it ended. Never request content.
#: No foreign keys: a record must be writable whatever else is in the database.
audit_log = Table(
    "audit_log", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("action", String(128), nullable=False),
    Column("sandbox_id", String(64), nullable=True),
    Column("outcome", String(32), nullable=False),  # "ok" or the error code
    Column("status", Integer, nullable=False),  # HTTP status; 0: the client left first
    Column("request_id", String(64), nullable=True),
    Column("client", String(64), nullable=True),
    Index("ix_audit_log_tenant_seq", "tenant", "seq"),
    Index("ix_audit_log_at", "at"),
)


#: Tenants' names for built images. The image itself (its manifest and layers) lives on
#: the node, content-addressed and shared: two tenants' rows may name one id, and neither
#: learns of the other's. An unnamed build's row is named by its id.
images = Table(
    "images", metadata,
    Column("tenant", String(64), ForeignKey("tenants.name"), primary_key=True),
    Column("name", String(129), primary_key=True),
    Column("id", String(71), nullable=False),  # sha256:<64 hex>
    Column("size_bytes", BigInteger, nullable=False),
    Column("build", String(36), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_images_tenant_id", "tenant", "id"),
)

#: Tenants' volumes: a name for a volume of the node's (its id), with its quota.
volumes = Table(
    "volumes", metadata,
    Column("tenant", String(64), ForeignKey("tenants.name"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("size_mib", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: Snapshots: a memory one lives on the node (``node_id``); a files-only one is an image of
#: the tenant's (``image``, an image id, named in ``images`` by its id).
snapshots = Table(
    "snapshots", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), ForeignKey("tenants.name"), nullable=False),
    Column("name", String(64), nullable=True),
    Column("sandbox_id", String(32), nullable=False),
    Column("memory", Integer, nullable=False),
    Column("image", String(129), nullable=False),
    Column("runtime", String(32), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("snapshots_by_tenant", "tenant", "created_at"),
)

#: Image builds, kept after they end with the tail of their log.
builds = Table(
    "builds", metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(64), ForeignKey("tenants.name"), nullable=False),
    Column("name", String(129), nullable=True),
    Column("state", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("image", String(71), nullable=True),
    Column("error", String(STOP_REASON_LENGTH), nullable=True),
    Column("log", Text, nullable=True),
    Index("ix_builds_tenant_started", "tenant", "started_at"),
)


#: Cluster mode (:mod:`corral.cluster`): the nodes the control plane knows, with the
#: operator's say on each (cordoned, draining), shared by every API server.
cluster_nodes = Table(
    "cluster_nodes", metadata,
    Column("name", String(64), primary_key=True),
    Column("url", String(256), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # "ready" or "lost"
    Column("reason", String(STOP_REASON_LENGTH), nullable=True),
    Column("cordoned", Boolean, nullable=False),
    Column("draining", Boolean, nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("lost_at", DateTime(timezone=True), nullable=True),
)

#: Cluster mode: which node runs each sandbox, and whose it is. The sandbox's own record is
#: the node's; this row is what the control plane needs without asking the node: where to
#: send its calls, and what to say of it once its node is lost (``info``: its description
#: when it was created, shown with ``state`` "lost").
cluster_sandboxes = Table(
    "cluster_sandboxes", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("node", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # "live", "lost" or "stopped"
    Column("reason", String(STOP_REASON_LENGTH), nullable=True),
    Column("info", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("lost_at", DateTime(timezone=True), nullable=True),
    Index("ix_cluster_sandboxes_node_state", "node", "state"),
    Index("ix_cluster_sandboxes_tenant_state", "tenant", "state"),
)


def database_url(data_dir: Path, url: str | None) -> str:
    """``url`` if given, else SQLite in ``data_dir``."""
    return url or f"sqlite:///{data_dir / 'corral.db'}"


def open_engine(url: str) -> Engine:
    """An engine on ``url`` with every table created. SQLite gets WAL and a busy timeout,
    so ``corral keys`` can write while the server runs."""
    sqlite = url.startswith("sqlite")
    # A server restarted under the pool would otherwise hand out dead connections once.
    engine = create_engine(url, pool_pre_ping=not sqlite)
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
        if engine.url.database and engine.url.database != ":memory:":
            # Key hashes and tenants' metadata: readable by root alone.
            path = Path(engine.url.database)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    with _schema_lock(engine):
        metadata.create_all(engine)
        _add_missing_columns(engine)
    return engine


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """Held while this process makes the tables, so that two processes opening a new
    database at once do not both find a table missing and both make it (the second would
    fail with "table ... already exists"): an advisory lock on PostgreSQL, a ``flock`` on
    ``<database>.lock`` beside a SQLite file (never on the database file itself, whose
    POSIX locks SQLite owns)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as db:
            db.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            db.commit()
            try:
                yield
            finally:
                db.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
                db.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def bounded(text: str | None, length: int) -> str | None:
    """``text`` cut to a column of ``length`` characters (PostgreSQL refuses longer)."""
    if text is None or len(text) <= length:
        return text
    return text[:length - 1] + "…"


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a database made by an older Corral lacks."""
    present = inspect(engine)
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as db:
        for table in metadata.sorted_tables:
            have = {c["name"] for c in present.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                if not column.nullable:
                    raise RuntimeError(
                        f"database table {table.name} lacks column {column.name}, which "
                        "cannot be added in place; migrate it by hand")
                kind = column.type.compile(dialect=engine.dialect)
                db.execute(text(f"ALTER TABLE {quote(table.name)} "
                                f"ADD COLUMN {quote(column.name)} {kind}"))


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
