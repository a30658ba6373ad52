"""Resource limits on every runtime: memory, pids, disk, inodes, CPU, output, bad requests.

What happens here when a sandbox hits a limit (measured on this host kind):

* memory — namespaces: the kernel OOM-kills the biggest process; the command ends with
  ``reason == "killed: memory limit N MiB"`` and the sandbox lives on. gVisor: the host
  OOM-kills the whole sandbox; the node must report it stopped with that same reason.
* pids — namespaces: forks past the limit fail with EAGAIN, the sandbox never holds more
  than its limit, and it works again once its processes end. gVisor: the host limit is the
  sandbox's own plus an allowance for gVisor's own tasks; forks never fail inside, and when
  the host limit is hit the whole sandbox dies; the node must say "pids limit".
* disk — both: writes fail with ENOSPC at ``disk_mib`` and at the tmpfs inode limit; an
  upload past the limit raises ResourceExhaustedError and leaves other files intact.

Every bomb is bounded in count and time, and a neighbour sandbox must answer throughout.
No test asserts a duration.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    Resources,
    SandboxError,
    SandboxNotRunningError,
)
from corral.node import SyncNode, SyncNodeSandbox
from corral.api.limits import MAX_CAPTURE
from corral.node import SandboxState
from corral.runtime._host import inode_limit

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024


@contextlib.contextmanager
def limited(node: SyncNode, runtime: str, **limits: object) -> Iterator[SyncNodeSandbox]:
    """A sandbox of its own with small limits, killed at the end."""
    sb = node.create("python", runtime=runtime, resources=Resources(**limits),  # type: ignore[arg-type]
                     timeout=600)
    try:
        yield sb
    finally:
        sb.kill()


def cgroup_file(node: SyncNode, sb: SyncNodeSandbox, controller: str, name: str) -> Path:
    return CGROUP_ROOT / controller / "corral" / node.node.settings.node_key / sb.id / name


def answers(sb: SyncNodeSandbox) -> None:
    """The sandbox runs a command to completion (round trip measured nowhere: no timing)."""
    r = sb.commands.run("true", timeout=60)
    assert r.exit_code == 0 and r.reason is None, r


def host_can_fork() -> None:
    assert subprocess.run(["true"], timeout=30).returncode == 0


def wait_until_stopped(sb: SyncNodeSandbox, attempts: int = 100) -> None:
    """Let the node finish recording a dead sandbox (bounded; no timing asserted)."""
    for _ in range(attempts):
        if sb.state in (SandboxState.STOPPING, SandboxState.STOPPED):
            return
        time.sleep(0.05)


# -- memory -------------------------------------------------------------------------------

MEMORY_BOMB = """
b = bytearray(1 << 30)
for i in range(0, len(b), 4096):
    b[i] = 1
print('survived')
"""


def test_memory_bomb(node: SyncNode, runtime: str, neighbour: SyncNodeSandbox) -> None:
    answers(neighbour)
    with limited(node, runtime, memory_mib=128) as sb:
        answers(sb)
        busy = neighbour.commands.start(["python3", "-c", "print(sum(range(3_000_000)))"])
        if runtime == "namespaces":
            r = sb.commands.run(["python3", "-c", MEMORY_BOMB], timeout=60)
            assert r.reason == "killed: memory limit 128 MiB", r
            assert r.signal == signal.SIGKILL and r.exit_code == 128 + signal.SIGKILL
            assert "survived" not in r.stdout
            answers(sb)  # only the biggest process died; the sandbox lives on
            assert sb.state is SandboxState.RUNNING
        else:
            with pytest.raises(SandboxNotRunningError):
                sb.commands.run(["python3", "-c", MEMORY_BOMB], timeout=60)
            wait_until_stopped(sb)
            info = sb.info
            assert info.state in (SandboxState.STOPPING.value, SandboxState.STOPPED.value)
            assert info.stop_reason == "killed: memory limit 128 MiB", info.stop_reason
            with pytest.raises(SandboxNotRunningError):
                sb.commands.run("true")
        assert busy.wait().stdout == f"{sum(range(3_000_000))}\n"
    answers(neighbour)
    host_can_fork()


# -- pids ---------------------------------------------------------------------------------

# Starts up to 500 sleeps, ignoring failed forks; reports started, failed and the number of
# processes its /proc shows at the peak; then kills what it started.
FORK_BOMB = """
import os, subprocess
procs, failed, errnos = [], 0, set()
for i in range(500):
    try:
        procs.append(subprocess.Popen(['sleep', '30']))
    except OSError as e:
        failed += 1
        errnos.add(e.errno)
