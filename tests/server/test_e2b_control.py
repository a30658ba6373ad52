"""The E2B-compatible control plane under ``/e2b``, over HTTP: each route's status and body
as the e2b SDKs parse them (docs/research/e2b-protocol.md §4), E2B's error body
``{"code", "message"}`` on every refusal (the middleware's included), tenants kept apart,
list filters and pages, the audit trail, and the switch that turns the API off.

The real SDKs run against the same server in test_e2b_sdk.py.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from corral.node import NodeSettings
from corral.server import ServerSettings, create_app

from ._guarded import LIMITS, guarded_server
from .conftest import Server, assert_error

E2B = "/e2b"
SANDBOX_KEYS = {"templateID", "sandboxID", "clientID", "envdVersion", "alias",
                "envdAccessToken", "trafficAccessToken", "domain"}
LISTED_KEYS = {"templateID", "sandboxID", "clientID", "alias", "startedAt", "endAt",
               "cpuCount", "memoryMB", "diskSizeMB", "state", "envdVersion", "metadata"}


def e2b_client(server: Server, key: str | None = None) -> httpx.Client:
    """A client as the SDK is one: the key in ``X-API-Key``, the mount as base URL."""
    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=server.url + E2B, headers=headers, timeout=120.0)


def assert_e2b_error(response: httpx.Response, status: int) -> str:
    """The answer is exactly E2B's error body with this status; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == status, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


@contextlib.contextmanager
def e2b_sandbox(server: Server, template: str = "base") -> Iterator[dict[str, Any]]:
    """A sandbox of tenant alpha's made through E2B's create (killed after): the create
    answer, with its id and tokens."""
    with e2b_client(server, server.key) as control:
        created = control.post("/v2/sandboxes", json={"templateID": template})
        assert created.status_code == 201, created.text
        body: dict[str, Any] = created.json()
        try:
            yield body
        finally:
            control.delete(f"/sandboxes/{body['sandboxID']}")


@pytest.fixture
def e2b(server: Server) -> Iterator[httpx.Client]:
    with e2b_client(server, server.keys.create("alpha", e2b=True).key) as client:
        yield client


def _create(client: httpx.Client, path: str = "/v2/sandboxes", **fields: Any
            ) -> dict[str, Any]:
    response = client.post(path, json={"templateID": "base", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("path", ["/sandboxes", "/v2/sandboxes"])
def test_create_get_timeout_kill(e2b: httpx.Client, server: Server, path: str) -> None:
    created = _create(e2b, path, timeout=300, metadata={"who": "e2b-test"},
                      envVars={"GREETING": "hi there"}, secure=True,
                      allow_internet_access=True)
    sid = created["sandboxID"]
    try:
        assert set(created) == SANDBOX_KEYS
        assert created["templateID"] == "base" and created["clientID"] == "corral"
        assert created["envdVersion"] == "0.6.4"
        port = server.url.rsplit(":", 1)[1]
        assert created["domain"] == f"localhost:{port}"
        assert created["envdAccessToken"] != created["trafficAccessToken"]
        info = e2b.get(f"/sandboxes/{sid}")
        assert info.status_code == 200, info.text
        detail = info.json()
        assert LISTED_KEYS <= set(detail)
        assert (detail["templateID"], detail["state"], detail["metadata"]) == (
            "python", "running", {"who": "e2b-test"})
        assert detail["envdAccessToken"] == created["envdAccessToken"]
        assert detail["lifecycle"] == {"autoResume": True, "onTimeout": "kill"}
        assert all(isinstance(detail[k], int) and detail[k] > 0
                   for k in ("cpuCount", "memoryMB", "diskSizeMB"))
        ends = datetime.fromisoformat(detail["endAt"])
        # the env reached the sandbox (seen through Corral's own API)
        with server.http(server.key) as http:
            ran = http.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "echo $GREETING"})
            assert ran.json()["stdout"] == "hi there\n", ran.text
        done = e2b.post(f"/sandboxes/{sid}/timeout", json={"timeout": 60})
        assert done.status_code == 204 and done.content == b""
        shorter = datetime.fromisoformat(e2b.get(f"/sandboxes/{sid}").json()["endAt"])
        assert shorter < ends
        assert e2b.get(f"/sandboxes/{sid}/metrics",
                       params={"start": 0, "end": 1}).json() == []
        with server.http(server.key) as http:
            http.post(f"/v1/sandboxes/{sid}/commands", json={
                "cmd": "head -c 1048576 /dev/zero > /work/mib"})
            # Samples the server takes on its own, several by now (waited for, bounded).
            samples = _metrics_until(e2b, sid, lambda ms: len(ms) >= 3 and ms[-1][
                "diskUsed"] >= 1024 * 1024)
            stamps = [m["timestamp"] for m in samples]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
            last = samples[-1]
            assert last["cpuCount"] == 1 and last["memTotal"] > last["memUsed"] > 0
            assert last["diskTotal"] >= last["diskUsed"] >= 1024 * 1024
            # CPU burnt shows in a sample taken while it burnt.
            burn = http.post(f"/v1/sandboxes/{sid}/commands", json={
                "cmd": ["timeout", "2", "sh", "-c", "while :; do :; done"]})
            assert burn.json()["exit_code"] == 124, burn.text
            busy = [m for m in e2b.get(f"/sandboxes/{sid}/metrics").json()
                    if m["cpuUsedPct"] > 10]
            assert busy and all(0 < m["cpuUsedPct"] <= 100 for m in busy)
            # A range in Unix seconds selects the samples of those seconds.
            second = busy[0]["timestampUnix"]
            ranged = e2b.get(f"/sandboxes/{sid}/metrics",
                             params={"start": second, "end": second}).json()
            assert busy[0] in ranged
            assert all(m["timestampUnix"] == second for m in ranged)
    finally:
        killed = e2b.delete(f"/sandboxes/{sid}")
    assert killed.status_code == 204, killed.text
    assert_e2b_error(e2b.get(f"/sandboxes/{sid}"), 404)
    assert_e2b_error(e2b.delete(f"/sandboxes/{sid}"), 404)  # the SDK's kill: False
    assert_e2b_error(e2b.post(f"/sandboxes/{sid}/timeout", json={"timeout": 60}), 404)


