"""API keys and tenants: no key, a wrong or revoked key, and one tenant probing another's."""

from __future__ import annotations

import re
import httpx
import pytest

from corral import AuthenticationError, NotFoundError, Sandbox

from .conftest import Server, assert_error


def _routes(sandbox_id: str, command_id: int) -> list[tuple[str, str, dict[str, object]]]:
    """Every route that takes a sandbox id, with a request that would succeed for its owner."""
    base = f"/v1/sandboxes/{sandbox_id}"
    files = f"{base}/files"
    commands = f"{base}/commands"
    return [
        ("GET", base, {}),
        ("POST", f"{base}/timeout", {"json": {"timeout": 600}}),
        ("GET", commands, {}),
        ("POST", commands, {"json": {"cmd": "id"}}),
        ("POST", commands, {"json": {"cmd": "id", "stream": True}}),
        ("POST", commands, {"json": {"cmd": "id", "background": True}}),
        ("POST", f"{commands}/{command_id}/stdin", {"content": b"x"}),
        ("POST", f"{commands}/{command_id}/signal", {"json": {"signal": 15}}),
        ("GET", files, {"params": {"path": "/work/secret.txt"}}),
        ("PUT", files, {"params": {"path": "/work/planted.txt"}, "content": b"x"}),
        ("GET", f"{files}/list", {"params": {"path": "/work"}}),
        ("GET", f"{files}/stat", {"params": {"path": "/work/secret.txt"}}),
        ("GET", f"{files}/exists", {"params": {"path": "/work/secret.txt"}}),
        ("POST", f"{files}/mkdir", {"json": {"path": "/work/x"}}),
        ("POST", f"{files}/rename", {"json": {"src": "/work/secret.txt", "dst": "/work/y"}}),
        ("DELETE", files, {"params": {"path": "/work/secret.txt"}}),
        ("DELETE", base, {}),
    ]


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer crl_wrong"}, {"Authorization": "Basic abc"},
    {"X-API-Key": "nope"}, {"Authorization": "Bearer"},
], ids=["none", "wrong", "basic", "wrong-x-api-key", "empty"])
def test_requests_without_a_valid_key_get_401(server: Server, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, headers=headers) as http:
        for method, path, kwargs in _routes("sbx-0000000000000000", 1) + [
                ("GET", "/v1/sandboxes", {}), ("POST", "/v1/sandboxes", {"json": {}}),
                ("GET", "/no/such/route", {})]:
            assert_error(http.request(method, path, **kwargs), 401,  # type: ignore[arg-type]
                         "unauthenticated")


def test_revoked_key_gets_401(server: Server) -> None:
    with server.http(server.revoked_key) as http:
        message = assert_error(http.get("/v1/sandboxes"), 401, "unauthenticated")
    assert server.revoked_key not in message
    with pytest.raises(AuthenticationError):
        Sandbox.list(url=server.url, api_key=server.revoked_key)


def test_a_key_revoked_while_serving_stops_working(server: Server) -> None:
    fresh = server.keys.create("alpha")
    with server.http(fresh.key) as http:
        assert http.get("/v1/sandboxes").status_code == 200
        server.keys.revoke(fresh.id)
        assert_error(http.get("/v1/sandboxes"), 401, "unauthenticated")


def test_x_api_key_header_works(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": server.key}) as http:
        assert http.get("/v1/sandboxes").status_code == 200


def test_a_key_in_the_e2b_form_works_as_any(server: Server) -> None:
    """``e2b_`` and 64 hex digits (what e2b 2.25-2.45 insist on), in either header; revoked,
    it stops working as any key does."""
    fresh = server.keys.create("alpha", e2b=True)
    assert re.fullmatch(r"e2b_[0-9a-f]{64}", fresh.key)
    for headers in ({"X-API-Key": fresh.key}, {"Authorization": f"Bearer {fresh.key}"}):
        with httpx.Client(base_url=server.url, headers=headers) as http:
            assert http.get("/v1/sandboxes").status_code == 200
    server.keys.revoke(fresh.id)
    with server.http(fresh.key) as http:
        assert_error(http.get("/v1/sandboxes"), 401, "unauthenticated")


def test_another_tenant_sees_nothing(server: Server, default_sandbox: Sandbox) -> None:
    default_sandbox.files.write("/work/secret.txt", "alpha's")
    handle = default_sandbox.commands.start(["sleep", "600"], stdin=True)
    try:
        with server.http(server.other_key) as beta:
            assert beta.get("/v1/sandboxes").json() == {"sandboxes": []}
            listed = beta.get("/v1/sandboxes", params={"metadata.suite": "server"})
            assert listed.json() == {"sandboxes": []}
            for method, path, kwargs in _routes(default_sandbox.id, handle.id):
                response = beta.request(method, path, **kwargs)  # type: ignore[arg-type]
                message = assert_error(response, 404, "not_found")
                assert "alpha" not in message
        with pytest.raises(NotFoundError):
            Sandbox.connect(default_sandbox.id, url=server.url, api_key=server.other_key)
        # Untouched: still running, the file unchanged, nothing planted, the command alive.
        assert default_sandbox.refresh().state == "running"
        assert default_sandbox.files.read("/work/secret.txt") == b"alpha's"
        assert not default_sandbox.files.exists("/work/planted.txt")
        assert handle.pid in [p.pid for p in default_sandbox.commands.list()]
    finally:
        handle.close()


def test_a_stopped_sandbox_stays_hidden_from_other_tenants(server: Server) -> None:
    sb = Sandbox.create("python", timeout=60, **server.sdk())
    sb.kill()
    sb.close()
    with server.http(server.other_key) as beta:
        assert_error(beta.get(f"/v1/sandboxes/{sb.id}"), 404, "not_found")
        assert_error(beta.delete(f"/v1/sandboxes/{sb.id}"), 404, "not_found")
    with server.http(server.key) as alpha:
        assert_error(alpha.post(f"/v1/sandboxes/{sb.id}/commands", json={"cmd": "id"}),
                     410, "sandbox_not_running")
