"""GPUs as a scheduled resource: a node with a fake driver tree (two fake H200s) on the
fake runtime, which takes GPUs as a real runtime does but binds nothing. Exclusive
assignment, admission refusals and their words, release on stop and pause, resume that
takes the same GPUs back or fails saying who holds them, records and adoption, pools."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError, ResourceExhaustedError
from corral.api.resources import Resources
from corral.node import Node, NodeSettings, SandboxState, records
from corral.node.gpus import GpuScheduler, recorded
from corral.node.pools import PoolSpec
from corral.runtime.gpu import GpuHost
from tests.fakes.gpu import DRIVER, make_driver_tree
from tests.fakes.runtime import FakeRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]
S = SandboxState


class GpuFakeRuntime(FakeRuntime):
    """The fake runtime, able to take GPUs (it records the spec's files, binds nothing)."""

    def gpu_problem(self, driver: str) -> str | None:
        return None


@pytest.fixture
def gpu_runtime() -> GpuFakeRuntime:
    return GpuFakeRuntime()


@pytest.fixture
def driver_tree(tmp_path: Path) -> tuple[Path, GpuHost]:
    root = tmp_path / "host"
    root.mkdir()
    return root, make_driver_tree(root, gpus=2)


@pytest.fixture
async def gpu_node(node_settings: NodeSettings, gpu_runtime: GpuFakeRuntime,
                   driver_tree: tuple[Path, GpuHost]):  # type: ignore[no-untyped-def]
    root, host = driver_tree
    async with Node(node_settings, runtimes={"fake": gpu_runtime}, gpus=host,
                    gpu_root=root) as started:
        yield started


def _gpu(n: int | str) -> Resources:
    return Resources.parse(gpu=n)


async def test_a_gpu_sandbox_gets_its_own_gpu_and_the_drivers_files(
        gpu_node: Node, gpu_runtime: GpuFakeRuntime) -> None:
    first = await gpu_node.create("python", resources=_gpu(1))
    second = await gpu_node.create("python", resources=_gpu("H200"))
    assert recorded(first.handle.extra) == (0,) and recorded(second.handle.extra) == (1,)
    assert gpu_node.gpus.holders() == {0: first.id, 1: second.id}
    spec = first.handle.spec
    assert spec.gpu is not None
    assert [Path(d.path).name for d in spec.gpu.devices] == ["nvidiactl", "nvidia-uvm",
                                                             "nvidia0"]
    assert f"libcuda.so.{DRIVER}" in {name for _, name in spec.gpu.libraries}
    assert first.env["LD_LIBRARY_PATH"].startswith("/usr/local/nvidia/lib64")
    assert first.env["PATH"].endswith(":/usr/local/nvidia/bin")
    assert records.read(spec.directory).extra["gpus"] == [0]
    plain = await gpu_node.create("python")
    assert plain.handle.spec.gpu is None and "gpus" not in plain.handle.extra
    for sandbox in (first, second, plain):
        await sandbox.kill()
    assert gpu_node.gpus.holders() == {}


async def test_a_create_past_the_free_gpus_is_refused_until_one_stops(gpu_node: Node) -> None:
    both = await gpu_node.create("python", resources=_gpu(2))
    with pytest.raises(ResourceExhaustedError, match="2 of this node's 2 matching GPUs are "
                       "held by 1 other sandbox"):
        await gpu_node.create("python", resources=_gpu(1))
    await both.kill()
    again = await gpu_node.create("python", resources=_gpu(1))
    assert recorded(again.handle.extra) == (0,)
    await again.kill()


@pytest.mark.parametrize("gpu,message", [
    (3, "gpu asks for 3 GPUs; this node has 2 (NVIDIA H200)"),
    ("A100", "this node has no A100 GPU (it has: NVIDIA H200)"),
    ("h200:3", "gpu asks for 3 h200 GPUs; this node has 2"),
])
async def test_what_the_node_can_never_serve_is_an_invalid_argument(
        gpu_node: Node, gpu: int | str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        await gpu_node.create("python", resources=_gpu(gpu))
    assert gpu_node.gpus.holders() == {}


async def test_a_gpu_on_a_node_without_one_says_why(node: Node) -> None:
    """The tests' own hosts have no GPU: the real discovery's reason is in the error."""
    with pytest.raises(InvalidArgumentError, match="this node has no GPU a sandbox can be "
                       "given: no NVIDIA driver is loaded"):
        await node.create("python", resources=_gpu(1))
    assert (await node.create("python", resources=_gpu(0))).handle.spec.gpu is None


async def test_a_runtime_that_cannot_pass_gpus_is_named(
        node_settings: NodeSettings, fake_runtime: FakeRuntime,
        driver_tree: tuple[Path, GpuHost]) -> None:
    root, host = driver_tree
    async with Node(node_settings, runtimes={"fake": fake_runtime}, gpus=host,
                    gpu_root=root) as node:
        with pytest.raises(InvalidArgumentError, match="the fake runtime cannot give this "
                           "sandbox a GPU: the fake runtime cannot pass GPUs"):
            await node.create("python", resources=_gpu(1))


async def test_a_pause_gives_the_gpu_back_and_a_resume_takes_it_again(gpu_node: Node) -> None:
    sandbox = await gpu_node.create("python", resources=_gpu(2))
    await gpu_node.pause(sandbox.id)
    assert gpu_node.gpus.holders() == {}
    await gpu_node.resume(sandbox.id)
    assert gpu_node.gpus.holders() == {0: sandbox.id, 1: sandbox.id}
    assert (await sandbox.commands.run("echo on")).stdout == "on\n"
    await sandbox.kill()


async def test_a_resume_that_waits_for_a_pause_takes_the_gpu_back(gpu_node: Node) -> None:
    sandbox = await gpu_node.create("python", resources=_gpu(1))
    await asyncio.gather(gpu_node.pause(sandbox.id), gpu_node.resume(sandbox.id))
    if sandbox.state is S.PAUSED:  # the resume ran first (nothing to do), then the pause
        assert gpu_node.gpus.holders() == {}
        await gpu_node.resume(sandbox.id)
    assert sandbox.state is S.RUNNING
    assert gpu_node.gpus.holders() == {0: sandbox.id}
    with pytest.raises(ResourceExhaustedError):
        await gpu_node.create("python", resources=_gpu(2))
    await sandbox.kill()


async def test_a_resume_whose_gpu_was_taken_fails_and_stays_paused(gpu_node: Node) -> None:
    paused = await gpu_node.create("python", resources=_gpu(1))
    await gpu_node.pause(paused.id)
    taker = await gpu_node.create("python", resources=_gpu(1))
    assert recorded(taker.handle.extra) == (0,)  # the first free one: the paused one's
    with pytest.raises(ResourceExhaustedError, match=f"GPU \\(/dev/nvidia0\\) is held by "
                       f"{taker.id} since its pause; it stays paused"):
        await gpu_node.resume(paused.id)
    assert paused.state is S.PAUSED
    assert gpu_node.gpus.holders() == {0: taker.id}
    await taker.kill()
    await gpu_node.resume(paused.id)
    assert gpu_node.gpus.holders() == {0: paused.id}
    await paused.kill()


async def test_the_next_node_adopts_the_gpus_its_sandboxes_hold(
        node_settings: NodeSettings, gpu_runtime: GpuFakeRuntime,
        driver_tree: tuple[Path, GpuHost]) -> None:
    root, host = driver_tree
    first = Node(node_settings, runtimes={"fake": gpu_runtime}, gpus=host, gpu_root=root)
    await first.start()
    try:
        sandbox = await first.create("python", resources=_gpu(1), timeout=600)
    finally:
        await first.close(detach=True)
    body = json.loads((sandbox.handle.spec.directory / records.RECORD_NAME).read_text())
    assert body["extra"]["gpus"] == [0] and body["resources"]["gpus"] == 1
    async with Node(node_settings, runtimes={"fake": gpu_runtime}, gpus=host,
                    gpu_root=root) as second:
        assert second.lost == {}
        assert second.gpus.holders() == {0: sandbox.id}
        other = await second.create("python", resources=_gpu(1))
        assert recorded(other.handle.extra) == (1,)
        with pytest.raises(ResourceExhaustedError):
            await second.create("python", resources=_gpu(1))


async def test_a_warm_pool_of_gpu_sandboxes_holds_its_gpus_and_hands_them_out(
        node_settings: NodeSettings, gpu_runtime: GpuFakeRuntime,
        driver_tree: tuple[Path, GpuHost]) -> None:
    root, host = driver_tree
    settings = NodeSettings(data_dir=node_settings.data_dir, image_dir=node_settings.image_dir,
                            tune_cgroups=False,
                            pools=(PoolSpec(image="python", runtime="fake", size=1,
                                            resources=_gpu(1), warm=None),))
    async with Node(settings, runtimes={"fake": gpu_runtime}, gpus=host,
                    gpu_root=root) as node:
        pool = node.pools[0]
        deadline = time.monotonic() + 60
        while pool.stats.ready < 1:  # bounded: a pool that never fills fails the test
            assert time.monotonic() < deadline, f"the pool never filled: {pool.stats}"
            await asyncio.sleep(0.05)
        assert len(node.gpus.holders()) == 1
        sandbox = await node.create("python", resources=_gpu(1))
        assert recorded(sandbox.handle.extra) in ((0,), (1,))
        assert node.gpus.holders()[recorded(sandbox.handle.extra)[0]] == sandbox.id
        await sandbox.kill()


def test_the_scheduler_refuses_to_hand_out_a_gpu_twice() -> None:
    host = GpuHost(gpus=(), driver=None, reason="none here")
    scheduler = GpuScheduler(host)
    assert scheduler.acquire("sbx-a", Resources(), GvisorLike()) is None  # asks for none
    with pytest.raises(InvalidArgumentError, match="none here"):
        scheduler.acquire("sbx-a", _gpu(1), GvisorLike())
    scheduler.take_back("sbx-a", (0,))
    with pytest.raises(ResourceExhaustedError, match="held by sbx-a"):
        scheduler.take_back("sbx-b", (0,))
    assert scheduler.release("sbx-a") == (0,) and scheduler.release("sbx-a") == ()


class GvisorLike(GpuFakeRuntime):
    name = "gvisor-like"


@pytest.mark.parametrize("extra,expected", [
    ({"gpus": [0, 3]}, (0, 3)), ({}, ()), ({"gpus": "0"}, ()), ({"gpus": [True, -1, 999, 2]},
                                                              (2,)),
    ({"gpus": list(range(100))}, ()),
])
def test_recorded_gpus_are_checked(extra: dict[str, object], expected: tuple[int, ...]) -> None:
    assert recorded(extra) == expected


def test_a_pool_spec_names_its_gpus_after_a_semicolon() -> None:
    assert PoolSpec.parse("python:namespaces=2/;gpu=1").resources == Resources(gpus=1)
    spec = PoolSpec.parse("acme/env:1@namespaces=1/numpy;gpu=H200:2")
    assert spec.resources == Resources(gpus=2, gpu_model="H200")
    assert spec.warm == ("numpy",) and spec.image == "acme/env:1"
    assert PoolSpec.parse("python=1").resources == Resources()
    for bad in ("python=1;gpu=9", "python=1;gpu=", "python=1;gpu=a/b", "python=1;gpus=1",
                "python=1/os;gpu=1;gpu=1"):
        with pytest.raises(InvalidArgumentError):
            PoolSpec.parse(bad)
