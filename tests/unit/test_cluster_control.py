"""The control plane's create without Ray: the per-tenant caps, counted from the cluster's
records (every API server's), lost sandboxes included, stopped ones not, refusing before
any node is asked (with no node, a create the caps let through is refused by placement
instead, in other words); and a sandbox whose record cannot be written is ended on its
node (a stand-in for the node's actor answers)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from corral.api.errors import ResourceExhaustedError
from corral.cluster.control import Cluster, ClusterSettings, _Node
from corral.cluster.placement import NodeView
from corral.cluster.directory import LIVE, LOST, STOPPED, Directory
from corral.server.quota import TenantQuota
from corral.server.store import open_engine
from corral.server.store.keys import KeyRef

pytestmark = pytest.mark.anyio
ALPHA = KeyRef(id="k1", tenant="alpha")
NO_NODE = "no node"


async def _create(cluster: Cluster, gpus: int = 0) -> None:
    await cluster.create(ALPHA, {}, image="python", cpus=1.0, memory_mib=512, selector={},
                         gpus=gpus)


async def test_caps_count_the_tenants_live_and_lost_records(tmp_path: Path) -> None:
    directory = Directory(open_engine(f"sqlite:///{tmp_path / 'corral.db'}"))
    cluster = Cluster(ClusterSettings(address="auto", secret_file=tmp_path / "secret"),
                      directory, TenantQuota(sandboxes=2, gpus=2))
    directory.add("sbx-a1", "alpha", "n1", {"resources": {"gpu": "H200"}})  # one GPU
    directory.add("sbx-b1", "beta", "n1", {"resources": {"gpu": 2}})  # not alpha's
    with pytest.raises(ResourceExhaustedError, match=NO_NODE):
        await _create(cluster, gpus=1)  # 2 GPUs: at the cap, let through
    with pytest.raises(ResourceExhaustedError, match=r"would hold 3 GPUs, past this "
                       r"cluster's cap of 2 a tenant \(CORRAL_TENANT_MAX_GPUS\)"):
        await _create(cluster, gpus=2)

    directory.add("sbx-a2", "alpha", "n2", {"resources": {"gpu": None}})
    directory.set_state(["sbx-a2"], LOST, "node n2 was lost", was=(LIVE,))  # may come back
    with pytest.raises(ResourceExhaustedError, match=r"would number 3, past this cluster's "
                       r"cap of 2 a tenant \(CORRAL_TENANT_MAX_SANDBOXES\)"):
        await _create(cluster)
    directory.set_state(["sbx-a2"], STOPPED, "given up", was=(LOST,))
    with pytest.raises(ResourceExhaustedError, match=NO_NODE):
        await _create(cluster)


class _UnreadDirectory(Directory):
    """A directory whose tenant counts must not be read."""

    def of_tenant(self, tenant: str, states: tuple[str, ...]) -> Any:
        raise AssertionError("a create without caps read the tenant's records")

    def count(self, tenant: str | None = None) -> int:
        raise AssertionError("a create without caps counted the tenant's records")


async def test_no_caps_read_no_records(tmp_path: Path) -> None:
    directory = _UnreadDirectory(open_engine(f"sqlite:///{tmp_path / 'corral.db'}"))
    cluster = Cluster(ClusterSettings(address="auto", secret_file=tmp_path / "secret"),
                      directory)
    for n in range(3):
        directory.add(f"sbx-{n}", "alpha", "n1", {"resources": {"gpu": 8}})
    with pytest.raises(ResourceExhaustedError, match=NO_NODE):
        await _create(cluster, gpus=8)


class _Remote:
    def __init__(self, method: Any) -> None:
        self.remote = method


class _Actor:
    """What the control plane calls on a node's actor: ``call`` creates, ``end`` ends."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []
        self.call = _Remote(self._call)
        self.end = _Remote(self._end)

    async def _call(self, token: str, tenant: str, key_id: str, method: str, path: str,
                    body: Any, params: Any) -> tuple[int, dict[str, Any]]:
        assert (method, path) == ("POST", "/v1/sandboxes")
        return 201, {"id": "sbx-made", "resources": {"gpu": None}}

    async def _end(self, token: str, owned: list[tuple[str, str]]) -> list[str]:
        self.ended += owned
        return [sandbox_id for sandbox_id, _ in owned]


class _FailingDirectory(Directory):
    def add(self, sandbox_id: str, tenant: str, node: str, info: dict[str, Any]) -> None:
        raise RuntimeError("the database is gone")


async def test_a_sandbox_whose_record_fails_is_ended_on_its_node(tmp_path: Path) -> None:
    directory = _FailingDirectory(open_engine(f"sqlite:///{tmp_path / 'corral.db'}"))
    cluster = Cluster(ClusterSettings(address="auto", secret_file=tmp_path / "secret"),
                      directory)
    actor = _Actor()
    cluster._nodes["n1"] = _Node(view=NodeView(name="n1", url="https://n1:1", cpus=4.0,
                                               memory_mib=8192),
                                 handle=actor, last_ok=time.monotonic())
    with pytest.raises(RuntimeError, match="the database is gone"):
        await _create(cluster)
    assert actor.ended == [("sbx-made", "alpha")]  # not left to run to its timeout
    assert "sbx-made" not in cluster._nodes["n1"].view.sandboxes
