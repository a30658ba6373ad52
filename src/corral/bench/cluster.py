"""The cluster rows: what cluster mode costs over the node it sends a sandbox's calls to.

``corral bench --cluster`` starts a Ray cluster of two raylets on this machine (loopback,
token authentication), a cluster API server on it (``corral serve --cluster``'s app, on a
SQLite file, or ``CORRAL_DATABASE_URL``), waits for both nodes, and measures, each beside
the bare primitive measured in the same run:

* ``create_first``: create a sandbox and run ``true`` in it, through the API server, beside
  the same on a node server directly (the node token and tenant in hand);
* ``exec``: one command's round trip, the same two ways;
* ``get_ops``: ``GET /v1/sandboxes/{id}`` from 16 clients at once: control-plane operations
  a second of one API server (a directory read and an HTTP hop), beside the node's own;
* ``stream``: a 32 MiB file read through the API server's HTTP hop, beside the node
  directly, and beside the same bytes through a Ray streaming generator of the node's
  actor (the other path bytes could take; docs/cluster.md says why HTTP is used);
* per create: the database writes (by table) and Ray calls the API server made.

Everything is killed in ``finally`` blocks and the Ray cluster shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from corral.cluster.proxy import tls_context

Progress = Callable[[str], None]
STREAM_MIB = 32


def _stat(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "mean": statistics.fmean(ordered)}


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the cluster API server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(90)


def run_cluster_benchmark(rounds: int = 20, progress: Progress = print) -> dict[str, Any]:
    from corral.cluster import ray_boot
    from corral.cluster.trust import forward_headers, load_secret
    from corral.server.store.keys import KeyRef

    root = Path(tempfile.mkdtemp(prefix="corral-cluster-bench-"))
    root.chmod(0o711)
    secret_file = root / "cluster-secret"
    ray_boot.use_token(load_secret(secret_file, create=True), "127.0.0.1")
    from ray.cluster_utils import Cluster as RayCluster
    from sqlalchemy import event

    from corral.cluster.control import ClusterSettings
    from corral.cluster.gateway import create_gateway_app
    from corral.server.settings import ServerSettings
    from corral.server.store import KeyStore, open_engine

    progress("starting a Ray cluster of two raylets on 127.0.0.1")
    started = time.perf_counter()
    ray_cluster = RayCluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "node_name": "b1",
        "include_dashboard": False})
    ray_cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", node_name="b2")
    ray_up = time.perf_counter() - started
    result: dict[str, Any] = {"rounds": rounds, "ray_cluster_start_s": ray_up}
    try:
        api_dir = root / "api"
        api_dir.mkdir()
        settings = ServerSettings.from_env(data_dir=api_dir)
        database = os.environ.get("CORRAL_DATABASE_URL") or f"sqlite:///{api_dir}/corral.db"
        settings = type(settings)(**{**settings.__dict__, "database_url": database})
        result["database"] = database.split(":", 1)[0]
        image_dir = os.environ.get("CORRAL_IMAGE_DIR", "/var/lib/corral/images")
        cluster_settings = ClusterSettings(
            address=ray_cluster.address, secret_file=secret_file, host="127.0.0.1",
            node_root=root / "nodes", node_env={"CORRAL_IMAGE_DIR": image_dir,
                                                "CORRAL_LOG_LEVEL": "WARNING"})
        app = create_gateway_app(settings, cluster_settings)
        keys = KeyStore(open_engine(database))
        new = keys.create("bench")
        with _serving(app) as url:
            cluster = app.state.cluster
            deadline = time.monotonic() + 180
            while len([v for v in cluster.views() if v.ready]) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("the nodes did not come up")
                time.sleep(0.2)
            result["nodes_ready_s"] = time.perf_counter() - started
            progress(f"cluster up in {result['nodes_ready_s']:.1f} s; measuring")
            node_url, node_ca = next((v.url, v.ca) for v in cluster.views()
                                     if v.name == "b1")
            direct = forward_headers(cluster.token, KeyRef(id=new.id, tenant="bench"))
            writes: Counter[str] = Counter()

            def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
                verb = statement.lstrip().split(" ", 1)[0].upper()
                if verb in ("INSERT", "UPDATE", "DELETE"):
                    words = statement.split()
                    table = words[2] if verb != "UPDATE" else words[1]
                    writes[table.strip('"')] += 1

            engine = cluster.directory._engine
            with httpx.Client(base_url=url, timeout=120,
                              headers={"Authorization": f"Bearer {new.key}"}) as api, \
                    httpx.Client(base_url=node_url, timeout=120, headers=direct,
                                 verify=tls_context(node_ca)) as node:
                result.update(_create_rows(api, node, rounds, cluster, engine, event,
                                           count, writes))
                result.update(_call_rows(api, node, rounds, url, node_url, new.key, direct,
                                         cluster))
    finally:
        with contextlib.suppress(Exception):
            from corral.cluster.node_actor import ACTOR_PREFIX
            import ray
            ray.init(address=ray_cluster.address, namespace="corral",
                     _node_ip_address="127.0.0.1", log_to_driver=False)
            for name in ray_boot.node_actor_names():
                handle = ray_boot.get_actor(ACTOR_PREFIX + name)
                if handle is not None:
                    token = app.state.cluster.token
                    ray.get(handle.stop.remote(token, end_sandboxes=True), timeout=120)
                    ray.kill(handle)
            ray.shutdown()
        ray_cluster.shutdown()  # type: ignore[no-untyped-call]
        shutil.rmtree(root, ignore_errors=True)  # its sandboxes are ended, nothing mounted
    return result


def _create_rows(api: httpx.Client, node: httpx.Client, rounds: int, cluster: Any,
                 engine: Any, event: Any, count: Any, writes: Counter[str]
                 ) -> dict[str, Any]:
    gateway: list[float] = []
    bare: list[float] = []
    calls_before = dict(cluster.ray_calls)
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(rounds):
            for client, samples in ((api, gateway), (node, bare)):
                begin = time.perf_counter()
                made = client.post("/v1/sandboxes", json={"runtime": "namespaces"})
                made.raise_for_status()
                sandbox_id = made.json()["id"]
                ran = client.post(f"/v1/sandboxes/{sandbox_id}/commands",
                                  json={"cmd": ["true"]})
                ran.raise_for_status()
                samples.append(time.perf_counter() - begin)
                client.delete(f"/v1/sandboxes/{sandbox_id}")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    per_create = {k: v / rounds for k, v in sorted(writes.items())
                  if k in ("cluster_sandboxes", "audit_log", "tenants", "api_keys")}
    calls = {k: (v - calls_before.get(k, 0)) for k, v in cluster.ray_calls.items()}
    return {"create_first": {"cluster": _stat(gateway), "node": _stat(bare),
                             "ratio_p50": statistics.median(gateway) / statistics.median(
                                 bare)},
            "db_writes_per_create_and_kill": per_create,
            "ray_calls_during_creates": calls}


def _call_rows(api: httpx.Client, node: httpx.Client, rounds: int, url: str, node_url: str,
               key: str, direct: dict[str, str], cluster: Any) -> dict[str, Any]:
    made = api.post("/v1/sandboxes", json={"runtime": "namespaces", "timeout": 600,
                                           "node_selector": {}})
    made.raise_for_status()
    sandbox_id = made.json()["id"]
    holder = made.json()["node"]
    node_base, node_ca = next((v.url, v.ca) for v in cluster.views() if v.name == holder)
    node = httpx.Client(base_url=node_base, timeout=120, headers=direct,
                        verify=tls_context(node_ca))
    out: dict[str, Any] = {}
    try:
        gateway: list[float] = []
        bare: list[float] = []
        for _ in range(rounds * 5):
            for client, samples in ((api, gateway), (node, bare)):
                begin = time.perf_counter()
                client.post(f"/v1/sandboxes/{sandbox_id}/commands",
                            json={"cmd": ["true"]}).raise_for_status()
                samples.append(time.perf_counter() - begin)
        out["exec"] = {"cluster": _stat(gateway), "node": _stat(bare),
                       "ratio_p50": statistics.median(gateway) / statistics.median(bare)}
        out["get_ops"] = {
            "cluster_per_s": asyncio.run(_rate(url, {"Authorization": f"Bearer {key}"},
                                               f"/v1/sandboxes/{sandbox_id}", rounds * 50)),
            "node_per_s": asyncio.run(_rate(node_base, direct, f"/v1/sandboxes/{sandbox_id}",
                                            rounds * 50, verify=tls_context(node_ca)))}
        out["get_ops"]["ratio"] = out["get_ops"]["node_per_s"] / out["get_ops"][
            "cluster_per_s"]
        api.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": [
            "dd", "if=/dev/urandom", "of=/tmp/blob", "bs=1M", f"count={STREAM_MIB}"]}
        ).raise_for_status()
        out["stream"] = _stream_rows(api, node, sandbox_id, holder, cluster)
    finally:
        api.delete(f"/v1/sandboxes/{sandbox_id}")
        node.close()
    return out


async def _rate(base: str, headers: dict[str, str], path: str, total: int,
                concurrency: int = 16, verify: Any = True) -> float:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60,
                                 verify=verify) as client:
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                (await client.get(path)).raise_for_status()

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - begin)


def _stream_rows(api: httpx.Client, node: httpx.Client, sandbox_id: str, holder: str,
                 cluster: Any) -> dict[str, Any]:
    import ray

    from corral.cluster import ray_boot
    from corral.cluster.node_actor import ACTOR_PREFIX
    handle = ray_boot.get_actor(ACTOR_PREFIX + holder)
    size = STREAM_MIB * 1024 * 1024
    rows: dict[str, list[float]] = {"http_via_api_server": [], "http_node_direct": [],
                                    "ray_streaming_generator": []}
    first: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(3):
        for name, client in (("http_via_api_server", api), ("http_node_direct", node)):
            begin = time.perf_counter()
            got = 0
            with client.stream("GET", f"/v1/sandboxes/{sandbox_id}/files",
                               params={"path": "/tmp/blob"}) as reply:
                reply.raise_for_status()
                for chunk in reply.iter_raw():
                    if not got:
                        first[name].append(time.perf_counter() - begin)
                    got += len(chunk)
            assert got == size, got
            rows[name].append(time.perf_counter() - begin)
        begin = time.perf_counter()
        got = 0
        generator = handle.read_stream.options(num_returns="streaming").remote(
            cluster.token, "bench", "bench", sandbox_id, "/tmp/blob")
        for ref in generator:
            chunk = ray.get(ref)
            if not got:
                first["ray_streaming_generator"].append(time.perf_counter() - begin)
            got += len(chunk)
        assert got == size, got
        rows["ray_streaming_generator"].append(time.perf_counter() - begin)
    return {name: {"mib_per_s": STREAM_MIB / statistics.median(times),
                   "first_byte_ms": 1000 * statistics.median(first[name])}
            for name, times in rows.items()}


def print_report(result: dict[str, Any]) -> None:
    """The rows as a table: the cluster's figure, the node's, and their ratio."""
    print(f"{'row':<34}{'cluster':>14}{'node':>14}{'ratio':>8}")
    for row in ("create_first", "exec"):
        got = result[row]
        print(f"{row + ' p50 ms':<34}{1000 * got['cluster']['p50']:>14.1f}"
              f"{1000 * got['node']['p50']:>14.1f}{got['ratio_p50']:>8.2f}")
    ops = result["get_ops"]
    print(f"{'GET sandbox, 16 at once, /s':<34}{ops['cluster_per_s']:>14.0f}"
          f"{ops['node_per_s']:>14.0f}{ops['ratio']:>8.2f}")
    stream = result["stream"]
    direct = stream["http_node_direct"]["mib_per_s"]
    for name in ("http_via_api_server", "ray_streaming_generator"):
        got = stream[name]
        print(f"{name + ' MiB/s':<34}{got['mib_per_s']:>14.0f}{direct:>14.0f}"
              f"{direct / got['mib_per_s']:>8.2f}")
    print(f"database writes per create+kill: {result['db_writes_per_create_and_kill']}")
    print(f"Ray calls while creating: {result['ray_calls_during_creates']}")


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run_cluster_benchmark(max(1, min(args.rounds, 200)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
