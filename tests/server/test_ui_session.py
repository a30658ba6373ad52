"""The web console's session against a real server: log in with a key (a strict cookie and
a CSRF token), the cookie authenticates API calls only with the token, logout, revoked
keys, idle and absolute lifetimes, sessions per key; and the session table on each store
backend."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from corral.server.settings import UiSettings
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url, ui_sessions
from corral.server.store.ui_sessions import SessionPolicy, UiSessionStore, session_hash

from .conftest import Server, assert_error

LOGIN = "/ui/api/login"


def _login(server: Server, key: str) -> tuple[httpx.Client, dict[str, Any]]:
    """A client holding a console session of ``key`` (no key header), and the answer."""
    client = httpx.Client(base_url=server.url, timeout=60.0)
    answer = client.post(LOGIN, json={"key": key})
    assert answer.status_code == 200, answer.text
    return client, answer.json()


def _csrf(body: dict[str, Any]) -> dict[str, str]:
    return {"X-Corral-CSRF": body["csrf"]}


def _age(server_dir: Path, client: httpx.Client, **columns: timedelta) -> None:
    """Make the client's session look older, as if time had passed for it."""
    sid = client.cookies["corral_session"]
    engine = open_engine(database_url(server_dir, None))
    with engine.begin() as db:
        row = db.execute(ui_sessions.select().where(
            ui_sessions.c.id_hash == session_hash(sid))).one()
        db.execute(update(ui_sessions).where(ui_sessions.c.id_hash == session_hash(sid))
                   .values({name: getattr(row, name) - by for name, by in columns.items()}))


def test_login_answers_a_strict_cookie_and_the_sessions_token(server: Server) -> None:
    client, body = _login(server, server.key)
    with closing(client):
        assert set(body) == {"tenant", "key_id", "operator", "csrf"}
        assert body["tenant"] == "alpha" and body["operator"] is False
        assert body["key_id"].startswith("key-") and len(body["csrf"]) == 64
        answer = client.post(LOGIN, json={"key": server.key})
        cookie = answer.headers["set-cookie"]
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert cookie.startswith("corral_session=")
        assert {"httponly", "samesite", "path"} <= attributes and "secure" not in attributes
        assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
        assert server.key not in answer.text and server.key not in cookie
        assert answer.headers["cache-control"] == "no-store"
        # A reloaded page learns its token again from the cookie alone.
        again = client.get("/ui/api/session")
        assert again.status_code == 200 and again.json() == answer.json()


