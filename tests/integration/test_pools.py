"""Warm pools: ready sandboxes handed out by create, bound to the request at hand-out, with a
kernel that already imported its modules; refilled in the background; never listed; and
never a reason for a create to fail. Admission control refuses what cannot even queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from corral.api.resources import Resources
from corral.node import Node, NodeSettings, SyncNode
from corral.node.pools import Pool, PoolSpec
from corral.runtime import _cgroups_unsafe as cgroups

from ..conftest import IMAGE_DIR, sandbox_data_dir


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-pools-") as path:
        yield path


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def only_pool(node: SyncNode) -> Pool:
    (pool,) = node.node.pools
    return pool


def test_pool_spec_parsing() -> None:
    assert PoolSpec.parse("python:gvisor=4") == PoolSpec("python", 4, "gvisor")
    assert PoolSpec.parse("python=2/numpy+scipy.linalg").warm == ("numpy", "scipy.linalg")
    assert PoolSpec.parse("python=2/").warm is None
    assert len(PoolSpec.parse_list("python=1, minimal:namespaces=3/")) == 2
    for bad in ("python", "python=-1", "python=99999", "py thon=1", "python=1/os;rm",
                "python:gvisor=1/__import__('os')", "python=1/a..b"):
        with pytest.raises(InvalidArgumentError):
            PoolSpec.parse(bad)


def test_a_warm_pool_hands_out_a_ready_sandbox(data_dir: Path, runtime: str,
                                               python_image: str) -> None:
    settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                            pools=(PoolSpec("python", 1, runtime),))
    with SyncNode(settings) as node:
        pool = only_pool(node)
        wait_for(lambda: pool.stats.ready == 1, 120)
        assert node.list() == []  # pooled sandboxes are the node's own
        sb = node.create("python", runtime=runtime, env={"GREETING": "hi"},
                         metadata={"who": "me"}, timeout=60)
        assert pool.stats.hits == 1
        info = sb.info
        assert info.metadata == {"who": "me"}
        assert 55 < info.expires_at.timestamp() - time.time() <= 60
        assert [s.id for s in node.list()] == [sb.id] and node.get(sb.id) is not None
        assert sb.commands.run("echo $GREETING").stdout == "hi\n"
        # Its kernel already imported pandas, and it sees the request's env.
        ex = sb.code.run("import os, sys; (os.environ['GREETING'], 'pandas' in sys.modules)")
        assert ex.error is None and ex.text == "('hi', True)"
        # The pool refills; what it holds stays hidden.
        wait_for(lambda: pool.stats.ready == 1, 120)
        hidden = set(node.node._sandboxes) - {sb.id}
        assert len(hidden) == 1
        with pytest.raises(NotFoundError):
            node.get(hidden.pop())
        # Another size of sandbox is not the pool's: a cold start.
        other = node.create("python", runtime=runtime, resources=Resources(memory_mib=256))
        assert pool.stats.hits == 1 and other.id not in hidden
    assert not list((data_dir / "sandboxes").iterdir())  # close stopped the pool's too


def test_an_unhealthy_pooled_sandbox_is_never_handed_out(data_dir: Path, runtime: str,
                                                         python_image: str) -> None:
    settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                            pools=(PoolSpec("python", 1, runtime, warm=None),))
    with SyncNode(settings) as node:
        pool = only_pool(node)
        wait_for(lambda: pool.stats.ready == 1, 120)
        (pooled,) = node.node._sandboxes
        # Freeze it: its agent cannot answer the health check.
        groups = cgroups.SandboxCgroups(f"{settings.node_key}/{pooled}")
        frozen = groups.unified / "cgroup.freeze" if groups.unified else None
        assert frozen is not None and frozen.exists()
        frozen.write_text("1")
        sb = node.create("python", runtime=runtime)
        assert sb.id != pooled and pool.stats.unhealthy == 1
        assert sb.commands.run("true").exit_code == 0


def test_admission_control_refuses_what_cannot_queue(data_dir: Path, python_image: str) -> None:
    settings = replace(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR), max_starting=1,
                       start_queue=1)

    async def burst() -> list[object]:
        async with Node(settings) as node:
            results = await asyncio.gather(
                *(node.create("python", runtime="namespaces") for _ in range(4)),
                return_exceptions=True)
            for result in results:
                if not isinstance(result, BaseException):
                    await result.kill()
            return results

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, ResourceExhaustedError)]
    assert len(refused) == 2, results  # one starting, one waiting, two refused at once
    assert "waiting to start" in str(refused[0])
    with pytest.raises(InvalidArgumentError):
        NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR, max_starting=0)
