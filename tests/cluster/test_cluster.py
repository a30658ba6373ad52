"""Cluster mode on a real Ray cluster of three raylets on this machine (see conftest.py):
placement, labels, cordon and drain, a second API server, a node killed and back, both
runtimes, and what stays closed (Ray, the node servers) to anyone without the token."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral import Sandbox
from corral.cluster.gateway import create_gateway_app
from corral.cluster.trust import CLUSTER_HEADER, TENANT_HEADER
from tests.server._serving import serving

from tests.conftest import IMAGE_DIR

from .conftest import Cluster, wait_until

pytestmark = [pytest.mark.gvisor, pytest.mark.timeout(600)]


@contextmanager
def sandboxes(cluster: Cluster, count: int, **create: Any) -> Iterator[list[Sandbox]]:
    made: list[Sandbox] = []
    try:
        for _ in range(count):
            made.append(Sandbox.create(url=cluster.url, api_key=cluster.key, timeout=300,
                                       **create))
        yield made
    finally:
        for sandbox in made:
            try:
                sandbox.kill()
            except Exception:  # noqa: BLE001 - lost or gone with its node
                pass


def node_of(cluster: Cluster, sandbox_id: str) -> str:
    with cluster.http() as http:
        reply = http.get("/v1/sandboxes")
    assert reply.status_code == 200, reply.text
    return next(s["node"] for s in reply.json()["sandboxes"] if s["id"] == sandbox_id)


def test_sandboxes_spread_across_nodes_and_run(cluster: Cluster) -> None:
    with sandboxes(cluster, 3) as made:
        nodes = {node_of(cluster, sb.id) for sb in made}
        assert len(nodes) == 3  # one tenant's sandboxes spread: one per node
        for sb in made:
            sb.files.write("/tmp/x", b"hello " + sb.id.encode())
            result = sb.commands.run("cat /tmp/x; echo; echo err >&2; exit 3")
            assert (result.exit_code, result.stdout, result.stderr) == (
                3, f"hello {sb.id}\n", "err\n")
            streamed: list[str] = []
            sb.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=streamed.append)
            assert "".join(streamed) == "1\n2\n3\n"
            assert sb.run_code("21 * 2").text == "42"


def test_another_tenant_sees_nothing(cluster: Cluster) -> None:
    with sandboxes(cluster, 1) as (sb,):
        with cluster.http(cluster.other_key) as http:
            assert http.get(f"/v1/sandboxes/{sb.id}").status_code == 404
            assert http.post(f"/v1/sandboxes/{sb.id}/commands",
                             json={"cmd": ["true"]}).status_code == 404
            assert sb.id not in http.get("/v1/sandboxes").text


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition: (name, labels) -> value."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_api_servers_metrics_show_the_cluster(cluster: Cluster) -> None:
    with sandboxes(cluster, 2), cluster.http(cluster.operator_key) as ops, \
            cluster.http() as mine:
        scraped = ops.get("/metrics")
        assert scraped.status_code == 200, scraped.text
        assert scraped.headers["content-type"].startswith("text/plain")
        got = _samples(scraped.text)

        def one(name: str, **labels: str) -> float:
            return got[(name, frozenset(labels.items()))]

        assert one("corral_cluster_nodes", state="ready") == 3
        assert one("corral_cluster_nodes", state="lost") == 0
        assert one("corral_tenant_sandboxes", tenant="alpha", state="live") == 2
        assert one("corral_sandboxes", state="live") >= 2  # other tenants' too
        assert one("corral_cluster_ray_calls_total", method="call") >= 2
        assert one("corral_sandbox_create_seconds_count") >= 2
        assert one("corral_http_requests_total", route="/v1/sandboxes", method="POST",
                   status="201") >= 2
        held = sum(one("corral_cluster_node_sandboxes", node=n) for n in ("n1", "n2", "n3"))
        assert held >= 2
        assert one("corral_cluster_node_cpus", node="n1") > 0
        assert one("corral_cluster_node_memory_bytes", node="n1") > 0
        assert ("corral_pool_ready", frozenset({("image", "python"),
                                                ("runtime", "namespaces")})) in got
        assert not any(name.startswith("corral_commands") for name, _ in got)

        # A tenant's key: the cluster's totals, not its nodes' nor other tenants' figures.
        theirs = _samples(mine.get("/metrics").text)
        names = {name for name, _ in theirs}
        assert "corral_cluster_nodes" in names and "corral_sandboxes" in names
        assert not any(n.startswith(("corral_tenant_", "corral_cluster_node_")) for n in names)


def test_node_selector_picks_labelled_nodes(cluster: Cluster) -> None:
    with sandboxes(cluster, 2, node_selector={"zone": "b"}) as made:
        assert {node_of(cluster, sb.id) for sb in made} == {"n3"}
    with cluster.http() as http:
        reply = http.post("/v1/sandboxes", json={"node_selector": {"zone": "nowhere"}})
        assert reply.status_code == 429, reply.text
        assert reply.json()["error"]["code"] == "resource_exhausted"
        assert "labels" in reply.json()["error"]["message"]
        bad = http.post("/v1/sandboxes", json={"node_selector": {"Zone!": "x"}})
        assert bad.status_code == 400
        many = http.post("/v1/sandboxes",
                         json={"node_selector": {f"k{i}": "v" for i in range(17)}})
        assert many.status_code == 400


def test_both_runtimes(cluster: Cluster) -> None:
    with sandboxes(cluster, 1, runtime="namespaces") as (ns,), \
            sandboxes(cluster, 1, runtime="gvisor") as (gv,):
        assert ns.commands.run("echo ok").stdout == "ok\n"
        assert gv.commands.run("echo ok").stdout == "ok\n"
        assert ns.refresh().runtime == "namespaces"
        assert gv.refresh().runtime == "gvisor"
        assert ns.refresh().node == node_of(cluster, ns.id)


def test_cordon_and_drain(cluster: Cluster) -> None:
    ops = cluster.http(cluster.operator_key)
    with ops:
        assert ops.post("/v1/nodes/n1/cordon").status_code == 200
        assert ops.post("/v1/nodes/n2/cordon").status_code == 200
        try:
            with sandboxes(cluster, 2) as made:
                assert {node_of(cluster, sb.id) for sb in made} == {"n3"}
                reply = ops.post("/v1/nodes/n3/drain", json={"kill": True})
                assert reply.status_code == 200, reply.text
                assert sorted(reply.json()["ended"]) == sorted(sb.id for sb in made)
                for sb in made:
                    info = sb.refresh()
                    assert info.state == "stopped"
                with cluster.http() as http:  # nothing left to place on
                    full = http.post("/v1/sandboxes", json={})
                    assert full.status_code == 429
                    assert "cordoned or draining" in full.json()["error"]["message"]
        finally:
            for name in ("n1", "n2", "n3"):
                assert ops.post(f"/v1/nodes/{name}/uncordon").status_code == 200
        assert ops.post("/v1/nodes/nope/cordon").status_code == 404
    with cluster.http() as http:  # not an operator
        assert http.get("/v1/nodes").status_code == 403
        assert http.post("/v1/nodes/n1/cordon").status_code == 403


def test_a_second_api_server_serves_any_sandbox(cluster: Cluster) -> None:
    with sandboxes(cluster, 1) as (sb,):
        second = create_gateway_app(cluster.settings, cluster.cluster_settings)
        with serving(second) as url:
            other = Sandbox.connect(sb.id, url=url, api_key=cluster.key)
            assert other.commands.run("echo from-b").stdout == "from-b\n"
            made = Sandbox.create(url=url, api_key=cluster.key, timeout=300)
            try:  # created through the second, used through the first
                first = Sandbox.connect(made.id, url=cluster.url, api_key=cluster.key)
                assert first.commands.run("echo from-a").stdout == "from-a\n"
            finally:
                made.kill()
        # the second API server is gone: the first serves on, nothing lost
        assert sb.commands.run("echo still").stdout == "still\n"


def test_node_servers_and_actors_want_the_token(cluster: Cluster) -> None:
    with cluster.http(cluster.operator_key) as ops:
        node = next(n for n in ops.get("/v1/nodes").json()["nodes"] if n["name"] == "n1")
    assert node["url"].startswith("https://")
    ca = next(v.ca for v in cluster.app.state.cluster.views() if v.name == "n1")
    trusted = ssl.create_default_context(cadata=ca)
    for headers in ({}, {CLUSTER_HEADER: "x" * 64, TENANT_HEADER: "alpha"},
                    {"Authorization": f"Bearer {cluster.key}"}):
        reply = httpx.get(node["url"] + "/v1/sandboxes", headers=headers, timeout=30,
                          verify=trusted)
        assert reply.status_code == 401, reply.text
    with pytest.raises(httpx.ConnectError):  # its certificate is of the node's own CA
        httpx.get(node["url"] + "/v1/sandboxes", timeout=30)
    # the node token with a tenant's key id (a request passed on) never reaches the
    # node-only routes; only the actor's own calls do
    passed_on = {CLUSTER_HEADER: cluster.app.state.cluster.token, TENANT_HEADER: "alpha",
                 "x-corral-key-id": "key-0123456789ab"}
    assert httpx.get(node["url"] + "/v1/node", headers=passed_on, timeout=30,
                     verify=trusted).status_code == 404
    with sandboxes(cluster, 1) as (sb,), cluster.http() as http:  # no way round by path
        for path in (f"/v1/sandboxes/{sb.id}/%2e%2e/%2e%2e/node",
                     f"/v1/sandboxes/{sb.id}/%2E%2E/x/commands",
                     f"/v1/sandboxes/{sb.id}/ports/80/%2e%2e/%2e%2e/%2e%2e/node"):
            assert http.get(path).status_code == 404, path
    import ray

    from corral.cluster import ray_boot
    from corral.cluster.node_actor import ACTOR_PREFIX
    handle = ray_boot.get_actor(ACTOR_PREFIX + "n1")
    with pytest.raises(Exception, match="node token"):
        ray.get(handle.describe.remote("not-the-token"), timeout=30)


def test_ray_listens_on_loopback_only_and_sandboxes_cannot_reach_it(cluster: Cluster
                                                                     ) -> None:
    gcs_host, _, gcs_port = cluster.cluster_settings.address.rpartition(":")
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    ray_sockets = [line for line in listening
                   if any(f'"{name}"' in line for name in ("gcs_server", "raylet"))]
    assert ray_sockets, listening
    for line in ray_sockets:
        host = line.split()[3].rpartition(":")[0].strip("[]").removeprefix("::ffff:")
        assert host == "127.0.0.1", line
    with sandboxes(cluster, 1) as (sb,):  # network "none": no way to the host at all
        probe = sb.commands.run(["python3", "-c", (
            "import socket; s = socket.socket(); s.settimeout(2)\n"
            f"try: s.connect(({gcs_host!r}, {int(gcs_port)})); print('open')\n"
            "except OSError as e: print('closed', type(e).__name__)")])
        assert probe.stdout.startswith("closed"), probe.stdout
        routes = sb.commands.run("cat /proc/net/route | wc -l").stdout
        assert routes.strip() == "1"  # only the header: no route anywhere


def pools_ready(cluster: Cluster) -> dict[str, int]:
    return {view.name: view.pool_ready.get("python", 0)
            for view in cluster.app.state.cluster.views() if view.ready}


def test_a_killed_node_is_reported_lost_then_reconciled(cluster: Cluster) -> None:
    """n2's host goes: its sandboxes are reported lost within 5 s, calls on them say so,
    and its share of the warm pool is refilled on the others; when it comes back, the
    sandbox the control plane waited for is adopted and the one it gave up on is ended."""
    wait_until(lambda: pools_ready(cluster) == {"n1": 1, "n2": 1, "n3": 1}, timeout=120.0,
               step=0.5)
    with sandboxes(cluster, 2, node_selector={"host": "n2"}) as (kept, given_up), \
            sandboxes(cluster, 1, node_selector={"host": "n1"}) as (other,):
        http = cluster.http()
        cluster.ray.kill("n2")

        def lost() -> bool:
            return http.get(f"/v1/sandboxes/{kept.id}").status_code == 410

        assert wait_until(lost, timeout=5.0) <= 5.0
        error = http.get(f"/v1/sandboxes/{kept.id}").json()["error"]
        assert error["code"] == "sandbox_not_running"
        assert "node n2 was lost" in error["message"], error
        run = http.post(f"/v1/sandboxes/{kept.id}/commands", json={"cmd": ["true"]})
        assert run.status_code == 410
        listed = {s["id"]: s for s in http.get("/v1/sandboxes").json()["sandboxes"]}
        assert listed[kept.id]["state"] == "lost"
        assert "node n2 was lost" in listed[kept.id]["state_reason"]
        with cluster.http(cluster.operator_key) as ops:
            n2 = next(n for n in ops.get("/v1/nodes").json()["nodes"] if n["name"] == "n2")
        assert n2["state"] == "lost" and "n2" in n2["reason"]
        assert other.commands.run("echo up").stdout == "up\n"  # the others carry on
        wait_until(lambda: pools_ready(cluster) == {"n1": 2, "n3": 1}, timeout=120.0,
                   step=0.5)
        # the control plane gives up on one of them (its grace ran out, say)
        directory = cluster.app.state.cluster.directory
        assert directory.set_state([given_up.id], "stopped", "given up", was=("lost",)) == 1
        cluster.ray.add("n2")

        def back() -> bool:
            return http.get(f"/v1/sandboxes/{kept.id}").status_code == 200

        wait_until(back, timeout=180.0, step=0.5)
        assert kept.commands.run("echo adopted").stdout == "adopted\n"

        def ended() -> bool:
            views = {v.name: v for v in cluster.app.state.cluster.views()}
            return "n2" in views and views["n2"].ready and given_up.id not in views[
                "n2"].sandboxes

        wait_until(ended, timeout=60.0, step=0.5)
        http.close()


def test_what_cluster_mode_does_not_serve_yet_says_so(cluster: Cluster) -> None:
    with sandboxes(cluster, 1) as (sb,), cluster.http() as http:
        for path in (f"/v1/sandboxes/{sb.id}/fork", f"/v1/sandboxes/{sb.id}/snapshots"):
            reply = http.post(path, json={})
            assert reply.status_code == 400, (path, reply.text)
            assert "not served in cluster mode yet" in reply.json()["error"]["message"]
        for method, path in (("GET", "/v1/volumes"), ("POST", "/v1/images/prune"),
                             ("GET", "/e2b/sandboxes")):
            refused = http.request(method, path)
            assert refused.status_code == 404, (path, refused.text)
            assert "cluster mode" in refused.json()["error"]["message"]
        from_snapshot = http.post("/v1/sandboxes", json={"snapshot": "snap-0123456789abcdef"})
        assert from_snapshot.status_code == 400
        assert sb.commands.run("echo fine").stdout == "fine\n"  # the sandbox is untouched


def test_a_host_joins_with_corral_node_join(cluster: Cluster, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from corral.cli import app
    data = tmp_path / "joined"
    result = CliRunner().invoke(app, [
        "node", "join", cluster.cluster_settings.address, "--name", "joined",
        "--host", "127.0.0.1", "--label", "joined=yes", "--data-dir", str(data),
        "--image-dir", str(IMAGE_DIR),
        "--secret-file", str(cluster.cluster_settings.secret_file)])
    assert result.exit_code == 0, result.output
    with cluster.http(cluster.operator_key) as ops:
        wait_until(lambda: any(n["name"] == "joined" and n["state"] == "ready"
                               and n["cpus"] is not None
                               for n in ops.get("/v1/nodes").json()["nodes"]), timeout=60)
    import ray

    from corral.cluster import ray_boot
    from corral.cluster.node_actor import ACTOR_PREFIX
    try:
        with sandboxes(cluster, 1, node_selector={"joined": "yes"}) as (sb,):
            assert node_of(cluster, sb.id) == "joined"
            assert sb.commands.run("echo joined").stdout == "joined\n"
    finally:
        handle = ray_boot.get_actor(ACTOR_PREFIX + "joined")
        ray.get(handle.stop.remote(cluster.app.state.cluster.token, end_sandboxes=True),
                timeout=120)
        ray.kill(handle)
    bad = CliRunner().invoke(app, ["node", "join", cluster.cluster_settings.address,
                                   "--label", "Bad Label", "--secret-file",
                                   str(cluster.cluster_settings.secret_file)])
    assert bad.exit_code != 0 and "KEY=VALUE" in bad.output


def test_exposed_ports_through_the_api_server(cluster: Cluster) -> None:
    with sandboxes(cluster, 1) as (sb,):
        sb.files.write("/tmp/site/hello.txt", b"hello from a port")
        sb.commands.run_background("cd /tmp/site && exec python3 -m http.server 8000")
        token = sb.refresh().ports.token  # type: ignore[union-attr]
        path = f"/v1/sandboxes/{sb.id}/ports/8000/hello.txt"

        def serving() -> bool:
            with cluster.http() as owner:
                return owner.get(path).status_code == 200

        wait_until(serving, timeout=60.0, step=0.3)
        with cluster.http() as owner:  # the owner's key, checked by the API server
            reply = owner.get(path)
            assert reply.text == "hello from a port"
            host_based = owner.get("/hello.txt",
                                   headers={"host": f"8000-{sb.id}.localhost"})
            assert host_based.status_code == 200 and host_based.text == "hello from a port"
        anyone = httpx.Client(base_url=cluster.url, timeout=60)
        with anyone:
            assert anyone.get(path).status_code == 401  # private: a credential is needed
            by_token = anyone.get(path, headers={"x-corral-port-token": token})
            assert by_token.text == "hello from a port"
            forged = anyone.get(path, headers={"x-corral-cluster": "x" * 64,
                                               "x-corral-tenant": "alpha"})
            assert forged.status_code == 401  # a client's cluster headers are dropped
        with cluster.http(cluster.other_key) as other:
            assert other.get(path).status_code == 401


def test_a_terminal_websocket_through_the_api_server(cluster: Cluster) -> None:
    import json

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with sandboxes(cluster, 1) as (sb,):
        url = cluster.url.replace("http://", "ws://") + f"/v1/sandboxes/{sb.id}/terminal"
        with connect(url, open_timeout=60,
                     additional_headers={"Authorization": f"Bearer {cluster.key}"}) as ws:
            ws.send(json.dumps({"pty": {"cols": 80, "rows": 24}, "cmd": ["cat"]}))
            assert json.loads(ws.recv(timeout=60))["type"] == "started"
            ws.send(b"hello\n")
            shown = b""
            while b"hello\r\nhello\r\n" not in shown:
                message = ws.recv(timeout=60)
                if isinstance(message, bytes):
                    shown += message
            ws.send(json.dumps({"type": "signal", "signal": 15}))
            while True:
                message = ws.recv(timeout=60)
                if isinstance(message, str) and json.loads(message)["type"] == "exit":
                    break
        for key, status in (("crl_nope", 401), (cluster.other_key, 403)):
            with pytest.raises(InvalidStatus) as refused:  # a bad key, another tenant's
                connect(url, open_timeout=60,
                        additional_headers={"Authorization": f"Bearer {key}"})
            assert refused.value.response.status_code == status


def test_the_console_and_what_its_pages_ask_for(cluster: Cluster) -> None:
    with sandboxes(cluster, 1) as (sb,):
        page = httpx.get(cluster.url + "/ui", timeout=60)
        assert page.status_code == 200 and "<html" in page.text.lower()
        with httpx.Client(base_url=cluster.url, timeout=60) as browser:
            login = browser.post("/ui/api/login", json={"key": cluster.key})
            assert login.status_code == 200, login.text
            csrf = {"X-Corral-CSRF": login.json()["csrf"]}
            assert browser.get("/v1/sandboxes").status_code == 401  # the cookie alone
            listed = browser.get("/v1/sandboxes", headers=csrf)
            assert sb.id in {s["id"] for s in listed.json()["sandboxes"]}
            assert browser.get(f"/v1/sandboxes/{sb.id}", headers=csrf).status_code == 200

            def sampled() -> bool:
                reply = browser.get("/v1/metrics/sandboxes",
                                    params={"ids": f"{sb.id},sbx-0000000000000000"},
                                    headers=csrf)
                assert reply.status_code == 200, reply.text
                return bool(reply.json()["sandboxes"].get(sb.id))

            wait_until(sampled, timeout=60.0, step=0.5)
            many = browser.get("/v1/metrics/sandboxes", headers=csrf,
                               params={"ids": ",".join(f"sbx-{i:016x}" for i in range(101))})
            assert many.status_code == 400
            images = browser.get("/v1/images", headers=csrf).json()["images"]
            assert "python" in {i["name"] for i in images}
            assert browser.get("/v1/pools", headers=csrf).status_code == 403
        with cluster.http(cluster.other_key) as other:  # another tenant: not in its answer
            reply = other.get("/v1/metrics/sandboxes", params={"ids": sb.id})
            assert reply.status_code == 200 and reply.json()["sandboxes"] == {}
        with cluster.http(cluster.operator_key) as ops:
            pools = ops.get("/v1/pools").json()["pools"]
            assert pools and pools[0]["runtime"] == "namespaces"
            assert sum(p["size"] for p in pools) == 3
