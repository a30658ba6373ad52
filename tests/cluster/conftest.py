"""A real Ray cluster on this machine and Corral's API servers on it, for one module.

Three Ray nodes (``ray.cluster_utils.Cluster``: one raylet each) on 127.0.0.1, with Ray's
token authentication on; each gets its Corral node
actor from the control plane (autostart), whose node server keeps its data under the
test's directory and shares the built images. The API servers run in this process under
uvicorn on 127.0.0.1, on one database (PostgreSQL when ``scripts/test`` gives one, else a
SQLite file), as two API servers behind one address would.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

# Not importorskip: Ray must not be imported before its token is set (it reads the mode once).
if importlib.util.find_spec("ray") is None:
    pytest.skip("cluster mode needs Ray: pip install 'corral[cluster]'", allow_module_level=True)

from corral.cluster import ray_boot  # noqa: E402
from corral.cluster.control import ClusterSettings  # noqa: E402
from corral.cluster.gateway import create_gateway_app  # noqa: E402
from corral.cluster.trust import load_secret  # noqa: E402
from corral.server.settings import ServerSettings  # noqa: E402
from corral.server.store import KeyStore, open_engine  # noqa: E402
from tests.conftest import IMAGE_DIR, sandbox_data_dir  # noqa: E402
from tests.server._db import POSTGRES_URL, fresh_database  # noqa: E402
from tests.server._serving import serving  # noqa: E402

NODES = {"n1": "127.0.0.1", "n2": "127.0.0.1", "n3": "127.0.0.1"}
LABELS = {name: {"zone": "b" if name == "n3" else "a", "host": name} for name in NODES}
#: Seconds: short, so that a loss is seen soon (the defaults are 1 and 3).
HEARTBEAT = 0.5
LOST_AFTER = 2.0


@dataclass
class RayNodes:
    cluster: Any
    handles: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str) -> None:
        args = {"num_cpus": 1, "node_ip_address": NODES[name], "node_name": name,
                "labels": LABELS[name]}
        if self.cluster is None:
            from ray.cluster_utils import Cluster
            self.cluster = Cluster(initialize_head=True,
                                   head_node_args={**args, "include_dashboard": False})
            self.handles[name] = self.cluster.head_node
        else:
            self.handles[name] = self.cluster.add_node(**args)

    def kill(self, name: str) -> None:
        """The host's loss, as Ray sees it: its raylet and workers killed (SIGKILL)."""
        self.cluster.remove_node(self.handles.pop(name), allow_graceful=False)


@dataclass
class Cluster:
    ray: RayNodes
    url: str
    key: str  # tenant alpha
    other_key: str  # tenant beta
    operator_key: str
    keys: KeyStore
    settings: ServerSettings
    cluster_settings: ClusterSettings
    app: Any

    def http(self, key: str | None = None, url: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=url or self.url, timeout=120.0,
                            headers={"Authorization": f"Bearer {key or self.key}"})


@contextmanager
def _database(tmp: Path) -> Iterator[str]:
    with fresh_database("postgresql" if POSTGRES_URL else "sqlite", tmp) as url:
        yield url


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with sandbox_data_dir("corral-cluster-test-") as root, _database(root) as database:
        secret_file = root / "cluster-secret"
        ray_boot.use_token(load_secret(secret_file, create=True), NODES["n1"])
        nodes = RayNodes(cluster=None)
        try:
            for name in NODES:
                nodes.add(name)
            api_dir = root / "api"
            api_dir.mkdir()
            settings = ServerSettings.from_env(data_dir=api_dir)
            settings = type(settings)(**{**settings.__dict__, "database_url": database})
            cluster_settings = ClusterSettings(
                address=nodes.cluster.address, secret_file=secret_file,
                host=NODES["n1"], heartbeat=HEARTBEAT, lost_after=LOST_AFTER,
                node_root=root / "nodes",
                node_env={"CORRAL_IMAGE_DIR": str(IMAGE_DIR),
                          "CORRAL_LOG_LEVEL": "WARNING"})
            keys = KeyStore(open_engine(database))
            app = create_gateway_app(settings, cluster_settings)
            with serving(app) as url:
                try:
                    found = _wait_for_nodes(url, keys.create("ops", operator=True).key,
                                            set(NODES))
                    assert found == set(NODES)
                    yield Cluster(ray=nodes, url=url, key=keys.create("alpha").key,
                                  other_key=keys.create("beta").key,
                                  operator_key=keys.create("ops2", operator=True).key,
                                  keys=keys, settings=settings,
                                  cluster_settings=cluster_settings, app=app)
                finally:
                    stop_node_actors(app.state.cluster.token)
        finally:
            if nodes.cluster is not None:
                nodes.cluster.shutdown()


def _wait_for_nodes(url: str, key: str, names: set[str], timeout: float = 120.0
                    ) -> set[str]:
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    while time.monotonic() < deadline:
        reply = httpx.get(url + "/v1/nodes", headers={"Authorization": f"Bearer {key}"},
                          timeout=30)
        ready = {n["name"] for n in reply.json()["nodes"]
                 if n["state"] == "ready" and n["cpus"] is not None}
        if names <= ready:
            break
        time.sleep(0.2)
    return ready


def stop_node_actors(token: str) -> None:
    """End every node's sandboxes, stop its node server, and its actor."""
    import ray

    from corral.cluster.node_actor import ACTOR_PREFIX
    for name in ray_boot.node_actor_names():
        handle = ray_boot.get_actor(ACTOR_PREFIX + name)
        if handle is None:
            continue
        try:
            ray.get(handle.stop.remote(token, end_sandboxes=True), timeout=120)
            ray.kill(handle)
        except Exception:  # noqa: BLE001 - already gone
            pass


def wait_until(condition: Any, timeout: float, step: float = 0.1) -> float:
    """Seconds until ``condition()`` held; fails the test past ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not so after {timeout:g} s")
        time.sleep(step)
    return time.monotonic() - started


os.environ.setdefault("RAY_DEDUP_LOGS", "0")
