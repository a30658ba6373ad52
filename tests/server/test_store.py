"""The store on each backend (SQLite, and PostgreSQL when CORRAL_TEST_DATABASE_URL is set):
keys (made concurrently too), sandbox records, timestamps, JSON, bounded text, and upgrading
an older schema."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy

from corral.api.errors import InvalidArgumentError, NotFoundError
from corral.server.services.sandboxes import RESTART_REASON
from corral.server.store import KeyStore, SandboxRecord, SandboxStore, open_engine
from corral.server.store.schema import STOP_REASON_LENGTH


def _record(sandbox_id: str, tenant: str = "alpha", state: str = "running",
            **changes: object) -> SandboxRecord:
    now = datetime.now(UTC).replace(microsecond=123456)
    fields: dict[str, object] = dict(
        id=sandbox_id, tenant=tenant, image="python", runtime="gvisor", state=state,
        resources={"memory": 512, "cpus": 1.5, "pids": None}, metadata={"k": "v", "é": "ü"},
        created_at=now, expires_at=now + timedelta(seconds=300), stop_reason=None)
    fields.update(changes)
    return SandboxRecord(**fields)  # type: ignore[arg-type]


OPEN = """
import sys
from corral.server.store import open_engine
sys.stdin.readline()  # everyone started: open at once
try:
    open_engine(sys.argv[1])
    print("ok")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}"[:300])