def test_auto_pause_and_snapshot_free_templates_map_to_corral(e2b: httpx.Client,
                                                              server: Server) -> None:
    # (code-interpreter-v1's image depends on what is built: test_e2b_interpreter.py.)
    created = _create(e2b, templateID="base", autoPause=True)
    sid = created["sandboxID"]
    try:
        with server.http(server.key) as http:
            info = http.get(f"/v1/sandboxes/{sid}").json()
        assert (info["image"], info["on_timeout"]) == ("python", "pause")
        assert e2b.get(f"/sandboxes/{sid}").json()["lifecycle"]["onTimeout"] == "pause"
    finally:
        e2b.delete(f"/sandboxes/{sid}")
    missing = assert_e2b_error(e2b.post("/v2/sandboxes", json={
        "templateID": f"no-such-image-{uuid.uuid4().hex[:8]}"}), 404)
    assert "image" in missing
    assert_e2b_error(e2b.post("/v2/sandboxes", json={"templateID": "base",
                                                      "mcp": {"x": {}}}), 400)
    assert_e2b_error(e2b.post("/v2/sandboxes", json={"templateID": "base",
                                                      "timeout": 10 ** 9}), 400)


def test_pause_and_connect(e2b: httpx.Client) -> None:
    created = _create(e2b)
    sid = created["sandboxID"]
    try:
        connected = e2b.post(f"/sandboxes/{sid}/connect", json={"timeout": 300})
        assert connected.status_code == 200, connected.text  # it was running
        assert connected.json()["envdAccessToken"] == created["envdAccessToken"]
        assert e2b.post(f"/sandboxes/{sid}/pause", json={"memory": True}).status_code == 204
        assert e2b.get(f"/sandboxes/{sid}").json()["state"] == "paused"
        assert_e2b_error(e2b.post(f"/sandboxes/{sid}/pause", json={}), 409)
        paused = e2b.get("/v2/sandboxes", params={"state": "paused"}).json()
        assert sid in [s["sandboxID"] for s in paused]
        resumed = e2b.post(f"/v2/sandboxes/{sid}/connect", json={})
        assert resumed.status_code == 201, resumed.text  # it was paused: resumed
        assert set(resumed.json()) == SANDBOX_KEYS
        assert resumed.json()["trafficAccessToken"] == created["trafficAccessToken"]
        assert e2b.get(f"/sandboxes/{sid}").json()["state"] == "running"
    finally:
        e2b.delete(f"/sandboxes/{sid}")
    assert_e2b_error(e2b.post(f"/v2/sandboxes/{sid}/connect", json={}), 404)
    assert_e2b_error(e2b.post(f"/sandboxes/{sid}/pause", json={}), 404)


