"""Placement and pool spreading in cluster mode: pure functions, every rule at its edge."""

from __future__ import annotations

import pytest

from corral.api.errors import ResourceExhaustedError
from corral.cluster.control import node_name, spread_pools
from corral.cluster.placement import NodeView, Want, place
from corral.node.pools import PoolSpec


def node(name: str, **fields: object) -> NodeView:
    base: dict[str, object] = {"url": f"http://{name}", "cpus": 2.0, "memory_mib": 4096}
    base.update(fields)
    return NodeView(name=name, **base)  # type: ignore[arg-type]


WANT = Want(tenant="t", image="python", cpus=1.0, memory_mib=512)


def test_the_emptier_node_wins_then_the_name() -> None:
    busy = node("a", sandboxes={"s1": ("other", 1.0, 2048)})
    assert place([busy, node("b")], WANT).name == "b"
    assert place([node("b"), node("a")], WANT).name == "a"


def test_a_warm_pool_then_the_image_come_first() -> None:
    pooled = node("z", pool_ready={"python": 1}, sandboxes={"s": ("other", 1.0, 3000)})
    imaged = node("y", images=frozenset({"python"}))
    assert place([node("a"), imaged, pooled], WANT).name == "z"
    assert place([node("a"), imaged], WANT).name == "y"
    empty_pool = node("x", pool_ready={"python": 0})
    assert place([empty_pool, imaged], WANT).name == "y"


def test_a_tenants_sandboxes_spread() -> None:
    mine = node("a", sandboxes={"s": ("t", 0.5, 256)})
    theirs = node("b", sandboxes={"s2": ("u", 0.5, 256), "s3": ("u", 0.5, 256)})
    assert place([mine, theirs], WANT).name == "b"


@pytest.mark.parametrize("view,why", [
    (node("a", ready=False), "not ready"),
    (node("a", cordoned=True), "cordoned or draining"),
    (node("a", draining=True), "cordoned or draining"),
    (node("a", cpus=0.2), "CPU"),
    (node("a", memory_mib=511), "memory"),
    (node("a", max_sandboxes=0), "sandbox count"),
])
def test_nodes_that_cannot_take_it_are_refused_with_why(view: NodeView, why: str) -> None:
    with pytest.raises(ResourceExhaustedError, match=why):
        place([view], WANT)


def test_caps_at_their_edge() -> None:
    exact = node("a", cpus=1.0, memory_mib=512)  # 1 CPU x 4 overcommit: 4 sandboxes of 1
    assert place([exact], WANT, cpu_overcommit=1.0).name == "a"
    held = node("a", cpus=1.0, memory_mib=1024, sandboxes={"s": ("t", 0.5, 512)})
    assert place([held], Want("t", "python", 0.5, 512), cpu_overcommit=1.0).name == "a"
    with pytest.raises(ResourceExhaustedError):
        place([held], Want("t", "python", 0.6, 512), cpu_overcommit=1.0)


def test_labels_select() -> None:
    want = Want("t", "python", 1.0, 512, selector={"zone": "b"})
    assert place([node("a", labels={"zone": "a"}), node("b", labels={"zone": "b"})],
                 want).name == "b"
    with pytest.raises(ResourceExhaustedError, match="labels"):
        place([node("a", labels={"zone": "a"})], want)
    with pytest.raises(ResourceExhaustedError, match="none joined"):
        place([], WANT)


def test_pools_spread_over_nodes_by_name() -> None:
    pools = (PoolSpec.parse("python:namespaces=5/"), PoolSpec.parse("python=1"))
    assert spread_pools(pools, ["c", "a", "b"]) == {
        "a": "python:namespaces=2/,python=1", "b": "python:namespaces=2/",
        "c": "python:namespaces=1/"}
    assert spread_pools(pools, ["a"]) == {"a": "python:namespaces=5/,python=1"}
    assert spread_pools((), ["a", "b"]) == {"a": "", "b": ""}


@pytest.mark.parametrize("text", ["python=4", "python:gvisor=2/numpy+pandas", "python=2/",
                                  "acme/env:1@gvisor=3/", "acme/env:latest=1"])
def test_a_pool_spec_reads_back_as_written(text: str) -> None:
    assert PoolSpec.parse(PoolSpec.parse(text).text) == PoolSpec.parse(text)


def test_ray_node_names_become_corral_names() -> None:
    assert node_name("127.0.0.1") == "127.0.0.1"
    assert node_name("Worker_Node 7") == "worker-node-7"
    assert node_name("---") == "node"
    assert len(node_name("x" * 200)) == 64


def test_gpus_place_on_nodes_with_that_many_free_of_the_model() -> None:
    h200 = node("g1", gpus=(("NVIDIA H200", True), ("NVIDIA H200", False)))
    a100 = node("g2", gpus=(("NVIDIA A100-SXM4-80GB", True),))
    plain = node("c1")
    assert place([plain, h200, a100], Want("t", "python", 1.0, 512, gpus=1,
                                           gpu_model="h200")).name == "g1"
    assert place([plain, h200, a100], Want("t", "python", 1.0, 512, gpus=1,
                                           gpu_model="A100")).name == "g2"
    with pytest.raises(ResourceExhaustedError, match="and 2 GPU .*3 GPUs"):
        place([plain, h200, a100], Want("t", "python", 1.0, 512, gpus=2))
    # no GPU asked: a node without one when there is one that fits
    assert place([h200, a100, plain], WANT).name == "c1"
    assert place([h200], WANT).name == "g1"
