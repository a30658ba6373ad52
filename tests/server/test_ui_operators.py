"""Operators' keys against a real server: ``corral keys create --operator``, the console's
session says so, ``GET /v1/pools`` and ``GET /v1/audit?all_tenants=true`` are theirs
alone (403 ``permission_denied`` for any other key, or session); and the ``operator``
column is added to a database made before it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from typer.testing import CliRunner

from corral.cli import app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url

from .conftest import Server, assert_error


def test_the_cli_makes_an_operators_key(tmp_path: Path) -> None:
    runner = CliRunner(env={"CORRAL_DATA_DIR": str(tmp_path), "COLUMNS": "200"})
    made = runner.invoke(app, ["keys", "create", "--tenant", "ops", "--operator"])
    assert made.exit_code == 0, made.output
    plain = runner.invoke(app, ["keys", "create", "--tenant", "ops"])
    store = KeyStore(open_engine(database_url(tmp_path, None)))
    operator, other = store.identify(made.stdout.strip()), store.identify(plain.stdout.strip())
    assert operator is not None and operator.operator
    assert other is not None and not other.operator
    assert "(operator)" in made.output
    shown = runner.invoke(app, ["keys", "list"]).stdout
    assert [line for line in shown.splitlines() if operator.id in line][0].count("yes") == 1
    assert "yes" not in [line for line in shown.splitlines() if other.id in line][0]


def test_operator_routes_refuse_other_keys(server: Server) -> None:
    with server.http(server.key) as client:
        assert_error(client.get("/v1/pools"), 403, "permission_denied")
        assert_error(client.get("/v1/audit", params={"all_tenants": "true"}), 403,
                     "permission_denied")
        assert client.get("/v1/audit", params={"all_tenants": "false"}).status_code == 200
    # A session of a key that is not an operator's is refused as the key is.
    with httpx.Client(base_url=server.url, timeout=60.0) as browser:
        body = browser.post("/ui/api/login", json={"key": server.key}).json()
        assert body["operator"] is False
        assert_error(browser.get("/v1/pools", headers={"X-Corral-CSRF": body["csrf"]}), 403,
                     "permission_denied")


def test_an_operator_sees_every_tenants_records_and_the_pools(server: Server) -> None:
    operator = server.keys.create("ops", operator=True).key
    with server.http(server.key) as alpha, server.http(server.other_key) as beta:
        # Something of each tenant's in the log (an audited 404 is enough).
        assert alpha.delete("/v1/sandboxes/sbx-0000000000000000").status_code == 404
        assert beta.delete("/v1/sandboxes/sbx-0000000000000000").status_code == 404
    with httpx.Client(base_url=server.url, timeout=60.0) as browser:
        body = browser.post("/ui/api/login", json={"key": operator}).json()
        assert body["operator"] is True and body["tenant"] == "ops"
        csrf = {"X-Corral-CSRF": body["csrf"]}
        pools = browser.get("/v1/pools", headers=csrf)
        assert pools.status_code == 200 and pools.json() == {"pools": []}  # none configured
        every = browser.get("/v1/audit", params={"all_tenants": "true", "limit": 1000},
                            headers=csrf).json()["events"]
        assert {"alpha", "beta"} <= {e["tenant"] for e in every}
        own = browser.get("/v1/audit", params={"limit": 1000}, headers=csrf).json()["events"]
        assert {e["tenant"] for e in own} == {"ops"}  # its login; without the flag, its own


def test_the_operator_column_is_added_to_an_older_database(tmp_path: Path) -> None:
    db = tmp_path / "corral.db"
    with sqlite3.connect(db) as raw:
        raw.executescript("""
            CREATE TABLE tenants (name VARCHAR(64) PRIMARY KEY, created_at DATETIME NOT NULL);
            CREATE TABLE api_keys (id VARCHAR(32) PRIMARY KEY, tenant VARCHAR(64) NOT NULL
                REFERENCES tenants(name), key_hash VARCHAR(64) NOT NULL UNIQUE,
                last4 VARCHAR(4) NOT NULL, created_at DATETIME NOT NULL, revoked_at DATETIME);
            INSERT INTO tenants VALUES ('old', '2026-01-01 00:00:00');
            INSERT INTO api_keys VALUES ('key-000000000001', 'old', 'x', 'abcd',
                '2026-01-01 00:00:00', NULL);
        """)
    (old,) = KeyStore(open_engine(database_url(tmp_path, None))).list()
    assert old.id == "key-000000000001" and old.operator is False