def test_list_filters_by_metadata_and_state_and_pages(e2b: httpx.Client) -> None:
    suite = f"run {uuid.uuid4().hex[:8]}"  # a space: the SDK's double encoding matters
    ids = [_create(e2b, metadata={"suite": suite, "n": str(n)})["sandboxID"]
           for n in range(3)]
    try:
        # as the SDK sends it: k=v with each part percent-encoded, then the whole encoded
        wanted = f"{quote('suite')}={quote(suite)}"
        first = e2b.get("/v2/sandboxes", params={"metadata": wanted, "limit": 2})
        assert first.status_code == 200, first.text
        token = first.headers["x-next-token"]
        second = e2b.get("/v2/sandboxes", params={"metadata": wanted, "limit": 2,
                                                  "nextToken": token})
        assert "x-next-token" not in second.headers
        pages = first.json() + second.json()
        assert [s["sandboxID"] for s in pages] == ids  # by start time, none twice
        assert all(set(s) == LISTED_KEYS and s["state"] == "running" for s in pages)
        newest_first = e2b.get("/v2/sandboxes", params={"metadata": wanted,
                                                        "order": "desc"}).json()
        assert [s["sandboxID"] for s in newest_first] == ids[::-1]
        one = e2b.get("/v2/sandboxes", params={
            "metadata": f"{wanted}&n=1", "state": "running,paused"}).json()
        assert [s["sandboxID"] for s in one] == [ids[1]]
        assert e2b.get("/v2/sandboxes", params={"metadata": wanted,
                                                "state": "paused"}).json() == []
        e2b.delete(f"/sandboxes/{ids[0]}")
        left = e2b.get("/v2/sandboxes", params={"metadata": wanted}).json()
        assert [s["sandboxID"] for s in left] == ids[1:]  # a killed one is gone
        for bad in ({"state": "stopped"}, {"order": "sideways"}, {"nextToken": "nope"},
                    {"limit": 0}):
            assert_e2b_error(e2b.get("/v2/sandboxes", params=bad), 400)
    finally:
        for sid in ids:
            e2b.delete(f"/sandboxes/{sid}")


def _metrics_until(e2b: httpx.Client, sid: str, done: Callable[[list[dict[str, Any]]], bool],
                   deadline: float = 60.0) -> list[dict[str, Any]]:
    """The sandbox's metrics once ``done`` holds of them; fails after ``deadline`` s."""
    end = time.monotonic() + deadline
    while True:
        samples: list[dict[str, Any]] = e2b.get(f"/sandboxes/{sid}/metrics").json()
        if done(samples):
            return samples
        assert time.monotonic() < end, f"metrics never got there: {samples[-3:]}"
        time.sleep(0.1)


def test_another_tenants_sandbox_is_not_found(e2b: httpx.Client, server: Server) -> None:
    sid = _create(e2b, metadata={"owner": "alpha"})["sandboxID"]
    try:
        with e2b_client(server, server.other_key) as beta:
            for response in (beta.get(f"/sandboxes/{sid}"),
                             beta.delete(f"/sandboxes/{sid}"),
                             beta.post(f"/sandboxes/{sid}/timeout", json={"timeout": 5}),
                             beta.post(f"/sandboxes/{sid}/pause", json={}),
                             beta.post(f"/sandboxes/{sid}/connect", json={"timeout": 5}),
                             beta.post(f"/v2/sandboxes/{sid}/connect", json={}),
                             beta.get(f"/sandboxes/{sid}/metrics")):
                assert_e2b_error(response, 404)
            listed = beta.get("/v2/sandboxes").json()
            assert sid not in [s["sandboxID"] for s in listed]
        assert e2b.get(f"/sandboxes/{sid}").json()["state"] == "running"
    finally:
        e2b.delete(f"/sandboxes/{sid}")


def test_every_refusal_has_e2b_error_body(e2b: httpx.Client, server: Server) -> None:
    with e2b_client(server) as anonymous:
        assert_e2b_error(anonymous.get("/v2/sandboxes"), 401)
    with e2b_client(server, server.revoked_key) as revoked:
        assert_e2b_error(revoked.get("/v2/sandboxes"), 401)
    with e2b_client(server, "e2b_" + "0" * 64) as unknown:
        assert_e2b_error(unknown.post("/v2/sandboxes", json={"templateID": "base"}), 401)
    assert_e2b_error(e2b.get("/no/such/route"), 404)
    assert_e2b_error(e2b.get("/sandboxes/sbx-0000000000000000"), 404)
    assert_e2b_error(e2b.get("/sandboxes/" + "x" * 300), 404)
    assert_e2b_error(e2b.put("/v2/sandboxes", json={}), 405)
    assert_e2b_error(e2b.post("/v2/sandboxes", json={}), 400)  # no templateID
    assert_e2b_error(e2b.post("/v2/sandboxes", content=b"{not json",
                              headers={"Content-Type": "application/json"}), 400)
    too_big = b'{"templateID": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert_e2b_error(e2b.post("/v2/sandboxes", content=too_big,
                              headers={"Content-Type": "application/json"}), 413)
    # Snapshots, fork and network: what has no Corral equivalent, and bounds.
    assert "only snapshots" in assert_e2b_error(e2b.delete("/templates/base"), 404)
    assert_e2b_error(e2b.delete("/templates/snap-0000000000000000"), 404)
    assert_e2b_error(e2b.get("/snapshots", params={"nextToken": "snap-nope"}), 400)
    assert_e2b_error(e2b.post("/sandboxes/sbx-0000000000000000/fork", json={"count": 2}), 404)
    assert_e2b_error(e2b.post("/v2/sandboxes", json={
        "templateID": "base", "network": {"dnsServers": ["192.0.2.53"]}}), 400)
    assert_e2b_error(e2b.post("/v2/sandboxes", json={
        "templateID": "snap-0000000000000000", "envVars": {"A": "1"}}), 400)
    # Corral's own API keeps its own error body.
    with server.http() as plain:
        assert_error(plain.get("/v1/sandboxes"), 401, "unauthenticated")


