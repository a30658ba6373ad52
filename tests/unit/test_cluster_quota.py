"""The per-tenant caps in cluster mode: counted from the cluster's records (every API
server's), lost sandboxes included, stopped ones not; a create past a cap is refused
before any node is asked. No Ray here: the cluster has no node, so a create the caps let
through is refused by placement instead, in other words."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.api.errors import ResourceExhaustedError
from corral.cluster.control import Cluster, ClusterSettings
from corral.cluster.directory import LIVE, LOST, STOPPED, Directory
from corral.server.settings import TenantQuota
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


async def test_no_caps_read_no_records(tmp_path: Path) -> None:
    directory = Directory(open_engine(f"sqlite:///{tmp_path / 'corral.db'}"))
    cluster = Cluster(ClusterSettings(address="auto", secret_file=tmp_path / "secret"),
                      directory)
    for n in range(3):
        directory.add(f"sbx-{n}", "alpha", "n1", {"resources": {"gpu": 8}})
    with pytest.raises(ResourceExhaustedError, match=NO_NODE):
        await _create(cluster, gpus=8)