@pytest.mark.parametrize("body", [{"key": "crl_" + "x" * 43}, {"key": "nope"}])
def test_a_bad_key_is_refused(server: Server, body: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        assert_error(client.post(LOGIN, json=body), 401, "unauthenticated")
        assert "set-cookie" not in client.post(LOGIN, json=body).headers


def test_a_revoked_key_and_malformed_logins_are_refused(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        assert_error(client.post(LOGIN, json={"key": server.revoked_key}), 401,
                     "unauthenticated")
        message = assert_error(client.post(LOGIN, json={"key": "k" * 257}), 400,
                               "invalid_argument")
        assert "k" * 20 not in message  # never the value sent
        assert_error(client.post(LOGIN, json={"key": server.key, "x": 1}), 400,
                     "invalid_argument")
        assert_error(client.post(LOGIN, content=b"key=" + server.key.encode()), 400,
                     "invalid_argument")
        # Another site's form can post text/plain that reads as JSON: no login from it.
        as_json = json.dumps({"key": server.key}).encode()
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                     None):
            headers = {"Content-Type": kind} if kind else {}
            refused = client.post(LOGIN, content=as_json, headers=headers)
            assert_error(refused, 400, "invalid_argument")
            assert "set-cookie" not in refused.headers and server.key not in refused.text
        assert_error(client.post(LOGIN, content=b"{", headers={
            "Content-Type": "application/json"}), 400, "invalid_argument")
        # The key goes in the body only: a query string is not read.
        assert_error(client.post(f"{LOGIN}?key={server.key}"), 400, "invalid_argument")


def test_the_cookie_authenticates_only_with_its_token(server: Server) -> None:
    client, body = _login(server, server.key)
    with closing(client):
        assert_error(client.get("/v1/sandboxes"), 401, "unauthenticated")
        assert_error(client.get("/v1/sandboxes", headers={"X-Corral-CSRF": "0" * 64}), 401,
                     "unauthenticated")
        assert_error(client.get("/v1/sandboxes", headers={"X-Corral-CSRF": ""}), 401,
                     "unauthenticated")
        listed = client.get("/v1/sandboxes", headers=_csrf(body))
        assert listed.status_code == 200, listed.text
        assert client.get("/metrics", headers=_csrf(body)).status_code == 200
        # A token of another session does not open this one.
        other, other_body = _login(server, server.key)
        with closing(other):
            assert_error(client.get("/v1/sandboxes", headers=_csrf(other_body)), 401,
                         "unauthenticated")
        # A request with a key is the key's, whatever cookie it carries.
        beta = client.get("/ui/api/session", headers={"Authorization":
                                                      f"Bearer {server.other_key}"})
        assert_error(beta, 401, "unauthenticated")


def test_the_session_of_another_tenant_sees_only_its_own(server: Server) -> None:
    alpha, alpha_body = _login(server, server.key)
    beta, beta_body = _login(server, server.other_key)
    with closing(alpha), closing(beta):
        made = alpha.post("/v1/sandboxes", headers=_csrf(alpha_body),
                          json={"image": "python", "timeout": 120})
        assert made.status_code == 201, made.text
        sandbox_id = made.json()["id"]
        try:
            assert_error(beta.get(f"/v1/sandboxes/{sandbox_id}", headers=_csrf(beta_body)),
                         404, "not_found")
            ids = [s["id"] for s in beta.get("/v1/sandboxes", headers=_csrf(beta_body))
                   .json()["sandboxes"]]
            assert sandbox_id not in ids
        finally:
            assert alpha.delete(f"/v1/sandboxes/{sandbox_id}",
                                headers=_csrf(alpha_body)).status_code == 204


def test_logout_ends_the_session(server: Server) -> None:
    client, body = _login(server, server.key)
    with closing(client):
        assert_error(client.post("/ui/api/logout"), 401, "unauthenticated")
        done = client.post("/ui/api/logout", headers=_csrf(body))
        assert done.status_code == 204, done.text
        cleared = done.headers["set-cookie"].lower()
        assert cleared.startswith('corral_session=""') and "max-age=0" in cleared
        assert not client.cookies.get("corral_session")
    # The old cookie, kept by someone who copied it, is dead too.
    with httpx.Client(base_url=server.url, timeout=60.0,
                      cookies={"corral_session": done.request.headers["cookie"]
                               .split("=", 1)[1]}) as stale:
        assert_error(stale.get("/ui/api/session"), 401, "unauthenticated")
        assert_error(stale.get("/v1/sandboxes", headers=_csrf(body)), 401,
                     "unauthenticated")


def test_a_key_login_is_no_session(server: Server) -> None:
    with server.http(server.key) as client:
        assert_error(client.get("/ui/api/session"), 401, "unauthenticated")
        assert_error(client.post("/ui/api/logout"), 401, "unauthenticated")


def test_revoking_the_key_ends_its_sessions_at_once(server: Server) -> None:
    key = server.keys.create("alpha")
    client, body = _login(server, key.key)
    with closing(client):
        assert client.get("/v1/sandboxes", headers=_csrf(body)).status_code == 200
        server.keys.revoke(key.id)
        assert_error(client.get("/v1/sandboxes", headers=_csrf(body)), 401,
                     "unauthenticated")
        assert_error(client.get("/ui/api/session"), 401, "unauthenticated")


def test_a_session_ends_when_idle_or_old(server: Server, server_dir: Path) -> None:
    settings = UiSettings()
    idle, client_idle_body = _login(server, server.key)
    old, old_body = _login(server, server.key)
    with closing(idle), closing(old):
        _age(server_dir, idle, last_seen_at=timedelta(seconds=settings.session_idle - 30))
        assert idle.get("/v1/sandboxes", headers=_csrf(client_idle_body)).status_code == 200
        _age(server_dir, idle, last_seen_at=timedelta(seconds=settings.session_idle + 1))
        assert_error(idle.get("/v1/sandboxes", headers=_csrf(client_idle_body)), 401,
                     "unauthenticated")
        # However busy, a session lasts its lifetime at most.
        _age(server_dir, old, created_at=timedelta(seconds=settings.session_lifetime - 30))
        assert old.get("/v1/sandboxes", headers=_csrf(old_body)).status_code == 200
        _age(server_dir, old, created_at=timedelta(seconds=settings.session_lifetime + 1))
        assert_error(old.get("/ui/api/session"), 401, "unauthenticated")


def test_a_key_holds_a_bounded_number_of_sessions(server: Server) -> None:
    key = server.keys.create("alpha").key
    per_key = UiSettings().sessions_per_key
    clients = [_login(server, key) for _ in range(per_key + 1)]
    try:
        first, *rest = clients
        assert_error(first[0].get("/ui/api/session"), 401, "unauthenticated")
        for client, _ in rest:
            assert client.get("/ui/api/session").status_code == 200
    finally:
        for client, _ in clients:
            client.close()


def test_session_settings_are_bounded() -> None:
    assert UiSettings.from_env({}) == UiSettings(session_idle=8 * 3600,
                                                 session_lifetime=24 * 3600,
                                                 sessions_per_key=16)
    assert UiSettings.from_env({"CORRAL_UI_SESSION_IDLE": "1"}).session_idle == 1
    for env in ({"CORRAL_UI_SESSION_IDLE": "0.5"},
                {"CORRAL_UI_SESSION_LIFETIME": str(30 * 24 * 3600 + 1)},
                {"CORRAL_UI_SESSIONS_PER_KEY": "0"}, {"CORRAL_UI_SESSIONS_PER_KEY": "1001"},
                {"CORRAL_UI_SESSION_IDLE": "soon"}):
        with pytest.raises(Exception, match="CORRAL_UI_"):
            UiSettings.from_env(env)


def test_sessions_on_each_backend(store_url: str) -> None:
    engine = open_engine(store_url)
    keys = KeyStore(engine)
    made = keys.create("alpha", operator=True)
    key = keys.identify(made.key)
    assert key is not None and key.operator
    store = UiSessionStore(engine, SessionPolicy(idle=timedelta(hours=1),
                                                 lifetime=timedelta(hours=2), per_key=2))
    first, second, third = (store.create(key) for _ in range(3))
    assert store.find(first) is None and store.count(key.id) == 2
    assert store.find(second) == key and store.find(third) == key
    with engine.connect() as db:
        stored = {r.id_hash for r in db.execute(ui_sessions.select())}
    assert second not in stored and session_hash(second) in stored  # only hashes
    assert store.find("not-a-session-id") is None
    store.delete(second)
    assert store.find(second) is None
    keys.revoke(key.id)
    assert store.count(key.id) == 0 and store.find(third) is None
    engine.dispose()
