"""The benchmark's state rows (pause, resume, snapshots, fork, paused sandboxes per host) at
the smallest size: every row is there with samples, a paused gVisor sandbox holds no process
and no memory while a frozen namespaces one keeps both, and nothing is left behind — no
sandbox, no snapshot, no bare runsc folder, cgroup or process. No timing is judged here:
that is the benchmark report's job."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from corral.bench.state import StateBench, disk_bytes, measure_state
from corral.bench.stats import RuntimeResult
from corral.bench.suite import BenchConfig
from corral.node import Node, NodeSettings
from corral.node.images import ImageStore
from corral.runtime._cgroups import leftover_names

from ..conftest import IMAGE_DIR, sandbox_data_dir


def _naming(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def test_state_rows_are_measured_and_nothing_is_left(runtime: str, python_image: str) -> None:
    result = RuntimeResult(runtime=runtime, detail="test")
    steps: list[str] = []
    bench = StateBench(image=python_image, rootfs=ImageStore(IMAGE_DIR).get(python_image).rootfs,
                       iterations=1, warmup=0, fork=2, paused=2, settle=0.0)

    async def measure(data_dir: Path) -> None:
        async with Node(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as node:
            await measure_state(node, bench, result, steps.append)
            assert node.list() == []
            assert node.list_snapshots() == []
            assert list(node.sandboxes_dir.iterdir()) == []  # bare runsc rounds too
            assert leftover_names(node.settings.node_key) == set()
            assert _naming(str(node.sandboxes_dir)) == []

    with sandbox_data_dir("corral-bench-state-") as data_dir:
        asyncio.run(measure(data_dir))
    rows = {row.key: row for row in result.rows}
    expected = {f"{key}{suffix}" for suffix in ("", "_kernel")
                for key in ("pause", "resume_first_command", "paused_memory")}
    expected.add("paused_per_host")
    if runtime == "gvisor":
        expected |= {f"{key}{suffix}" for suffix in ("", "_kernel")
                     for key in ("snapshot", "snapshot_size")}
        expected |= {"fork_2", "forked_2"}
        assert result.notes == []
    else:
        assert result.notes == ["memory snapshots and fork are gVisor-only: no snapshot, "
                                "snapshot_size or fork rows"]
    assert set(rows) == expected, result.notes
    for row in rows.values():
        assert row.corral.n >= 1, row.key
        if not row.key.startswith("paused_memory"):
            assert min(row.corral.samples) > 0, row.key
        if row.key != "forked_2":
            assert row.bare is not None and min(row.bare.samples) > 0, row.key
    for key in ("snapshot_size", "snapshot_size_kernel", "paused_memory",
                "paused_memory_kernel", "paused_per_host"):
        if key in rows:
            assert rows[key].unit == "MiB", key
    for suffix in ("", "_kernel"):
        memory = rows[f"paused_memory{suffix}"]
        assert memory.extra["processes_running"] > 0
        if runtime == "gvisor":  # the cgroup is gone: nothing runs, nothing is held
            assert memory.extra["processes_paused"] == 0
            assert set(memory.corral.samples) == {0.0}
            assert float(memory.extra["disk_paused_mib"]) > 0  # its memory image
        else:  # frozen: its processes and memory stay
            assert memory.extra["processes_paused"] == memory.extra["processes_running"]
            assert min(memory.corral.samples) > 0
    per_host = rows["paused_per_host"]
    assert per_host.corral.n == 2 and per_host.extra["paused"] == 2
    assert per_host.extra["max_sandboxes"] == 1000
    assert 0 < int(per_host.extra["holds"]) <= 1000
    if runtime == "gvisor":
        assert per_host.extra["processes_left_paused"] == 0
        assert per_host.extra["memory_held_per_paused_mib"] == 0
        assert rows["fork_2"].extra == {"copies": 2}
    else:
        assert int(per_host.extra["holds_by_memory"]) > 0
    assert any("pause" in step for step in steps)


def test_disk_bytes_counts_blocks_once_and_stays_on_its_filesystem(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5000)
    with_link = disk_bytes(tmp_path)
    (tmp_path / "sub" / "a-again").hardlink_to(tmp_path / "a")
    (tmp_path / "link").symlink_to("/usr")
    assert disk_bytes(tmp_path) == with_link + (tmp_path / "link").lstat().st_blocks * 512
    assert with_link >= 15_000
    assert disk_bytes(tmp_path / "missing") == 0
    assert BenchConfig.quick().state_iterations == 1
