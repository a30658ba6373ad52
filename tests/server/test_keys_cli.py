"""``corral keys``: keys work on the data dir's database directly; only hashes are stored."""

from __future__ import annotations

import re
import sqlite3
import stat
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url


def test_create_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner(env={"CORRAL_DATA_DIR": str(tmp_path), "COLUMNS": "200"})
    made = runner.invoke(app, ["keys", "create", "--tenant", "team-a"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("crl_") and len(key) > 40

    store = KeyStore(open_engine(database_url(tmp_path, None)))
    assert store.tenant_of(key) == "team-a"
    (listed,) = store.list()
    shown = runner.invoke(app, ["keys", "list"])
    assert listed.id in shown.stdout and key[-4:] in shown.stdout and key not in shown.stdout

    db = tmp_path / "corral.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with sqlite3.connect(db) as raw:
        dump = "\n".join(raw.iterdump())
    assert key not in dump and key[4:] not in dump

    revoked = runner.invoke(app, ["keys", "revoke", listed.id])
    assert revoked.exit_code == 0, revoked.output
    assert store.tenant_of(key) is None
    assert runner.invoke(app, ["keys", "revoke", "key-000000000000"]).exit_code == 125
    assert runner.invoke(app, ["keys", "create", "--tenant", "Bad Name"]).exit_code == 125


def test_a_key_for_the_e2b_sdk(tmp_path: Path) -> None:
    runner = CliRunner(env={"CORRAL_DATA_DIR": str(tmp_path), "COLUMNS": "200"})
    made = runner.invoke(app, ["keys", "create", "--tenant", "team-a", "--e2b"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert re.fullmatch(r"e2b_[0-9a-f]{64}", key), key
    store = KeyStore(open_engine(database_url(tmp_path, None)))
    assert store.tenant_of(key) == "team-a"
    assert store.tenant_of("e2b_" + "0" * 64) is None


def test_serve_help_names_its_settings() -> None:
    out = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["serve", "--help"]).stdout
    for text in ("--host", "--port", "--data-dir", "CORRAL_PORT", "127.0.0.1", "8470",
                 "corral keys create"):
        assert text in out