def test_rate_limited_e2b_calls_get_429_in_e2b_shape(python_image: str) -> None:
    with guarded_server(python_image, replace(LIMITS, rate=0.2, burst=3)) as slow:
        with httpx.Client(base_url=slow.url + E2B, timeout=30.0,
                          headers={"X-API-Key": slow.key()}) as client:
            statuses = [client.get("/v2/sandboxes") for _ in range(6)]
        limited = [r for r in statuses if r.status_code != 200]
        assert limited, "the key was never limited"
        assert_e2b_error(limited[0], 429)
        assert int(limited[0].headers["retry-after"]) >= 1


def test_e2b_calls_are_audited(e2b: httpx.Client, server: Server) -> None:
    sid = _create(e2b)["sandboxID"]
    e2b.post(f"/sandboxes/{sid}/timeout", json={"timeout": 120})
    e2b.delete(f"/sandboxes/{sid}")
    with server.http(server.key) as http:
        events = http.get("/v1/audit", params={"sandbox_id": sid}).json()["events"]
    assert [e["action"] for e in reversed(events)] == [
        "sandbox.create", "sandbox.set_timeout", "sandbox.kill"]
    assert all(e["tenant"] == "alpha" and e["outcome"] == "ok" for e in events)


def test_the_e2b_api_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    monkeypatch.setenv("CORRAL_E2B", "0")
    settings = ServerSettings.from_env(data_dir=tmp_path)
    assert settings.e2b is False
    monkeypatch.delenv("CORRAL_E2B")
    assert ServerSettings.from_env(data_dir=tmp_path).e2b is True
    app = create_app(replace(settings, node=NodeSettings(data_dir=tmp_path,
                                                         image_dir=tmp_path / "images")))
    assert not any(getattr(r, "path", "").startswith(E2B) for r in app.routes)


def test_host_based_urls_reach_the_same_api(e2b: httpx.Client, server: Server) -> None:
    """What SDKs that know only ``E2B_DOMAIN`` send: the API at ``api.<domain>``, envd at
    ``49983-<id>.<domain>``, with no mount in the path (the server's domain: localhost)."""
    port = server.url.rsplit(":", 1)[1]
    key = e2b.headers["X-API-Key"]
    made = _create(e2b)
    sandbox, token = made["sandboxID"], made["envdAccessToken"]
    assert made["domain"] == f"localhost:{port}"
    with httpx.Client(base_url=server.url, timeout=60.0) as raw:
        api = {"Host": f"api.localhost:{port}", "X-API-Key": key}
        listed = raw.get("/v2/sandboxes", headers=api)
        assert listed.status_code == 200, listed.text
        assert sandbox in [s["sandboxID"] for s in listed.json()]
        assert_e2b_error(raw.get("/sandboxes/sbx-0000000000000000", headers=api), 404)
        envd = {"Host": f"49983-{sandbox}.localhost:{port}", "X-Access-Token": token}
        assert raw.get("/health", headers=envd).status_code == 204
        # The host names the sandbox: a header naming another does not change that.
        other = {**envd, "E2b-Sandbox-Id": "sbx-0000000000000000"}
        assert raw.get("/health", headers=other).status_code == 204
        assert_e2b_error(raw.get("/health", headers={**envd, "X-Access-Token": "x" * 64}), 401)
        # Another domain's api host is Corral's own API, which has no such path.
        assert_error(raw.get("/v2/sandboxes", headers={**api, "Host": "api.example.org"}), 404,
                     "not_found")
    e2b.delete(f"/sandboxes/{sandbox}")