"""


def test_processes_opening_a_new_database_at_once_all_get_it(store_url: str) -> None:
    """``corral serve`` and ``corral keys create`` (or several API servers) opening a new
    database together: each makes the tables or finds them made, none fails on a table
    another has just made."""
    children = [subprocess.Popen([sys.executable, "-c", OPEN, store_url], text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                for _ in range(4)]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    said = [child.communicate(timeout=120)[0].strip() for child in children]
    assert said == ["ok"] * 4
    tables = sqlalchemy.inspect(open_engine(store_url)).get_table_names()
    assert {"tenants", "api_keys", "sandboxes"} <= set(tables)


def test_keys(store_url: str) -> None:
    keys = KeyStore(open_engine(store_url))
    made = keys.create("alpha")
    other = keys.create("alpha")  # the tenant exists now: a second key, no second tenant
    assert keys.tenant_of(made.key) == keys.tenant_of(other.key) == "alpha"
    assert keys.tenant_of(made.key + "x") is None and keys.tenant_of("nope") is None
    keys.revoke(made.id)
    keys.revoke(made.id)  # revoking twice is not an error
    assert keys.tenant_of(made.key) is None and keys.tenant_of(other.key) == "alpha"
    listed = {k.id: k for k in keys.list()}
    assert listed[made.id].revoked and not listed[other.id].revoked
    assert listed[made.id].created_at.tzinfo is not None
    assert listed[made.id].last4 == made.key[-4:]
    with pytest.raises(NotFoundError):
        keys.revoke("key-000000000000")
    with pytest.raises(InvalidArgumentError):
        keys.create("Not A Tenant")


def test_concurrent_keys_for_a_new_tenant_make_one_tenant(store_url: str) -> None:
    engine = open_engine(store_url)
    parties = 4
    # Every create reaches its tenant insert before any of them runs it: the interleaving
    # in which a look-then-insert has all of them find no tenant and all but one fail.
    at_insert = threading.Barrier(parties, timeout=30)

    def hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TENANTS"):
            at_insert.wait()

    sqlalchemy.event.listen(engine, "before_cursor_execute", hold)
    keys = KeyStore(engine)
    with ThreadPoolExecutor(parties) as pool:
        made = list(pool.map(lambda _: keys.create("gamma"), range(parties)))
    sqlalchemy.event.remove(engine, "before_cursor_execute", hold)

    assert len({k.key for k in made}) == parties
    assert all(keys.tenant_of(k.key) == "gamma" for k in made)
    with engine.connect() as db:
        names = db.execute(sqlalchemy.text("SELECT name FROM tenants")).scalars().all()
    assert names == ["gamma"]
    assert keys.create("gamma").tenant == "gamma"  # and later ones still work
    engine.dispose()


def test_sandbox_records(store_url: str) -> None:
    engine = open_engine(store_url)
    KeyStore(engine).create("alpha")
    KeyStore(engine).create("beta")
    store = SandboxStore(engine)
    first = _record("sbx-0000000000000001", idle_timeout=30.0)
    store.add(first)
    store.add(_record("sbx-0000000000000002", created_at=first.created_at
                      + timedelta(seconds=1), metadata={"k": "w"}))
    store.add(_record("sbx-0000000000000003", tenant="beta"))

    got = store.get(first.id)
    assert got == first  # JSON, aware timestamps (microseconds kept), idle timeout
    assert store.get("sbx-ffffffffffffffff") is None
    assert [r.id[-1] for r in store.list("alpha")] == ["2", "1"]  # newest first
    assert [r.id[-1] for r in store.list("alpha", {"k": "v"})] == ["1"]
    assert [r.id[-1] for r in store.list("alpha", {"é": "ü"})] == ["1"]
    assert [r.id[-1] for r in store.list("alpha", limit=1)] == ["2"]
    assert [r.id[-1] for r in store.list("beta")] == ["3"]

    later = first.expires_at + timedelta(hours=1)
    store.set_state(first.id, "stopped", "x" * 10_000, later)
    stopped = store.get(first.id)
    assert stopped is not None and stopped.state == "stopped" and stopped.expires_at == later
    # PostgreSQL refuses text longer than its column; the store cuts it.
    assert stopped.stop_reason is not None and len(stopped.stop_reason) == STOP_REASON_LENGTH
    assert [r.id[-1] for r in store.list("alpha", state="running")] == ["2"]

    assert store.stop_all_active(RESTART_REASON) == 2  # alpha's second and beta's
    assert {(r.id[-1], r.state, r.stop_reason == RESTART_REASON)
            for r in store.list("alpha") + store.list("beta")} == {
        ("1", "stopped", False), ("2", "stopped", True), ("3", "stopped", True)}
    assert store.stop_all_active(RESTART_REASON) == 0


def test_records_need_a_known_tenant(store_url: str) -> None:
    store = SandboxStore(open_engine(store_url))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        store.add(_record("sbx-0000000000000001", tenant="nobody"))


#: Columns added to ``sandboxes`` after its first release, with what an older row reads as.
LATER_COLUMNS = {"idle_timeout": None, "state_reason": None, "paused_at": None,
                 "on_idle": "kill", "on_timeout": "kill", "paused_ttl": None}


def test_an_older_database_gains_the_new_columns(store_url: str) -> None:
    """A database made before the later columns existed is upgraded in place on open."""
    engine = open_engine(store_url)
    KeyStore(engine).create("alpha")
    SandboxStore(engine).add(_record("sbx-0000000000000001"))
    with engine.begin() as db:
        for column in LATER_COLUMNS:
            db.execute(sqlalchemy.text(f"ALTER TABLE sandboxes DROP COLUMN {column}"))
    engine.dispose()

    upgraded = open_engine(store_url)
    store = SandboxStore(upgraded)
    old = store.get("sbx-0000000000000001")
    assert old is not None
    assert {column: getattr(old, column) for column in LATER_COLUMNS} == LATER_COLUMNS
    paused_at = datetime.now(UTC).replace(microsecond=0)
    newer = {"idle_timeout": 5.0, "state_reason": "paused: by the API",
             "paused_at": paused_at, "on_idle": "pause", "on_timeout": "pause",
             "paused_ttl": 60.0}
    store.add(_record("sbx-0000000000000002", state="paused", **newer))
    new = store.get("sbx-0000000000000002")
    assert new is not None and {column: getattr(new, column) for column in newer} == newer
    open_engine(store_url).dispose()  # opening an up-to-date database changes nothing
    upgraded.dispose()


def test_a_state_write_keeps_why_and_since_when(store_url: str) -> None:
    engine = open_engine(store_url)
    KeyStore(engine).create("alpha")
    store = SandboxStore(engine)
    first = _record("sbx-0000000000000001")
    store.add(first)
    paused_at = datetime.now(UTC).replace(microsecond=654321)
    store.set_state(first.id, "paused", None, first.expires_at, "x" * 10_000, paused_at)
    paused = store.get(first.id)
    assert paused is not None and paused.paused_at == paused_at
    assert paused.state_reason is not None and len(paused.state_reason) == STOP_REASON_LENGTH
    store.set_state(first.id, "running", None, first.expires_at, "resumed: by a command")
    running = store.get(first.id)
    assert running is not None and running.paused_at is None
    assert running.state_reason == "resumed: by a command"
    store.set_state(first.id, "paused", None, first.expires_at, "paused: by the API",
                    paused_at)
    assert store.stop_all_active(RESTART_REASON) == 1
    gone = store.get(first.id)
    assert gone is not None and (gone.state, gone.paused_at) == ("stopped", None)
    engine.dispose()
