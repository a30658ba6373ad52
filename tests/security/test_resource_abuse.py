"""Category 5, resource abuse: fork bomb, memory bomb, disk fill, inode exhaustion, output
flood, CPU spin. Each runs in a sandbox of its own with small limits while a thread keeps
running commands in the victim next to it: the victim must answer every time (within a
generous bound: "it answered", never how fast), its latency is reported at the end of the
run, the abuse is stopped by the limit it hits, and the host can still fork.

The details of each limit are tested in ``tests/integration/test_limits.py``; here the
point is the neighbour and the host while the abuse runs.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral import Resources, SandboxNotRunningError
from corral.node import SandboxState, SyncNode, SyncNodeSandbox

from ._checks import Victim
from .conftest import record_latency

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The victim must answer each command within this: a bound on "it answered", not a goal.
ANSWER_BOUND = 60.0
LIMITS = Resources(memory_mib=256, pids=64, disk_mib=64, cpus=0.5)

FORK_BOMB = """
import os, time
end = time.monotonic() + 8
while time.monotonic() < end:
    try:
        if os.fork() == 0:
            time.sleep(8)
            os._exit(0)
    except OSError:
        time.sleep(0.01)
"""
MEMORY_BOMB = """
chunks = []
while True:
    chunks.append(bytearray(16 << 20))
    for i in range(0, len(chunks[-1]), 4096):
        chunks[-1][i] = 1
"""
DISK_FILL = "dd if=/dev/zero of=/work/fill bs=1M count=500; df /work | tail -1"
INODE_FLOOD = """
import os
os.makedirs('/work/many', exist_ok=True)
n = 0
try:
    while n < 100000:
        open(f'/work/many/{n}', 'x').close()
        n += 1
except OSError as e:
    print(n, e.errno)
"""
OUTPUT_FLOOD = "yes corral-flood | head -c 100000000"
CPU_SPIN = """
import multiprocessing, time
def spin():
    end = time.monotonic() + 6
    while time.monotonic() < end:
        pass
procs = [multiprocessing.Process(target=spin) for _ in range(4)]
[p.start() for p in procs]
[p.join() for p in procs]
"""


@contextmanager
def victim_pinged(victim: Victim) -> Iterator[list[float]]:
    """Run ``true`` in the victim in a loop meanwhile; yields the round trips (seconds)."""
    samples: list[float] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def ping() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                r = victim.sandbox.commands.run("true", timeout=ANSWER_BOUND)
                assert r.exit_code == 0, r
            except BaseException as exc:  # reported below, in the test's thread
                failures.append(exc)
                return
            samples.append(time.monotonic() - start)
            stop.wait(0.05)

    thread = threading.Thread(target=ping, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(ANSWER_BOUND + 10)
    assert not thread.is_alive(), "the victim stopped answering"
    assert not failures, f"the victim failed while its neighbour was abused: {failures[0]!r}"
    assert samples, "the victim never answered"


def _cgroup(node: SyncNode, sb: SyncNodeSandbox, controller: str, name: str) -> Path:
    return CGROUP_ROOT / controller / "corral" / node.node.settings.node_key / sb.id / name


def _stopped_by(sb: SyncNodeSandbox, *words: str) -> None:
    """gVisor: a limit the Sentry hits ends the whole sandbox, with the reason recorded."""
    for _ in range(200):
        if sb.state in (SandboxState.STOPPING, SandboxState.STOPPED):
            break
        time.sleep(0.05)
    reason = sb.stop_reason or ""
    assert any(w in reason for w in words), reason


def _abuse(name: str, node: SyncNode, runtime: str, sb: SyncNodeSandbox) -> None:
    """Run one abuse and check the limit that stopped it."""
    if name == "fork bomb":
        try:
            sb.commands.run(["python3", "-c", FORK_BOMB], timeout=30)
        except SandboxNotRunningError:
            assert runtime == "gvisor"
            # Whichever the forks hit first: the host tasks or the memory they take.
            _stopped_by(sb, "pids limit", "memory limit")
            return
        assert runtime == "namespaces"
        events = _cgroup(node, sb, "pids", "pids.events").read_text()
        assert int(events.split()[1]) > 0, events  # forks were refused at the limit
    elif name == "memory bomb":
        try:
            r = sb.commands.run(["python3", "-c", MEMORY_BOMB], timeout=60)
        except SandboxNotRunningError:
            assert runtime == "gvisor"  # the 2022 build: the host OOM-kills the sandbox
            _stopped_by(sb, "memory limit")
            return
        if runtime == "gvisor":
            # gVisor 20240729 sizes the sandbox's memory to its limit: allocations past it
            # fail inside (the program ends), nothing is OOM-killed, and the sandbox lives on.
            assert r.exit_code != 0 and r.reason is None, r
            total = sb.commands.run("head -1 /proc/meminfo").stdout.split()
            assert total[1] == str(LIMITS.memory_mib * 1024), total
        else:
            assert r.reason == f"killed: memory limit {LIMITS.memory_mib} MiB", r
    elif name == "disk fill":
        r = sb.commands.run(DISK_FILL, timeout=120)
        assert "No space left on device" in r.stderr, r
    elif name == "inode flood":
        r = sb.commands.run(["python3", "-c", INODE_FLOOD], timeout=120)
        assert r.stdout.split()[1] == "28", r  # ENOSPC, at the inode limit
    elif name == "output flood":
        r = sb.commands.run(OUTPUT_FLOOD, timeout=120)
        assert r.exit_code == 0 and r.truncated, r.exit_code
    elif name == "cpu spin":
        sb.commands.run(["python3", "-c", CPU_SPIN], timeout=60)
        stat = dict(line.split() for line in _cgroup(node, sb, "cpu", "cpu.stat").read_text()
                    .splitlines())
        assert int(stat["nr_throttled"]) > 0, stat  # the quota held it back
    if sb.state is SandboxState.RUNNING:
        assert sb.commands.run("echo alive", timeout=60).stdout == "alive\n"


@pytest.mark.parametrize("attack", ["fork bomb", "memory bomb", "disk fill", "inode flood",
                                    "output flood", "cpu spin"])
def test_abuse_is_contained_and_the_neighbour_answers(node: SyncNode, runtime: str,
                                                      victim: Victim, attack: str) -> None:
    sb = node.create("python", runtime=runtime, resources=LIMITS, timeout=600)
    try:
        with victim_pinged(victim) as samples:
            _abuse(attack, node, runtime, sb)
        record_latency(runtime, attack, samples)
    finally:
        sb.kill()
    assert subprocess.run(["true"], timeout=30).returncode == 0  # the host can still fork
    victim.assert_unharmed()
