"""Sandboxes outlive their node: a node that crashed (SIGKILL) leaves them running, and the
next node on the same data dir adopts them, with their files, their processes and their
command ids. What cannot be adopted is torn down and reported in ``Node.lost``; a sandbox
whose node never comes back ends itself after the orphan grace."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.node import NodeSettings, SandboxState, SyncNode
from corral.node import records
from corral.runtime import GvisorOptions
from corral.runtime import _cgroups_unsafe as cgroups
from corral.runtime.gvisor.runtime import GvisorRuntime
from corral.runtime.host import mounts_under

from ..conftest import IMAGE_DIR, sandbox_data_dir


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: it sits in a 0700 folder sandbox uids cannot traverse.
    with sandbox_data_dir("corral-restart-") as path:
        yield path


def crashed_node(data_dir: Path, runtime: str, count: int = 1,
                 orphan_grace: float = 600.0) -> list[str]:
    """Start ``count`` sandboxes in a node of its own process, then SIGKILL that process.

    Each sandbox holds a file, /work/note, and runs ``sleep 1000`` (command id printed).
    """
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from corral.node import NodeSettings, SyncNode
        node = SyncNode(NodeSettings(data_dir=Path({str(data_dir)!r}),
                                     image_dir=Path({str(IMAGE_DIR)!r}),
                                     orphan_grace={orphan_grace!r}))
        for _ in range({count}):
            sb = node.create("python", runtime={runtime!r}, timeout=300)
            sb.files.write("/work/note", sb.id.encode())
            handle = sb.commands.start(["sleep", "1000"])
            print(sb.id, handle.id, flush=True)
        os.kill(os.getpid(), 9)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    lines = [line.split() for line in out.stdout.splitlines()]
    assert len(lines) == count and all(line[0].startswith("sbx-") for line in lines), out.stderr
    return [line[0] for line in lines]


def host_pids(settings: NodeSettings, sandbox_id: str) -> list[int]:
    return cgroups.SandboxCgroups(f"{settings.node_key}/{sandbox_id}").pids()


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_restarted_node_adopts_what_a_crashed_one_left(data_dir: Path, runtime: str,
                                                           python_image: str) -> None:
    (sandbox_id,) = crashed_node(data_dir, runtime)
    settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)
    assert host_pids(settings, sandbox_id), "the sandbox died with its node"
    with SyncNode(settings) as fresh:
        assert fresh.lost == {}
        sb = fresh.get(sandbox_id)
        assert sb.state is SandboxState.RUNNING and sb.info.runtime == runtime
        assert sb.files.read("/work/note") == sandbox_id.encode()
        (sleeper,) = sb.commands.list()
        assert sleeper.argv == ["sleep", "1000"]
        assert sb.commands.run("echo again").stdout == "again\n"
        # New commands get new ids; the old one is still reachable by its own.
        fresh_handle = sb.commands.start(["sleep", "1000"])
        assert fresh_handle.id > sleeper.id
        sb.commands.signal(sleeper.id, 9)
        wait_for(lambda: [p.id for p in sb.commands.list()] == [fresh_handle.id], 10)
        sb.kill()
        assert not (data_dir / "sandboxes" / sandbox_id).exists()
        assert not mounts_under(data_dir / "sandboxes")
        assert not host_pids(settings, sandbox_id)


def test_close_with_detach_hands_sandboxes_to_the_next_node(data_dir: Path, runtime: str,
                                                            python_image: str) -> None:
    settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)
    first = SyncNode(settings)
    sb = first.create("python", runtime=runtime, timeout=300)
    expires = sb.info.expires_at
    first.close(detach=True)
    with SyncNode(settings) as second:
        again = second.get(sb.id)
        assert again.info.expires_at == expires
        assert again.commands.run("echo still here").stdout == "still here\n"


def test_a_sandbox_is_adopted_whatever_platform_it_runs_on(data_dir: Path, runtime: str,
                                                          python_image: str) -> None:
    """gVisor: a sandbox started on ptrace is adopted by a node that would start new ones on
    systrap (adoption and teardown never run runsc, so no platform is assumed)."""
    if runtime != "gvisor":
        pytest.skip("a gVisor matter")
    first = GvisorRuntime(GvisorOptions(platform="ptrace"))
    second = GvisorRuntime(GvisorOptions())
    _, chosen = second.chosen()
    if chosen.name == "ptrace":
        pytest.skip("only ptrace works here: nothing to mix")
    settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)
    old = SyncNode(settings, runtimes={"gvisor": first})
    sb = old.create("python", runtime="gvisor", timeout=300)
    sb.files.write("/work/note", b"from ptrace")
    old.close(detach=True)
    with SyncNode(settings, runtimes={"gvisor": second}) as fresh:
        assert fresh.lost == {}
        again = fresh.get(sb.id)
        assert again.files.read("/work/note") == b"from ptrace"
        assert again.commands.run("echo adopted").stdout == "adopted\n"
        newer = fresh.create("python", runtime="gvisor", timeout=300)
        assert newer.commands.run("echo new").stdout == "new\n"
        assert "--platform=systrap" in _runsc_argv(newer.id)
        assert "--platform=ptrace" in _runsc_argv(sb.id)


def _runsc_argv(sandbox_id: str) -> str:
    """The command line of the runsc sandbox process serving ``sandbox_id``."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "runsc-sandbox" in cmdline and f"/{sandbox_id}/" in cmdline:
            return cmdline
    raise AssertionError(f"no runsc sandbox process for {sandbox_id}")


def test_what_died_meanwhile_is_swept_and_reported(data_dir: Path, runtime: str,
                                                   python_image: str) -> None:
    dead, broken, alive = crashed_node(data_dir, runtime, count=3)
    settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)
    assert cgroups.SandboxCgroups(f"{settings.node_key}/{dead}").kill()
    (data_dir / "sandboxes" / broken / records.RECORD_NAME).write_text('{"format": 1}')
    with SyncNode(settings) as fresh:
        assert [sb.id for sb in fresh.list()] == [alive]
        assert "no process is left" in fresh.lost[dead]
        assert "malformed record" in fresh.lost[broken]
        for gone in (dead, broken):
            assert not (data_dir / "sandboxes" / gone).exists()
            assert not host_pids(settings, gone)
        assert fresh.get(alive).commands.run("true").exit_code == 0


def test_a_sandbox_whose_node_never_returns_ends_itself(data_dir: Path, runtime: str,
                                                        python_image: str) -> None:
    (sandbox_id,) = crashed_node(data_dir, runtime, orphan_grace=1.0)
    settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)
    wait_for(lambda: not host_pids(settings, sandbox_id), 30)
    with SyncNode(settings) as fresh:
        assert fresh.list() == []
        assert sandbox_id in fresh.lost
        assert not (data_dir / "sandboxes" / sandbox_id).exists()


def test_with_no_orphan_grace_sandboxes_end_with_their_node(data_dir: Path, runtime: str,
                                                            python_image: str) -> None:
    (sandbox_id,) = crashed_node(data_dir, runtime, orphan_grace=0)
    settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)
    wait_for(lambda: not host_pids(settings, sandbox_id), 30)
