"""The benchmark's scale rows (warm pools, throughput, density, checkpoint/restore) at the
smallest size: every row is there with samples, and nothing is left behind — no sandbox,
no bare idle sandbox or its cgroup, no scratch data dir, no runsc process. No timing is
judged here: that is the benchmark report's job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.bench import network, pools
from corral.bench._scratch import scratch_dir
from corral.api.errors import InternalError
from corral.bench.primitives import (BareRunsc, bwrap_output, bwrap_run, spawn_probe_argv,
                                     spawn_times)
from corral.bench.stats import RuntimeResult
from corral.bench.suite import BenchConfig, measure_scale
from corral.node import Node, NodeSettings, SandboxState
from corral.node.images import ImageStore
from corral.runtime._cgroups import PARENT, cgroup_layout, leftover_names

from ..conftest import IMAGE_DIR, sandbox_data_dir

TINY = BenchConfig(pool_iterations=1, pool_warmup=0, cold_pandas_iterations=1, burst=2,
                   clients=(2,), creates_per_client=1, min_creates=2, density=2,
                   checkpoint_iterations=1, settle=0.0)
SCRATCH = ("corral-bench-pool-*", "corral-bench-checkpoint-*", "corral-bench-runsc-*")


def _scratch() -> set[Path]:
    tmp = Path(tempfile.gettempdir())
    return {path for pattern in SCRATCH for path in tmp.glob(pattern)}


def _runsc_naming(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def test_scale_rows_are_measured_and_nothing_is_left(
        runtime: str, python_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _scratch()
    pool_dirs: list[Path] = []

    @contextlib.contextmanager
    def recorded(prefix: str, image_dir: Path) -> Iterator[Path]:
        with scratch_dir(prefix, image_dir) as path:
            pool_dirs.append(path)
            yield path

    monkeypatch.setattr(pools, "scratch_dir", recorded)
    result = RuntimeResult(runtime=runtime, detail="test")
    steps: list[str] = []
    image = ImageStore(IMAGE_DIR).get(python_image)

    async def measure(data_dir: Path) -> None:
        async with Node(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as node:
            with contextlib.ExitStack() as stack:
                if runtime == "gvisor":
                    runsc = stack.enter_context(BareRunsc(image.rootfs))
                    label, bare = "runsc run", runsc.run
                else:
                    label, bare = "bwrap", lambda argv: bwrap_run(image.rootfs, argv)
                await measure_scale(node, image, TINY, result, steps.append, label, bare)
            assert node.list(state=SandboxState.RUNNING) == []
            assert list(node.sandboxes_dir.iterdir()) == []  # bare idle sandboxes too
            assert leftover_names(node.settings.node_key) == set()
            assert _runsc_naming(str(node.sandboxes_dir)) == []

    with sandbox_data_dir("corral-bench-scale-") as data_dir:
        asyncio.run(measure(data_dir))
    keys = {row.key for row in result.rows}
    expected = {"pool_import_pandas", "cold_import_pandas", "pool_pss_warm_kernel",
                "pool_acquire_first_command", "pool_acquire_vs_cold", "pool_burst",
                "pool_pss_no_kernel", "create_throughput_2", "idle_pss"}
    if runtime == "gvisor":
        expected |= {f"{row}{workload}" for workload in ("", "_idle") for row in (
            "checkpoint", "restore", "restore_first_command", "restore_clone")}
    assert keys == expected, result.notes
    for row in result.rows:
        assert row.corral.n >= 1 and min(row.corral.samples) > 0, row.key
        if row.bare is not None:
            assert min(row.bare.samples) > 0, row.key
    burst = next(row for row in result.rows if row.key == "pool_burst")
    assert burst.rate is not None and burst.rate.count == 2 and burst.extra["pool_hits"] == 2
    idle = next(row for row in result.rows if row.key == "idle_pss")
    assert idle.unit == "MiB" and idle.extra["live"] == 2 and idle.bare is not None
    assert result.notes == []
    assert any("burst" in step for step in steps)
    assert _scratch() <= before
    assert len(pool_dirs) == 2  # one pool with warm kernels, one without
    for path in pool_dirs:  # the pool nodes' cgroups are gone too
        key = NodeSettings(data_dir=path, image_dir=IMAGE_DIR).node_key
        assert not [base for base in cgroup_layout().hierarchies
                    if (base / PARENT / key).exists()]


def test_the_spawn_floor_is_timed_inside_a_bare_sandbox(runtime: str, python_image: str) -> None:
    image = ImageStore(IMAGE_DIR).get(python_image)
    argv = spawn_probe_argv(3)
    with contextlib.ExitStack() as stack:
        if runtime == "gvisor":
            printed = stack.enter_context(BareRunsc(image.rootfs)).output(argv)
        else:
            printed = bwrap_output(image.rootfs, argv)
    times = spawn_times(printed)
    assert len(times) == 3 and all(0 < t < 60 for t in times)
    with pytest.raises(InternalError, match="not a list of times"):
        spawn_times('["3 ms"]')


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables")
def test_the_network_rows_are_measured_and_nothing_is_left(runtime: str,
                                                          python_image: str) -> None:
    result = RuntimeResult(runtime=runtime, detail="test")
    with sandbox_data_dir("corral-bench-net-") as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)

        async def measure() -> None:
            async with Node(settings) as node:
                await network.measure_network(node, python_image, 1, 0, result, print)
                assert node.list() == []

        asyncio.run(measure())
        assert not [n for n in os.listdir("/run/netns")
                    if n.startswith(f"corral-{settings.node_key}-")]
    rows = {row.key: row for row in result.rows}
    assert set(rows) == {"network_create", "network_connect", "network_download_64mib"}
    assert all(row.corral.samples and row.bare is not None and row.bare.samples
               for row in rows.values())
    assert not [n for n in os.listdir("/run/netns") if n.startswith("ctest-inet-")]
