"""The audit log beyond ``/v1``, against a real server: the console's login and logout, a
request its session made (recorded as the key that logged in), the ``/aca`` façade's
executions and files, and ``/mcp`` requests; a failed login is in no tenant's log."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from corral.server.store import open_engine
from corral.server.store.audit import AuditRecord, AuditStore
from corral.server.store.schema import database_url

from .conftest import Server

ACA_QUERY = "api-version=2024-02-02-preview"


def _records(server_dir: Path, request_id: str) -> list[AuditRecord]:
    engine = open_engine(database_url(server_dir, None))
    try:
        return [r for r in AuditStore(engine).list(None, limit=1000)
                if r.request_id == request_id]
    finally:
        engine.dispose()


def _one(server_dir: Path, response: httpx.Response) -> AuditRecord:
    """The one record of the request that got ``response``."""
    (record,) = _records(server_dir, response.headers["x-request-id"])
    return record


def test_console_logins_logouts_and_session_requests(server: Server, server_dir: Path) -> None:
    key = server.keys.create("alpha")
    with httpx.Client(base_url=server.url, timeout=60.0) as browser:
        login = browser.post("/ui/api/login", json={"key": key.key})
        assert login.status_code == 200
        record = _one(server_dir, login)
        assert (record.tenant, record.key_id, record.action, record.outcome, record.status) \
            == ("alpha", key.id, "ui.login", "ok", 200)
        csrf = {"X-Corral-CSRF": login.json()["csrf"]}
        kill = browser.delete("/v1/sandboxes/sbx-0000000000000000", headers=csrf)
        assert kill.status_code == 404
        record = _one(server_dir, kill)
        assert (record.tenant, record.key_id, record.action, record.outcome) == (
            "alpha", key.id, "sandbox.kill", "not_found")
        logout = browser.post("/ui/api/logout", headers=csrf)
        assert logout.status_code == 204
        record = _one(server_dir, logout)
        assert (record.tenant, record.key_id, record.action, record.status) == (
            "alpha", key.id, "ui.logout", 204)
        # A failed login names no tenant: it is in the access log only.
        failed = browser.post("/ui/api/login", json={"key": "crl_" + "0" * 43})
        assert failed.status_code == 401
        assert _records(server_dir, failed.headers["x-request-id"]) == []
        # Nor is a session's read of itself an audited action.
        again = browser.post("/ui/api/login", json={"key": key.key})
        session = browser.get("/ui/api/session")
        assert again.status_code == session.status_code == 200
        assert _records(server_dir, session.headers["x-request-id"]) == []


def test_aca_executions_and_files_are_audited(server: Server, server_dir: Path) -> None:
    query = f"identifier=audit-{uuid.uuid4()}&{ACA_QUERY}"
    with server.http(server.key) as http:
        run = http.post(f"/aca/default/code/execute?{query}",
                        json={"properties": {"code": "import os; os.makedirs('sub')"}})
        assert run.status_code == 200, run.text
        upload = http.post(f"/aca/default/files/upload?{query}",
                           files={"file": ("note.txt", b"hi", "text/plain")})
        assert upload.status_code == 200, upload.text
        listed = http.get(f"/aca/default/files?{query}")
        assert listed.status_code == 200
        read = http.get(f"/aca/default/files/content/note.txt?{query}")
        assert read.status_code == 200 and read.content == b"hi"
        refused = http.post(f"/aca/default/executions?{ACA_QUERY}", json={})
        assert refused.status_code == 400
    actions = [(_one(server_dir, r).action, _one(server_dir, r).outcome)
               for r in (run, upload, listed, read, refused)]
    assert actions == [("aca.execute", "ok"), ("aca.file.upload", "ok"),
                       ("aca.file.list", "ok"), ("aca.file.read", "ok"),
                       ("aca.execute", "invalid_argument")]
    assert all(_one(server_dir, r).tenant == "alpha" for r in (run, upload, read))
    # The session's sandbox, though no path names it; none for the refused one.
    sandboxes = {_one(server_dir, r).sandbox_id for r in (run, upload, listed, read)}
    assert len(sandboxes) == 1 and str(sandboxes.pop()).startswith("sbx-")
    assert _one(server_dir, refused).sandbox_id is None


def test_mcp_requests_are_audited(server: Server, server_dir: Path) -> None:
    headers = {"Accept": "application/json, text/event-stream"}
    with server.http(server.key) as http:
        answer = http.post("/mcp", headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                       "clientInfo": {"name": "audit-test", "version": "1"}}})
        assert answer.status_code == 200, answer.text
        noted = http.post("/mcp", headers=headers, json={
            "jsonrpc": "2.0", "method": "notifications/initialized"})
        assert noted.status_code == 202, noted.text
        refused = http.get("/mcp", headers={"Accept": "application/json"})
        assert refused.status_code == 406
    records = [_one(server_dir, r) for r in (answer, noted, refused)]
    assert [(r.tenant, r.action, r.status) for r in records] == [
        ("alpha", "mcp.request", 200), ("alpha", "mcp.request", 202),
        ("alpha", "mcp.request", 406)]
