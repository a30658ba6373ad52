"""The benchmark's image rows at the smallest size: every row is there with samples, the
rebuild found its first steps cached, and nothing is left behind — no sandbox, no scratch
node's data dir or cgroups, no build context, no runsc process. No timing is judged here:
that is the benchmark report's job."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.bench import images
from corral.bench._scratch import scratch_dir
from corral.bench.images import ImageBench, measure_images
from corral.bench.primitives import BareRunsc, bwrap_run
from corral.bench.stats import RuntimeResult
from corral.bench.suite import BenchConfig
from corral.node import Node, NodeSettings, SandboxState
from corral.node.images import ImageStore
from corral.runtime._cgroups import PARENT, cgroup_layout, leftover_names

from ..conftest import IMAGE_DIR, sandbox_data_dir

SCRATCH = ("corral-bench-build-*", "corral-bench-context-*", "corral-bench-runsc-*")


def _scratch() -> set[Path]:
    tmp = Path(tempfile.gettempdir())
    return {path for pattern in SCRATCH for path in tmp.glob(pattern)}


def _naming(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def test_image_rows_are_measured_and_nothing_is_left(
        runtime: str, python_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _scratch()
    build_dirs: list[Path] = []

    @contextlib.contextmanager
    def recorded(prefix: str, image_dir: Path) -> Iterator[Path]:
        with scratch_dir(prefix, image_dir) as path:
            build_dirs.append(path)
            yield path

    monkeypatch.setattr(images, "scratch_dir", recorded)
    result = RuntimeResult(runtime=runtime, detail="test")
    steps: list[str] = []
    rootfs = ImageStore(IMAGE_DIR).get(python_image).rootfs

    async def measure(data_dir: Path) -> None:
        async with Node(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as node:
            with contextlib.ExitStack() as stack:
                if runtime == "gvisor":
                    runsc = stack.enter_context(BareRunsc(rootfs))
                    label, bare = "runsc run", runsc.run
                else:
                    label, bare = "bwrap", lambda argv: bwrap_run(rootfs, argv)
                bench = ImageBench(image=python_image, iterations=1, build_iterations=1,
                                   warmup=0, many_layers=2, bare=bare, bare_label=label)
                await measure_images(node, bench, result, steps.append)
            assert node.list(state=SandboxState.RUNNING) == []
            assert node.images.built.manifests() == []  # built on scratch nodes only

    with sandbox_data_dir("corral-bench-images-") as data_dir:
        asyncio.run(measure(data_dir))
    rows = {row.key: row for row in result.rows}
    assert list(rows) == ["image_build_cold", "image_rebuild_last_step",
                          "image_create_custom", "image_create_custom_2_layers"], result.notes
    for row in rows.values():
        assert row.corral.n == 1 and min(row.corral.samples) > 0, row.key
        assert row.bare is not None and row.bare.n == 1 and min(row.bare.samples) > 0, row.key
    assert rows["image_rebuild_last_step"].extra == {"steps": 3, "steps_cached": 2}
    assert "(2/3 steps cached)" in rows["image_rebuild_last_step"].label
    assert rows["image_create_custom"].extra == {"layers": 3}
    assert rows["image_create_custom_2_layers"].extra["layers"] == 2
    assert result.notes == []
    assert any("cold image build" in step for step in steps)
    # One node per cold build, one for the rebuild and the creates: each one deleted, its
    # cgroups and processes gone.
    assert len(build_dirs) == 2
    assert _scratch() <= before
    for path in build_dirs:
        assert not path.exists()
        key = NodeSettings(data_dir=path, image_dir=IMAGE_DIR).node_key
        assert leftover_names(key) == set()
        assert not [base for base in cgroup_layout().hierarchies
                    if (base / PARENT / key).exists()]
        assert _naming(str(path)) == []


def test_the_quick_suite_measures_the_create_row_alone(runtime: str,
                                                      python_image: str) -> None:
    quick = BenchConfig.quick(python_image, (runtime,))
    result = RuntimeResult(runtime=runtime, detail="test")
    rootfs = ImageStore(IMAGE_DIR).get(python_image).rootfs

    async def measure(data_dir: Path) -> None:
        async with Node(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as node:
            bench = ImageBench(image=python_image, iterations=1,
                               build_iterations=quick.image_build_iterations, warmup=0,
                               many_layers=quick.image_many_layers,
                               bare=lambda argv: bwrap_run(rootfs, argv), bare_label="bwrap")
            await measure_images(node, bench, result, lambda line: None)

    with sandbox_data_dir("corral-bench-images-") as data_dir:
        asyncio.run(measure(data_dir))
    assert [row.key for row in result.rows] == ["image_create_custom"]