seen = len([p for p in os.listdir('/proc') if p.isdigit()])
print(len(procs), failed, seen, sorted(errnos), flush=True)
for p in procs:
    p.kill()
for p in procs:
    p.wait()
"""


def test_fork_bomb(node: SyncNode, runtime: str, neighbour: SyncNodeSandbox) -> None:
    answers(neighbour)
    with limited(node, runtime, pids=64) as sb:
        answers(sb)
        if runtime == "namespaces":
            r = sb.commands.run(["python3", "-c", FORK_BOMB], timeout=20)
            assert r.exit_code == 0, r.stderr
            started, failed, seen, errnos = r.stdout.split(maxsplit=3)
            assert int(started) + int(failed) == 500
            assert 0 < int(started) < 64 and int(failed) > 0
            assert errnos.strip() == f"[{errno.EAGAIN}]"
            assert int(seen) <= 64
            events = cgroup_file(node, sb, "pids", "pids.events").read_text()
            assert events.startswith("max ") and int(events.split()[1]) > 0
            current = int(cgroup_file(node, sb, "pids", "pids.current").read_text())
            assert current <= 64
            answers(sb)
            assert sb.state is SandboxState.RUNNING
        else:
            # gVisor never fails a fork: the host pids limit (64 + gVisor's allowance) is hit
            # by its ptrace tasks and the whole sandbox dies.
            with pytest.raises(SandboxNotRunningError):
                sb.commands.run(["python3", "-c", FORK_BOMB], timeout=20)
            wait_until_stopped(sb)
            info = sb.info
            assert info.state in (SandboxState.STOPPING.value, SandboxState.STOPPED.value)
            assert info.stop_reason is not None and "pids limit" in info.stop_reason, (
                info.stop_reason)
    host_can_fork()
    answers(neighbour)


PID_FILLER = """
import os, time
end = time.time() + 8
while time.time() < end:
    try:
        if os.fork() == 0:
            time.sleep(max(0.0, end - time.time()))
            os._exit(0)
    except OSError:
        time.sleep(0.005)
"""


def test_exhausted_pids_are_reported_as_resource_exhausted(node: SyncNode, runtime: str) -> None:
    """With every pid taken by lingering processes, a new command is refused with
    ResourceExhaustedError (not an agent error or a bad-argument error), and the sandbox
    works again once those processes end."""
    if runtime != "namespaces":
        pytest.skip("gVisor never fails a fork; the whole sandbox dies (test_fork_bomb)")
    with limited(node, runtime, pids=64) as sb:
        # A filler takes every pid for 8 s, and retakes any that comes free meanwhile.
        sb.commands.run_background(["python3", "-c", PID_FILLER], timeout=30)
        errors: list[SandboxError] = []
        started = 0
        deadline = time.monotonic() + 6
        while len(errors) < 4 and time.monotonic() < deadline:
            try:
                sb.commands.run(["true"], timeout=20)
                started += 1
            except SandboxError as exc:
                errors.append(exc)
        assert errors, f"{started} commands started although the pids limit was reached"
        assert all(isinstance(e, ResourceExhaustedError) for e in errors), errors
        deadline = time.monotonic() + 30
        while True:
            try:
                answers(sb)
                break
            except SandboxError:
                assert time.monotonic() < deadline, "the sandbox never recovered"
                time.sleep(0.5)
        assert sb.state is SandboxState.RUNNING


# -- disk ---------------------------------------------------------------------------------


def test_disk_bomb(node: SyncNode, runtime: str) -> None:
    with limited(node, runtime, disk_mib=64) as sb:
        sb.files.write("/work/keep.txt", b"keep me")
        r = sb.commands.run("dd if=/dev/zero of=/work/fill bs=1M count=200", timeout=60)
        assert r.exit_code != 0 and "No space left on device" in r.stderr, r
        written = sb.commands.run(["python3", "-c", "import os; print(os.path.getsize("
                                   "'/work/fill'))"]).stdout
        assert int(written) <= 64 * MIB
        sb.commands.run(["rm", "-f", "/work/fill"])
        with pytest.raises(ResourceExhaustedError, match="disk limit"):
            sb.files.write("/work/big", b"x" * (100 * MIB))
        assert not sb.files.exists("/work/big")
        assert sb.files.read("/work/keep.txt") == b"keep me"
        assert sb.commands.run(["cat", "/work/keep.txt"]).stdout == "keep me"
        answers(sb)


INODE_BOMB = """
import os
os.makedirs('/work/many')
n = 0
try:
    while n < 300000:
        open(f'/work/many/{n}', 'x').close()
        n += 1
