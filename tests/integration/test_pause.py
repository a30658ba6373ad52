"""Pausing and resuming real sandboxes, on each runtime (docs/pause.md).

gVisor: a checkpoint to disk, nothing of the sandbox left running or mounted while paused,
and a restore. namespaces: the cgroup freezer. On both: files, processes' memory and a code
context's variables are there after each of several cycles; a command running across a
pause goes on (its output stream is lost), and paused time does not count toward its
timeout; a paused sandbox can be killed, and survives a restart of its node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError, NotFoundError, SandboxNotRunningError
from corral.node import NodeSettings, SandboxState, SyncNode, SyncNodeSandbox
from corral.runtime._cgroups import CgroupView
from corral.runtime.host import mounts_under

from ..conftest import IMAGE_DIR, sandbox_data_dir

COUNTER = "n=0; while :; do n=$((n+1)); echo $n > /work/counter; sleep 0.1; done"
CYCLES = 50


@pytest.fixture
def own_data_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-pause-") as path:
        yield path


def counter(sb: SyncNodeSandbox) -> int:
    """The counter's value. The shell truncates the file before each write, so a read can
    fall between the two and find it empty: read again (bounded)."""
    for _ in range(100):
        text = sb.files.read("/work/counter").decode().strip()
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError("the counter file stayed empty")


def runs_on(sb: SyncNodeSandbox, since: int) -> None:
    """The counter goes past ``since``: the counting process runs."""
    wait_for(lambda: counter(sb) > since, 60)


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def directory_of(node: SyncNode, sandbox_id: str) -> Path:
    return node.node.sandboxes_dir / sandbox_id


def cgroup_of(node: SyncNode, sandbox_id: str) -> CgroupView:
    return CgroupView(f"{node.node.settings.node_key}/{sandbox_id}")


def assert_stopped_where_it_is(node: SyncNode, sandbox_id: str, runtime: str) -> None:
    """gVisor: nothing of it runs or is mounted (its memory and files are on disk);
    namespaces: its processes are frozen."""
    view = cgroup_of(node, sandbox_id)
    directory = directory_of(node, sandbox_id)
    if runtime == "gvisor":
        assert not view.pids() and view.unified is not None and not view.unified.exists()
        assert not mounts_under(directory)
        assert (directory / "snapshot" / "checkpoint.img").is_file()
    else:
        assert view.unified is not None
        assert "frozen 1" in (view.unified / "cgroup.events").read_text()


def test_files_memory_and_kernels_survive_pause_cycles(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime, timeout=600)
    try:
        sb.commands.run_background(["sh", "-c", COUNTER])
        assert sb.code.run("x = 0").error is None
        wait_for(lambda: sb.files.exists("/work/counter"), 60)
        node.resume(sb.id)  # running: nothing to do
        pauses, firsts = [], []
        for cycle in range(CYCLES):
            sb.files.write(f"/work/file-{cycle}", f"written before pause {cycle}")
            before = counter(sb)
            started = time.monotonic()
            node.pause(sb.id)
            pauses.append(time.monotonic() - started)
            node.pause(sb.id)  # paused: nothing to do
            assert sb.state is SandboxState.PAUSED and sb.is_paused
            assert_stopped_where_it_is(node, sb.id, runtime)
            with pytest.raises(SandboxNotRunningError, match="paused; resume it"):
                sb.commands.run("true")
            started = time.monotonic()
            node.resume(sb.id)
            assert sb.commands.run("true").exit_code == 0
            firsts.append(time.monotonic() - started)
            for earlier in range(cycle + 1):
                assert sb.files.read(f"/work/file-{earlier}") == (
                    f"written before pause {earlier}".encode())
            # The kernel's x lives in its memory, as does the shell's n.
            assert sb.code.run("x += 1; x").text == str(cycle + 1)
            after = counter(sb)
            assert after >= before, (before, after)  # its memory went on, not restarted
            runs_on(sb, after)
        print(f"\n{runtime}: pause {_spread(pauses)} s; resume -> first command "
              f"{_spread(firsts)} s over {CYCLES} cycles")
    finally:
        sb.kill()


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]:.3f}/{ordered[len(ordered) // 2]:.3f}/{ordered[-1]:.3f}"


def test_a_command_running_across_a_pause_goes_on(sandbox: SyncNodeSandbox, node: SyncNode
                                                  ) -> None:
    """Its output stream ends with the pause; the command goes on after the resume, and the
    paused time does not count toward its timeout (the agent's clock stands still)."""
    handle = sandbox.commands.start("while :; do sleep 0.1; done", timeout=3)
    node.pause(sandbox.id)
    with pytest.raises(SandboxNotRunningError, match="was paused"):
        handle.wait()
    time.sleep(4)  # past its timeout, had it run
    node.resume(sandbox.id)
    assert [p.id for p in sandbox.commands.list()] == [handle.id]
    wait_for(lambda: not sandbox.commands.list(), 60)  # its own 3 s still end it


#: Counts in /work/flood and writes 64 KiB to stdout per count: a follower that stops
#: reading (without stopping the output) would block it within ~2 MiB (the agent's window).
FLOOD = ("n=0; while :; do n=$((n+1)); echo $n > /work/flood; "
         "head -c 65536 /dev/zero; echo; echo line-$n; sleep 0.01; done")


def _flood_count(sb: SyncNodeSandbox) -> int:
    for _ in range(100):
        text = sb.files.read("/work/flood").decode().strip()
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError("the flood counter stayed empty")


def test_a_command_is_followed_again_after_a_pause(sandbox: SyncNodeSandbox, node: SyncNode
                                                   ) -> None:
    """``commands.connect`` follows a command whose stream the pause ended: its output from
    then on, its exit; closing the connection stops the output, and the command runs on."""
    handle = sandbox.commands.start(FLOOD, timeout=600)
    wait_for(lambda: sandbox.files.exists("/work/flood"), 60)
    with pytest.raises(InvalidArgumentError, match="already followed"):
        sandbox.commands.connect(handle.id)  # its starter follows it
    node.pause(sandbox.id)
    with pytest.raises(SandboxNotRunningError, match="was paused"):
        handle.wait()
    node.resume(sandbox.id)
    with pytest.raises(NotFoundError):
        sandbox.commands.connect(handle.id + 1000)
    again = sandbox.commands.connect(handle.id)
    seen: list[bytes] = []
    for event in again:
        seen.append(event.data)
        if sum(b"line-" in d for d in seen) >= 3:
            break
    assert any(b"line-" in d for d in seen)
    again.close()  # stops following: the command runs on, its output no longer sent
    count = _flood_count(sandbox)
    wait_for(lambda: _flood_count(sandbox) > count + 100, 120)  # ~6 MiB past: not blocked
    assert [p.id for p in sandbox.commands.list()] == [handle.id]
    last = sandbox.commands.connect(handle.id)
    last.kill()
    result = last.wait()
    assert result.signal == 9 or result.exit_code != 0
    wait_for(lambda: not sandbox.commands.list(), 60)


def test_kill_while_paused_removes_everything(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime, timeout=600)
    directory, cgroup = directory_of(node, sb.id), cgroup_of(node, sb.id)
    node.pause(sb.id)
    sb.kill()
    assert sb.state is SandboxState.STOPPED
    assert not directory.exists()
    assert not cgroup.pids() and (cgroup.unified is None or not cgroup.unified.exists())
    with pytest.raises(SandboxNotRunningError):
        sb.commands.run("true")


def test_a_paused_sandbox_survives_a_node_restart(own_data_dir: Path, runtime: str,
                                                  python_image: str) -> None:
    """gVisor: all of it is on disk; namespaces: its frozen processes stay. The next node
    adopts it paused; resumed, its files and memory are there. A sandbox adopted running
    (its agent on the socket) can be paused too."""
    settings = NodeSettings(data_dir=own_data_dir, image_dir=IMAGE_DIR)
    first = SyncNode(settings)
    sb = first.create("python", runtime=runtime, timeout=600)
    sb.files.write("/work/note", b"from the first node")
    sb.commands.run_background(["sh", "-c", COUNTER])
    wait_for(lambda: sb.files.exists("/work/counter"), 60)
    first.pause(sb.id)
    before = counter_on_disk(own_data_dir, sb.id, runtime)
    first.close(detach=True)
    second = SyncNode(settings)
    try:
        assert second.lost == {}
        again = second.get(sb.id)
        assert again.state is SandboxState.PAUSED
        second.resume(sb.id)
        assert again.files.read("/work/note") == b"from the first node"
        after = counter(again)
        assert before is None or after >= before, (before, after)  # memory went on
        runs_on(again, after)
        second.close(detach=True)  # handed over running: the next node's channel is the socket
        second = SyncNode(settings)
        again = second.get(sb.id)
        second.pause(sb.id)
        second.resume(sb.id)
        assert again.commands.run("cat /work/note").stdout == "from the first node"
        again.kill()
        assert not (own_data_dir / "sandboxes" / sb.id).exists()
    finally:
        second.close()


def counter_on_disk(data_dir: Path, sandbox_id: str, runtime: str) -> int | None:
    """The counter a paused gVisor sandbox left in its saved upper layer (read only: never
    change a paused sandbox's files); None for namespaces (its root is the sandbox's)."""
    if runtime != "gvisor":
        return None
    return int((data_dir / "sandboxes" / sandbox_id / "upper" / "work" / "counter")
               .read_text() or 0)


def test_a_resume_cut_short_is_adopted_paused(own_data_dir: Path, runtime: str,
                                              python_image: str) -> None:
    """gVisor: a node that died mid-resume (root mounted again, no restore yet) leaves a
    sandbox whose record says paused; the next node takes it back paused, unmounted, and
    resumes it."""
    if runtime != "gvisor":
        pytest.skip("a gVisor matter: a frozen sandbox has nothing to mount")
    settings = NodeSettings(data_dir=own_data_dir, image_dir=IMAGE_DIR)
    first = SyncNode(settings)
    sb = first.create("python", runtime=runtime, timeout=600)
    sb.files.write("/work/note", b"kept")
    first.pause(sb.id)
    gvisor = first.node.runtime("gvisor")
    handle = first.node.get(sb.id).handle
    gvisor._unpark(handle.spec)  # type: ignore[attr-defined]  # the resume's first step
    directory = directory_of(first, sb.id)
    assert mounts_under(directory)
    first.close(detach=True)
    with SyncNode(settings) as second:
        assert second.lost == {}
        again = second.get(sb.id)
        assert again.state is SandboxState.PAUSED
        assert not mounts_under(directory)
        second.resume(sb.id)
        assert again.files.read("/work/note") == b"kept"


#: A node in a process of its own that dies pausing a sandbox: once the runtime's part is
#: done (gVisor: checkpointed, its files not yet parked; namespaces: frozen), it says
#: "cut" and hangs, and the test kills it as a crash would (SIGKILL, nothing cleaned up).
CRASHING_NODE = """
import asyncio, sys, time
from pathlib import Path
from corral.node import NodeSettings, SyncNode
from corral.runtime.gvisor.runtime import GvisorRuntime
from corral.runtime.namespaces.runtime import NamespacesRuntime

data_dir, image_dir, runtime = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def park_and_die(self, spec):  # gVisor: the checkpoint is done, the parking never comes
    print("cut", flush=True)
    time.sleep(3600)

frozen = NamespacesRuntime.pause
async def freeze_and_die(self, sandbox):  # namespaces: frozen, never recorded paused
    await frozen(self, sandbox)
    print("cut", flush=True)
    await asyncio.sleep(3600)

GvisorRuntime._park = park_and_die
NamespacesRuntime.pause = freeze_and_die
node = SyncNode(NodeSettings(data_dir=data_dir, image_dir=image_dir))
sb = node.create("python", runtime=runtime, timeout=600)
sb.files.write("/work/note", b"written before the pause")
sb.commands.run_background(["sh", "-c", sys.argv[4]])
while not sb.files.exists("/work/counter"):
    time.sleep(0.05)
print(sb.id, flush=True)
node.pause(sb.id)
"""


def test_a_node_dying_mid_pause_leaves_it_paused_for_the_next(own_data_dir: Path,
                                                               runtime: str) -> None:
    """The next node finishes the pause (gVisor: parks its files) and adopts it paused: its
    files and memory come back at the resume."""
    process = subprocess.Popen([sys.executable, "-c", CRASHING_NODE, str(own_data_dir),
                                str(IMAGE_DIR), runtime, COUNTER], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        sandbox_id = process.stdout.readline().strip()
        assert sandbox_id.startswith("sbx-"), sandbox_id
        assert process.stdout.readline().strip() == "cut"
    finally:
        process.kill()  # the crash
        process.wait(timeout=60)
    directory = own_data_dir / "sandboxes" / sandbox_id
    assert json.loads((directory / "sandbox.json").read_text())["state"] == "running"
    with SyncNode(NodeSettings(data_dir=own_data_dir, image_dir=IMAGE_DIR)) as second:
        assert second.lost == {}
        sb = second.get(sandbox_id)
        assert sb.state is SandboxState.PAUSED
        assert "finished by the next node" in (sb.info.state_reason or "")
        assert not (directory / "pausing").exists()
        if runtime == "gvisor":
            assert_stopped_where_it_is(second, sandbox_id, runtime)
        second.resume(sandbox_id)
        assert sb.files.read("/work/note") == b"written before the pause"
        runs_on(sb, counter(sb))  # the counting shell's memory came back with it
        sb.kill()
