"""Lifecycle on every runtime: teardown leaves nothing, lifetimes end, crashes are reported."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from corral import InvalidArgumentError, SandboxNotRunningError
from corral.api.errors import AlreadyExistsError
from corral.node import NodeSettings, SandboxState, SyncNode, SyncNodeSandbox
from corral.runtime import _cgroups as cgroups
from corral.runtime.host import mounts_under

from ..conftest import IMAGE_DIR


def _cgroup_paths(node: SyncNode, sandbox_id: str) -> list[Path]:
    name = f"{cgroups.PARENT}/{node.node.settings.node_key}/{sandbox_id}"
    return [base / name for base in cgroups.cgroup_layout().hierarchies]


def _host_pids(node: SyncNode, sandbox_id: str) -> list[int]:
    layout = cgroups.cgroup_layout()
    assert layout.unified is not None
    procs = layout.unified / cgroups.PARENT / node.node.settings.node_key / sandbox_id
    return [int(p) for p in (procs / "cgroup.procs").read_text().split()]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_for(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_kill_leaves_no_process_mount_cgroup_or_directory(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime)
    sb.commands.start("sleep 1000 & sleep 1000 & wait")
    sb.files.write("/work/data", b"x" * 1_000_000)
    directory = node.node.sandboxes_dir / sb.id
    assert directory.exists() and mounts_under(directory)
    assert all(p.exists() for p in _cgroup_paths(node, sb.id)[-1:])
    pids = _host_pids(node, sb.id)
    assert pids
    sb.kill()
    sb.kill()  # idempotent
    assert sb.state is SandboxState.STOPPED
    assert not directory.exists()
    assert not mounts_under(directory)
    assert not any(p.exists() for p in _cgroup_paths(node, sb.id))
    # Killed processes linger as zombies until the host's init reaps them.
    _wait_for(lambda: not [p for p in pids if _alive(p)], 10)
    _wait_for(lambda: not _processes_mentioning(sb.id), 10)
    with pytest.raises(SandboxNotRunningError, match="killed by request"):
        sb.commands.run("true")


def test_lifetime_timeout_stops_the_sandbox(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime, timeout=2)
    assert sb.commands.run("echo alive").stdout == "alive\n"
    _wait_for(lambda: sb.state is SandboxState.STOPPED, 30)
    assert sb.stop_reason is not None and "timeout" in sb.stop_reason
    assert not (node.node.sandboxes_dir / sb.id).exists()
    with pytest.raises(SandboxNotRunningError, match="timeout"):
        sb.commands.run("true")


def test_set_timeout_extends_the_lifetime(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime, timeout=2)
    try:
        sb.set_timeout(60)
        time.sleep(3)
        assert sb.commands.run("true").exit_code == 0
    finally:
        sb.kill()


def test_agent_crash_is_reported_not_hung_on(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime)
    handle = sb.commands.start("sleep 1000")
    agent_pids = _host_pids(node, sb.id)
    # Kill the sandbox's processes from the host (for gVisor: the Sentry and gofer).
    for pid in agent_pids:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(SandboxNotRunningError):
        handle.wait()
    _wait_for(lambda: sb.state is SandboxState.STOPPED, 10)
    assert "agent exited" in (sb.stop_reason or "")
    assert not (node.node.sandboxes_dir / sb.id).exists()


def test_other_sandboxes_survive_a_kill(node: SyncNode, runtime: str,
                                         sandbox: SyncNodeSandbox) -> None:
    doomed = node.create("python", runtime=runtime)
    doomed.kill()
    assert sandbox.commands.run("echo still-here").stdout == "still-here\n"
    assert sandbox.id in [s.id for s in node.list()]
    assert doomed.id not in [s.id for s in node.list()]


def test_metadata_filters_list(node: SyncNode, runtime: str) -> None:
    a = node.create("python", runtime=runtime, metadata={"team": "red"})
    b = node.create("python", runtime=runtime, metadata={"team": "blue"})
    try:
        assert [s.id for s in node.list(metadata={"team": "red"})] == [a.id]
    finally:
        a.kill()
        b.kill()


def test_unreachable_data_dir_is_a_clear_error(tmp_path: Path, python_image: str) -> None:
    with SyncNode(NodeSettings(data_dir=tmp_path / "data", image_dir=IMAGE_DIR)) as private:
        with pytest.raises(InvalidArgumentError, match="not searchable"):
            private.create("python", runtime="namespaces")
        assert list((tmp_path / "data" / "sandboxes").iterdir()) == []


def test_a_data_dir_has_one_node(node: SyncNode) -> None:
    with pytest.raises(AlreadyExistsError, match="another Corral node"):
        SyncNode(node.node.settings)
    assert node.list() is not None  # the first node is unaffected


def test_concurrent_kills_all_wait_for_the_end(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime)
    inner = node.node.get(sb.id)

    async def kill_twice() -> None:
        await asyncio.gather(inner.kill(), inner.kill(), node.node.destroy(sb.id))

    node._portal.call(kill_twice)
    assert sb.state is SandboxState.STOPPED
    assert not (node.node.sandboxes_dir / sb.id).exists()