except OSError as e:
    print(n, e.errno)
else:
    print(n, 0)
"""


def test_inode_bomb(node: SyncNode, runtime: str) -> None:
    with limited(node, runtime, disk_mib=64) as sb:
        sb.files.write("/work/keep.txt", b"keep me")
        r = sb.commands.run(["python3", "-c", INODE_BOMB], timeout=120)
        assert r.exit_code == 0, r.stderr
        created, code = (int(v) for v in r.stdout.split())
        assert code == errno.ENOSPC
        assert 0 < created <= inode_limit(64)
        assert sb.files.read("/work/keep.txt") == b"keep me"
        sb.commands.run(["rm", "-rf", "/work/many"], timeout=120)
        sb.files.write("/work/after.txt", b"room again")
        assert sb.files.read("/work/after.txt") == b"room again"
    host_can_fork()


# -- CPU ----------------------------------------------------------------------------------


def test_cpu_quota_is_set(node: SyncNode, runtime: str) -> None:
    # gVisor: runsc writes these files from the OCI spec; namespaces: the node does.
    with limited(node, runtime, cpus=0.5) as sb:
        answers(sb)
        assert cgroup_file(node, sb, "cpu", "cpu.cfs_period_us").read_text().strip() == "100000"
        assert cgroup_file(node, sb, "cpu", "cpu.cfs_quota_us").read_text().strip() == "50000"


# -- output -------------------------------------------------------------------------------


def test_output_flood_is_truncated(sandbox: SyncNodeSandbox) -> None:
    r = sandbox.commands.run("yes | head -c 200000000", timeout=120)
    assert r.exit_code == 0 and r.truncated
    kept = r.stdout.encode()  # ASCII: the text is the bytes
    assert 0 < len(kept) <= MAX_CAPTURE
    assert kept == b"y\n" * (len(kept) // 2)
    answers(sandbox)
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


# -- bad requests -------------------------------------------------------------------------


def _bad_requests(node: SyncNode, runtime: str) -> list[tuple[str, Callable[[], object],
                                                                type[SandboxError], str]]:
    def create(*args: object, **kwargs: object) -> Callable[[], object]:
        kwargs.setdefault("runtime", runtime)
        return lambda: node.create(*args, **kwargs)  # type: ignore[arg-type]

    return [
        ("memory -1", lambda: Resources(memory_mib=-1), InvalidArgumentError, "memory"),
        ("pids 1e9", lambda: Resources(pids=10**9), InvalidArgumentError, "pids"),
        ("cpus 0", lambda: Resources(cpus=0), InvalidArgumentError, "cpus"),
        ("disk 0", lambda: Resources(disk_mib=0), InvalidArgumentError, "disk"),
        ("memory lots", lambda: Resources.parse(memory="lots"), InvalidArgumentError, "memory"),
        ("timeout 0", create("python", timeout=0), InvalidArgumentError, "timeout"),
        ("timeout 1e9", create("python", timeout=10**9), InvalidArgumentError, "timeout"),
        ("no image", create("no-such-image"), NotFoundError, "image"),
        ("runtime vmware", lambda: node.create("python", runtime="vmware"),
         InvalidArgumentError, "runtime"),
    ]


def test_bad_limits_are_refused_and_leave_nothing(node: SyncNode, runtime: str) -> None:
    sandboxes_dir = node.node.sandboxes_dir
    before = set(sandboxes_dir.iterdir())
    live = {sb.id for sb in node.node.list()}
    for label, call, expected, field in _bad_requests(node, runtime):
        with pytest.raises((InvalidArgumentError, NotFoundError)) as caught:
            call()
        assert type(caught.value) is expected, (label, caught.value)
        assert field in caught.value.message, (label, caught.value.message)
        assert set(sandboxes_dir.iterdir()) == before, label
    assert {sb.id for sb in node.node.list()} == live
