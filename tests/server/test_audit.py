"""The audit log: records on each store backend (add, list by tenant and filters, paging,
retention by count and age), and over HTTP: who did what to which sandbox, scoped to the
caller's tenant, never holding the key or request content; ``corral audit`` reads it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from corral import Sandbox
from corral.server.store import open_engine
from corral.server.store.audit import AuditRecord, AuditStore

from .conftest import Server, assert_error

MARKER = "audit-marker-7f3a9c"


def test_records_on_each_backend(store_url: str) -> None:
    engine = open_engine(store_url)
    store = AuditStore(engine)
    old = datetime.now(UTC) - timedelta(days=100)
    store.add(AuditRecord(tenant="alpha", action="sandbox.create", outcome="ok", status=201,
                          key_id="key-000000000001", sandbox_id="sbx-1", at=old))
    store.add(*(AuditRecord(tenant="alpha" if i % 2 else "beta", action="command.run",
                            outcome="ok", status=200, sandbox_id=f"sbx-{i % 3}",
                            request_id="r" * 100) for i in range(10)))
    alpha = store.list("alpha")
    assert len(alpha) == 6 and all(r.tenant == "alpha" for r in alpha)
    assert [r.seq for r in alpha] == sorted((r.seq for r in alpha), reverse=True)
    assert alpha[-1].at == old and alpha[-1].key_id == "key-000000000001"
    assert all(len(r.request_id or "") <= 64 for r in alpha)  # bounded to the column
    assert [r.sandbox_id for r in store.list("alpha", action="sandbox.create")] == ["sbx-1"]
    assert {r.sandbox_id for r in store.list(None, sandbox_id="sbx-2")} == {"sbx-2"}
    page = store.list("alpha", limit=4)
    rest = store.list("alpha", before=page[-1].seq)
    assert [r.seq for r in page + rest] == [r.seq for r in alpha]
    assert store.prune(0, timedelta(days=90)) == 1  # the 100-day-old one
    assert store.prune(3, None) == 7 and store.count() == 3
    assert store.prune(0, None) == 0
    engine.dispose()


def _key_id(server: Server, key: str) -> str:
    found = server.keys.identify(key)
    assert found is not None
    return found.id


def test_who_did_what_to_which_sandbox(server: Server) -> None:
    with Sandbox.create("python", timeout=120, **server.sdk()) as sb:
        sb.commands.run(f"echo {MARKER}", env={"SECRET": MARKER})
        sb.files.write(f"/work/{MARKER}.txt", MARKER)
        sb.files.read(f"/work/{MARKER}.txt")
        sb.files.remove(f"/work/{MARKER}.txt")
        sb.kill()
    with server.http(server.key) as http:
        response = http.get("/v1/audit", params={"sandbox_id": sb.id})
        assert response.status_code == 200, response.text
        events = response.json()["events"]
        assert MARKER not in response.text and server.key not in response.text
        actions = [e["action"] for e in reversed(events)]
        assert actions[:6] == ["sandbox.create", "command.run", "file.write", "file.read",
                               "file.remove", "sandbox.kill"]
        assert set(actions[6:]) <= {"sandbox.kill"}  # leaving the block kills again
        key_id = _key_id(server, server.key)
        assert all(e["tenant"] == "alpha" and e["key_id"] == key_id and e["outcome"] == "ok"
                   and e["sandbox_id"] == sb.id and e["request_id"] for e in events)
        # A failed action is recorded with its error code.
        http.post(f"/v1/sandboxes/{sb.id}/commands", json={"cmd": "id"})
        latest = http.get("/v1/audit", params={"limit": 1}).json()["events"][0]
        assert (latest["action"], latest["outcome"], latest["status"]) == (
            "command.run", "sandbox_not_running", 410)
        assert_error(http.get("/v1/audit", params={"limit": 0}), 400, "invalid_argument")
    with server.http(server.other_key) as beta:  # another tenant sees none of it
        listed = beta.get("/v1/audit", params={"sandbox_id": sb.id})
        assert listed.status_code == 200 and listed.json()["events"] == []
    with server.http() as anonymous:
        assert_error(anonymous.get("/v1/audit"), 401, "unauthenticated")


def test_the_cli_shows_every_tenant(server: Server, server_dir: object) -> None:
    with server.http(server.other_key) as beta:
        beta.delete("/v1/sandboxes/sbx-00000000000000aa")  # audited: not_found
    from corral.cli import app as cli

    runner = CliRunner(env={"CORRAL_DATA_DIR": str(server_dir), "COLUMNS": "200"})
    shown = runner.invoke(cli, ["audit", "--tenant", "beta", "--json", "--limit", "5"])
    assert shown.exit_code == 0, shown.output
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert records and records[0]["action"] == "sandbox.kill"
    assert records[0]["outcome"] == "not_found" and records[0]["tenant"] == "beta"
    table = runner.invoke(cli, ["audit", "--limit", "3"])
    assert table.exit_code == 0 and "sandbox.kill" in table.stdout
