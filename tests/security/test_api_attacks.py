"""Category 7, the API, against the real server of ``tests/server`` (its ``server`` fixture:
tenants alpha and beta, a revoked key of alpha's): no key, another tenant's key, forged,
revoked and replayed keys, oversized bodies, deep JSON, and a sandbox reaching for the
server's own port. Floods, slowloris and rate limits have their own tests against a server
with tight limits: ``tests/server/test_hostile.py`` and ``tests/server/test_rate_limits.py``.
Fuzzing of every endpoint: ``test_fuzz_api.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from corral import Sandbox
from tests.server.conftest import Server, server, server_dir  # noqa: F401 - fixtures

PUBLIC = {"/openapi.json"}
FAKE = {"sandbox_id": "sbx-0123456789abcdef", "command_id": "1", "context_id": "default",
        "pool": "default", "name": "x"}


@pytest.fixture(scope="module")
def alphas(server: Server) -> Iterator[Sandbox]:  # noqa: F811 - the imported fixture
    """A sandbox of tenant alpha's, with a file, that every attack must leave unharmed."""
    with Sandbox.create("python", timeout=600, metadata={"role": "api-victim"},
                        **server.sdk()) as sb:
        sb.files.write("/work/state.txt", b"intact")
        yield sb


def _routes(server: Server) -> list[tuple[str, str]]:  # noqa: F811
    spec = httpx.get(f"{server.url}/openapi.json").json()
    found = []
    for template, ops in spec["paths"].items():
        if template in PUBLIC:
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: FAKE.get(m.group(1), "x"), template)
        found += [(method.upper(), path) for method in ops]
    return found


def _client(server: Server, key: str | None, address: str) -> httpx.Client:  # noqa: F811
    """From a loopback address of its own: failed authentications are counted per address."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60,
                        transport=httpx.HTTPTransport(local_address=address))


def _intact(server: Server, sb: Sandbox) -> None:  # noqa: F811
    listed = Sandbox.list(metadata={"role": "api-victim"}, **server.sdk())
    assert [s.id for s in listed] == [sb.id]
    assert sb.files.read("/work/state.txt") == b"intact"
    assert sb.commands.run("echo alive").stdout == "alive\n"


def test_every_route_refuses_a_missing_forged_or_revoked_key(server: Server,  # noqa: F811
                                                             alphas: Sandbox) -> None:
    routes = _routes(server)
    assert len(routes) > 20
    forged = server.key[:-1] + ("A" if server.key[-1] != "A" else "B")
    headers = [{}, {"Authorization": f"Bearer {forged}"},
               {"Authorization": f"Bearer {server.revoked_key}"},
               {"Authorization": "Bearer x"}, {"Authorization": f"Basic {server.key}"},
               {"X-API-Key": forged}, {"Authorization": f"Bearer {server.key.upper()}"}]
    with _client(server, None, "127.0.0.201") as client:
        for method, path in routes:
            for h in headers:
                r = client.request(method, path, headers=h, params={"api_key": server.key})
                assert r.status_code in (401, 429), (method, path, h, r.status_code, r.text)
    _intact(server, alphas)


def test_another_tenant_sees_and_touches_nothing(server: Server,  # noqa: F811
                                                 alphas: Sandbox) -> None:
    sid = alphas.id
    with _client(server, server.other_key, "127.0.0.202") as beta:
        assert sid not in json.dumps(beta.get("/v1/sandboxes").json())
        attempts = [("GET", f"/v1/sandboxes/{sid}", None),
                    ("POST", f"/v1/sandboxes/{sid}/commands", {"cmd": "echo pwned"}),
                    ("GET", f"/v1/sandboxes/{sid}/commands", None),
                    ("GET", f"/v1/sandboxes/{sid}/files?path=/work/state.txt", None),
                    ("PUT", f"/v1/sandboxes/{sid}/files?path=/work/state.txt", None),
                    ("DELETE", f"/v1/sandboxes/{sid}/files?path=/work/state.txt", None),
                    ("POST", f"/v1/sandboxes/{sid}/timeout", {"timeout": 1}),
                    ("POST", f"/v1/sandboxes/{sid}/code", {"code": "1"}),
                    ("DELETE", f"/v1/sandboxes/{sid}", None)]
        for method, path, body in attempts:
            r = beta.request(method, path, json=body) if body is not None else (
                beta.request(method, path, content=b"pwned" if method == "PUT" else None))
            assert r.status_code == 404, (method, path, r.status_code, r.text)
    _intact(server, alphas)


def test_oversized_and_deep_bodies_are_refused(server: Server,  # noqa: F811
                                               alphas: Sandbox) -> None:
    with _client(server, server.key, "127.0.0.203") as alpha:
        big = alpha.post("/v1/sandboxes", content=b'{"image": "' + b"x" * (3 << 20) + b'"}',
                         headers={"Content-Type": "application/json"})
        assert big.status_code == 413, big.text
        deep = b"[" * 200_000 + b"]" * 200_000
        r = alpha.post(f"/v1/sandboxes/{alphas.id}/commands", content=deep,
                       headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 413, 422), r.text
        r = alpha.post(f"/v1/sandboxes/{alphas.id}/commands",
                       json={"cmd": ["echo", "x" * 2_000_000]})
        assert r.status_code in (400, 413), r.text
        assert alpha.get("/v1/sandboxes").status_code == 200
    _intact(server, alphas)


REACH_SERVER = """
import json, socket, sys
out = {}
for host in ("127.0.0.1", "::1", "localhost"):
    try:
        socket.create_connection((host, int(sys.argv[1])), timeout=3).close()
        out[host] = "connected"
    except OSError as exc:
        out[host] = type(exc).__name__
print(json.dumps(out))
"""


def test_a_sandbox_cannot_reach_the_servers_port(server: Server,  # noqa: F811
                                                 alphas: Sandbox) -> None:
    port = server.url.rsplit(":", 1)[1]
    r = alphas.commands.run(["python3", "-c", REACH_SERVER, port])
    assert r.exit_code == 0, r.stderr
    assert "connected" not in json.loads(r.stdout).values(), r.stdout
