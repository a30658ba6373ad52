"""The state-over-time rows: pausing and resuming a sandbox, memory snapshots and fork, each
beside a bare primitive measured in the same run, and what a paused sandbox costs the host.

Pause, resume and snapshot are measured in rounds, each on a fresh sandbox, twice: an idle
sandbox, and one with a Jupyter kernel started (``code.run("x = 1")``; the kernel is
checked to still hold ``x`` after the resume). One round:

* (gVisor) ``snapshot``: :meth:`Node.snapshot`, how long the source stands still; the
  snapshot's size on disk (``snapshot_size``), then it is removed;
* the sandbox's processes and cgroup memory, running, then ``pause``: :meth:`Node.pause`,
  then the same read again (``paused_memory``: gVisor removes the cgroup, namespaces
  freezes it and its memory stays charged), and the disk its directory takes;
* ``resume_first_command``: :meth:`Node.resume` then ``commands.run(["true"])``;
* the sandbox is killed.

Beside each round, one bare round (the order swapped every round). gVisor: a bare
``runsc run --detach`` of a python (no Corral: an idle one,
:data:`corral.bench.checkpoint.IDLE_PYTHON`, beside the idle sandbox; one that imported
``ipykernel.kernelapp``, :data:`KERNEL_PYTHON`, beside the sandbox with a kernel) until it
is ready, then ``runsc checkpoint --leave-running`` (the snapshot's bare twin, and its
image's size), ``runsc checkpoint`` (the pause's: it ends the sandbox), and ``runsc restore
--detach`` of that image then a first ``runsc exec /bin/true`` (the resume's). Both
checkpoints use the runtime's flags, :data:`CHECKPOINT_FLAGS`. namespaces:
one bare ``bwrap`` of ``sleep`` in a cgroup of its own, frozen (``cgroup.freeze`` 1 until
``cgroup.events`` says frozen) and thawed (``cgroup.freeze`` 0, then a host fork+exec of
``/bin/true``: there is no exec into a bare bwrap) each round.

``fork_<n>`` (gVisor): :meth:`Node.fork` of one idle sandbox into ``n`` copies until every
copy answered ``commands.run(["true"])`` (all at once); the copies are killed at once after
each round. Beside it a bare fork: ``runsc checkpoint --leave-running`` of the bare idle
python, then ``n`` ``runsc restore --detach`` + ``runsc exec /bin/true`` at once (threads).

``paused_per_host``: ``paused`` sandboxes with a kernel (``x = 1``) started, 4 at a time,
then paused all at once. The disk each paused sandbox's directory takes (not crossing into
mounts), beside the cgroup memory each took running; the host's ``MemAvailable`` before,
with them running and with them paused; how many paused sandboxes the data dir's free
space would hold at that size, the host's available memory at what a paused one keeps
charged (namespaces), and the node's ``max_sandboxes`` (paused ones count toward it).

Every measure stops taking rounds once it has run :data:`MEASURE_BUDGET` seconds (with a
note), each Corral round runs under :data:`ROUND_TIMEOUT` and each bare step under
:data:`STEP_TIMEOUT`. Every sandbox made here is killed and every snapshot removed in
``finally`` blocks, on errors and Ctrl-C too; bare runsc sandboxes live in a folder of the
node's ``sandboxes/`` (``bench-bare-…``), whatever still names it is killed and the folder
deleted; a bare thread that is running when the caller is cancelled is waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from corral.api.errors import InternalError, SandboxError
from corral.node import Node, NodeSandbox
from corral.runtime.host import CgroupView, SandboxCgroups, mounts_under, teardown

from . import primitives, scale
from .checkpoint import IDLE_PYTHON
from .stats import Row, RuntimeResult, Stat, out_of_time, round_label

MIB = 1024 * 1024
KIB_PER_MIB = 1024
SANDBOX_LIFETIME = 1800.0
#: Longest one Corral round, one bare runsc step and one measure's rounds may take (s).
ROUND_TIMEOUT = 180.0
STEP_TIMEOUT = 60.0
READY_TIMEOUT = 120.0
MEASURE_BUDGET = 300.0
#: The most copies a fork row makes (each one is a whole sandbox).
MAX_CLONES = 10
#: The flags of the runtime's own checkpoints (pause, snapshot), given to the bare ones too.
CHECKPOINT_FLAGS = ("--compression=none", "--direct")
KERNEL_CELL = "x = 1"
#: The bare twin of a sandbox with a kernel: a python that imported what an ipykernel runs
#: (its memory, the checkpoint's work, is of that order), then marks itself ready.
KERNEL_PYTHON = ["/usr/bin/python3", "-c",
                 "import ipykernel.kernelapp, time\n"
                 "open('/dev/shm/ready', 'w').close()\n"
                 "time.sleep(86400)"]
SLEEP = ["/bin/sleep", "infinity"]
BARE_PREFIX = "bench-bare-"
#: Sandboxes started at once for ``paused_per_host``.
PAUSED_CLIENTS = 4
#: (row key suffix, what the rows call the sandbox, whether it runs a kernel)
VARIANTS = (("", "idle", False), ("_kernel", "kernel", True))

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StateBench:
    """What the state rows measure with.

    ``fork``: copies per fork round (0: no fork row; at most :data:`MAX_CLONES`);
    ``paused``: sandboxes paused at once for ``paused_per_host`` (0: no such row);
    ``settle``: seconds waited before the host's memory is read.
    """

    image: str
    rootfs: Path
    iterations: int
    warmup: int
    fork: int = MAX_CLONES
    paused: int = 10
    settle: float = 2.0


@dataclass
class _Made:
    """What the state measure made, so that all of it goes at the end."""

    sandboxes: list[NodeSandbox] = field(default_factory=list)
    snapshots: set[str] = field(default_factory=set)


async def measure_state(node: Node, bench: StateBench, result: RuntimeResult,
                        progress: Progress) -> None:
    """Add the state rows of ``result``'s runtime: pause, resume, paused memory and
    ``paused_per_host`` on both; snapshot, snapshot size and fork on gVisor alone."""
    if not 0 <= bench.fork <= MAX_CLONES:
        raise InternalError(f"a fork row makes 0 to {MAX_CLONES} copies, not {bench.fork}")
    gvisor = result.runtime == "gvisor"
    if not gvisor:
        result.notes.append("memory snapshots and fork are gVisor-only: no snapshot, "
                            "snapshot_size or fork rows")
    made = _Made()
    try:
        async with _bare(node, bench, gvisor) as bare:
            for suffix, what, kernel in VARIANTS:
                await _measure_cycles(node, bench, bare, made, result, progress,
                                      suffix, what, kernel)
            if gvisor and bench.fork > 0:
                assert isinstance(bare, _BareGvisor)
                await _measure_fork(node, bench, bare, made, result, progress)
        if bench.paused > 0:
            await _measure_paused(node, bench, made, result, progress)
    finally:
        await _clean(node, made)


# -- pause, resume and snapshot, round by round ---------------------------------------------


async def _measure_cycles(node: Node, bench: StateBench, bare: _BareGvisor | _BareFreezer,
                          made: _Made, result: RuntimeResult, progress: Progress,
                          suffix: str, what: str, kernel: bool) -> None:
    name = result.runtime
    gvisor = isinstance(bare, _BareGvisor)
    corral: dict[str, list[float]] = {}
    floor: dict[str, list[float]] = {}
    rounds = bench.warmup + bench.iterations
    deadline = time.monotonic() + MEASURE_BUDGET
    for i in range(rounds):
        if out_of_time(deadline, corral.get("pause", []), i, rounds,
                        f"pause/resume ({what})", result, MEASURE_BUDGET):
            break
        progress(f"{name}: pause, resume{', snapshot' if gvisor else ''} ({what}), "
                 f"{round_label(i, bench.warmup, rounds)}")
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            if side == 0:
                found = await _corral_cycle(node, bench.image, name, kernel, gvisor, made)
                into = corral
            else:
                found = await bare.cycle(kernel)
                into = floor
            if i >= bench.warmup:
                for key, value in found.items():
                    into.setdefault(key, []).append(value)

    if gvisor:
        bare_what = "bare python, ipykernel imported" if kernel else "bare idle python"
        result.rows += [
            Row(f"snapshot{suffix}", f"snapshot, source standing still ({what})",
                _stat(corral["snapshot"]), f"runsc checkpoint --leave-running ({bare_what})",
                _stat(floor["snapshot"])),
            Row(f"pause{suffix}", f"pause ({what})", _stat(corral["pause"]),
                f"runsc checkpoint ({bare_what})", _stat(floor["pause"])),
            Row(f"resume_first_command{suffix}", f"resume → first command ({what})",
                _stat(corral["resume_first"]), f"runsc restore → exec true ({bare_what})",
                _stat(floor["resume_first"])),
            Row(f"snapshot_size{suffix}", f"memory snapshot on disk ({what})",
                _stat(corral["snapshot_mib"]), f"runsc checkpoint image ({bare_what})",
                _stat(floor["snapshot_mib"]), unit="MiB"),
        ]
    else:
        result.rows += [
            Row(f"pause{suffix}", f"pause ({what})", _stat(corral["pause"]),
                "cgroup.freeze of a bare bwrap sleep", _stat(floor["pause"])),
            Row(f"resume_first_command{suffix}", f"resume → first command ({what})",
                _stat(corral["resume_first"]), "thaw of it + host fork+exec true",
                _stat(floor["resume_first"])),
        ]
    result.rows.append(Row(
        f"paused_memory{suffix}", f"cgroup memory while paused ({what})",
        _stat(corral["paused_mib"]), "the same sandbox, running", _stat(corral["running_mib"]),
        unit="MiB", extra={"processes_running": max(corral["running_processes"]),
                           "processes_paused": max(corral["paused_processes"]),
                           "disk_paused_mib": round(statistics.median(
                               corral["paused_disk_mib"]), 3)}))


async def _corral_cycle(node: Node, image: str, runtime: str, kernel: bool, gvisor: bool,
                        made: _Made) -> dict[str, float]:
    """One round on a fresh sandbox: (snapshot,) pause, resume → first command; killed."""
    found: dict[str, float] = {}
    try:
        async with asyncio.timeout(ROUND_TIMEOUT):
            sandbox = await _create(node, image, runtime, made)
            try:
                if kernel:
                    await sandbox.code.run(KERNEL_CELL)
                if gvisor:
                    started = time.perf_counter()
                    snapshot = await node.snapshot(sandbox.id)
                    found["snapshot"] = time.perf_counter() - started
                    made.snapshots.add(snapshot.id)
                    found["snapshot_mib"] = snapshot.size_bytes / MIB
                    await node.remove_snapshot(snapshot.id)
                    made.snapshots.discard(snapshot.id)
                found["running_processes"], found["running_mib"] = footprint(sandbox)
                started = time.perf_counter()
                await node.pause(sandbox.id)
                found["pause"] = time.perf_counter() - started
                found["paused_processes"], found["paused_mib"] = footprint(sandbox)
                found["paused_disk_mib"] = await asyncio.to_thread(
                    disk_bytes, sandbox.handle.spec.directory) / MIB
                started = time.perf_counter()
                await node.resume(sandbox.id)
                reply = await sandbox.commands.run(["true"])
                found["resume_first"] = time.perf_counter() - started
                if reply.exit_code != 0:
                    raise InternalError(f"`true` exited {reply.exit_code} in a resumed "
                                        f"{runtime} sandbox")
                if kernel:
                    text = (await sandbox.code.run("x")).text
                    if text != "1":
                        raise InternalError(f"a resumed {runtime} kernel answered x = "
                                            f"{text!r}, not 1")
            finally:
                await _kill(sandbox, made)
    except TimeoutError:
        raise InternalError(f"a pause/resume round took over {ROUND_TIMEOUT:g} s "
                            f"({runtime})") from None
    return found


def footprint(sandbox: NodeSandbox) -> tuple[int, float]:
    """(processes in the sandbox's cgroup, its cgroup memory in MiB): read only; (0, 0.0)
    where its cgroup is gone (a paused gVisor sandbox)."""
    view = CgroupView(sandbox.handle.spec.cgroup)
    return len(view.pids()), cgroup_memory_bytes(view) / MIB


def cgroup_memory_bytes(view: CgroupView) -> int:
    """The memory charged to a cgroup (v1 ``memory.usage_in_bytes``, or v2
    ``memory.current``; page cache included); 0 where there is no such cgroup."""
    files = [view.v1["memory"] / "memory.usage_in_bytes"] if "memory" in view.v1 else []
    if view.unified is not None:
        files.append(view.unified / "memory.current")
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text())
    return 0


# -- fork -------------------------------------------------------------------------------------


async def _measure_fork(node: Node, bench: StateBench, bare: _BareGvisor, made: _Made,
                        result: RuntimeResult, progress: Progress) -> None:
    count = bench.fork
    corral: list[float] = []
    forked: list[float] = []
    floor: list[float] = []
    rounds = bench.warmup + bench.iterations
    deadline = time.monotonic() + MEASURE_BUDGET
    # Every copy is a whole sandbox, and the bare round makes as many: room for both.
    need_kib = scale.MEMORY_FLOOR_KIB + count * 300 * KIB_PER_MIB
    source = await _create(node, bench.image, result.runtime, made)
    try:
        for i in range(rounds):
            if out_of_time(deadline, corral, i, rounds, f"fork of {count}", result, MEASURE_BUDGET):
                break
            if primitives.mem_available_kib() < need_kib:
                result.notes.append(f"fork of {count}: stopped after {i} of {rounds} rounds: "
                                    f"the host had under {need_kib // KIB_PER_MIB} MiB "
                                    "available")
                break
            progress(f"gvisor: fork of {count} → every copy answered, "
                     f"{round_label(i, bench.warmup, rounds)}")
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                if side == 0:
                    total, returned = await _corral_fork(node, source, count, made)
                    if i >= bench.warmup:
                        corral.append(total)
                        forked.append(returned)
                else:
                    seconds = await scale.run_to_end(bare.fork, count)
                    if i >= bench.warmup:
                        floor.append(seconds)
    finally:
        await _kill(source, made)
    extra: dict[str, float | str] = {"copies": count}
    result.rows += [
        Row(f"fork_{count}", f"fork of {count} → every copy answered (idle)", _stat(corral),
            f"checkpoint --leave-running + {count} × restore → exec true",
            _stat(floor), extra=extra),
        Row(f"forked_{count}", f"↳ Node.fork returned ({count} copies running)",
            _stat(forked), extra=extra),
    ]


async def _corral_fork(node: Node, source: NodeSandbox, count: int,
                       made: _Made) -> tuple[float, float]:
    """(fork → every copy answered, fork → fork returned); the copies killed at once."""
    clones: list[NodeSandbox] = []
    try:
        async with asyncio.timeout(ROUND_TIMEOUT):
            started = time.perf_counter()
            clones = await node.fork(source.id, count, timeout=SANDBOX_LIFETIME)
            made.sandboxes += clones
            returned = time.perf_counter() - started
            replies = await asyncio.gather(*(c.commands.run(["true"]) for c in clones))
            total = time.perf_counter() - started
    except TimeoutError:
        raise InternalError(f"a fork of {count} took over {ROUND_TIMEOUT:g} s") from None
    finally:
        await _kill_all(clones, made)
    if len(clones) != count or any(reply.exit_code != 0 for reply in replies):
        raise InternalError(f"a fork of {count} gave {len(clones)} copies, or one of them "
                            "failed `true`")
    return total, returned


# -- paused sandboxes per host ----------------------------------------------------------------


async def _measure_paused(node: Node, bench: StateBench, made: _Made, result: RuntimeResult,
                          progress: Progress) -> None:
    name = result.runtime
    count = bench.paused
    floor_kib = max(scale.MEMORY_FLOOR_KIB, primitives.mem_available_kib() // 10)
    sandboxes: list[NodeSandbox] = []
    try:
        before = primitives.mem_available_kib()
        progress(f"{name}: {count} sandboxes to pause at once")
        stopped = ""
        left_to_make = count

        async def maker() -> None:
            nonlocal stopped, left_to_make
            while left_to_make > 0 and not stopped:
                left_to_make -= 1
                if primitives.mem_available_kib() < floor_kib:
                    stopped = f"the host had under {floor_kib // KIB_PER_MIB} MiB available"
                    return
                sandbox = await _create(node, bench.image, name, made)
                sandboxes.append(sandbox)
                await sandbox.code.run(KERNEL_CELL)

        async with asyncio.timeout(MEASURE_BUDGET):
            await asyncio.gather(*(maker() for _ in range(min(PAUSED_CLIENTS, count))))
        await asyncio.sleep(bench.settle)
        running_kib = primitives.mem_available_kib()
        running = [footprint(sb)[1] for sb in sandboxes]
        progress(f"{name}: pausing {len(sandboxes)} sandboxes at once")
        started = time.perf_counter()
        async with asyncio.timeout(MEASURE_BUDGET):
            await asyncio.gather(*(node.pause(sb.id) for sb in sandboxes))
        pause_all = time.perf_counter() - started
        await asyncio.sleep(bench.settle)
        paused_kib = primitives.mem_available_kib()
        left = [footprint(sb) for sb in sandboxes]
        disk = [disk_bytes(sb.handle.spec.directory) / MIB for sb in sandboxes]
    finally:
        progress(f"{name}: killing {len(sandboxes)} paused sandboxes")
        await _kill_all(sandboxes, made)
    if stopped:
        result.notes.append(f"paused per host: stopped at {len(sandboxes)} of {count} "
                            f"sandboxes: {stopped}")
    if not sandboxes:
        raise InternalError(f"no {name} sandbox could be started to pause")

    free_mib = shutil.disk_usage(node.settings.data_dir).free / MIB
    per_disk = statistics.fmean(disk)
    by_disk = int(free_mib / per_disk) if per_disk > 0 else 0
    held = statistics.fmean(m for _, m in left)  # memory a paused one keeps charged
    max_sandboxes = node.settings.max_sandboxes
    extra: dict[str, float | str] = {
        "paused": len(sandboxes), "requested": count, "max_sandboxes": max_sandboxes,
        "disk_free_mib": round(free_mib, 1), "disk_per_paused_mib": round(per_disk, 3),
        "holds_by_disk": by_disk if per_disk > 0 else "no limit",
        "memory_held_per_paused_mib": round(held, 2),
        "processes_left_paused": sum(p for p, _ in left),
        "pause_all_seconds": round(pause_all, 3),
        "mem_available_before_mib": round(before / KIB_PER_MIB, 1),
        "mem_available_running_mib": round(running_kib / KIB_PER_MIB, 1),
        "mem_available_paused_mib": round(paused_kib / KIB_PER_MIB, 1),
        "memory_freed_by_pause_mib": round((paused_kib - running_kib) / KIB_PER_MIB, 1)}
    limits = [max_sandboxes] + ([by_disk] if per_disk > 0 else [])
    if held > 0:
        by_memory = int(paused_kib / KIB_PER_MIB / held)
        extra["holds_by_memory"] = by_memory
        limits.append(by_memory)
    else:
        extra["holds_by_memory"] = "no limit (no memory held)"
    holds = min(limits)
    bound = ("max_sandboxes" if holds == max_sandboxes
             else "disk" if per_disk > 0 and holds == by_disk else "memory")
    extra["holds"] = holds
    extra["holds_bound_by"] = bound
    result.rows.append(Row(
        "paused_per_host", f"disk per paused sandbox, kernel ({len(sandboxes)} paused; "
        f"host holds ~{holds:,}, by {bound})", _stat(disk), "cgroup memory of each, running",
        _stat(running), unit="MiB", extra=extra))


def disk_bytes(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk: no link followed, no mount below it
    entered (a running sandbox's tmpfs is memory), a hard-linked file counted once."""
    try:
        device = os.lstat(folder).st_dev
    except FileNotFoundError:
        return 0
    mounted = {str(point) for point in mounts_under(folder)}  # a bind keeps its st_dev
    seen: set[int] = set()
    total = 0
    for parent, dirs, files in os.walk(folder):
        kept = []
        for entry in (*dirs, *files):
            path = os.path.join(parent, entry)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if info.st_dev != device or os.path.realpath(path) in mounted:
                continue  # a mount point: not this folder's files
            if entry in dirs:
                kept.append(entry)
            elif info.st_nlink > 1:
                if info.st_ino in seen:
                    continue
                seen.add(info.st_ino)
            total += info.st_blocks * 512
        dirs[:] = kept
    return total


# -- the bare primitives ----------------------------------------------------------------------


class _BareGvisor:
    """Bare runsc of an idle python in rounds of its own, each in a folder of ``work``."""

    def __init__(self, runsc: primitives.BareRunsc, work: Path) -> None:
        self.runsc = runsc
        self.work = work
        #: The bundle of the idle python (False) and of the one with ipykernel (True).
        self.bundles = {kernel: self._bundle(work / f"bundle-{name}", argv) for kernel, name, argv
                        in ((False, "idle", IDLE_PYTHON), (True, "kernel", KERNEL_PYTHON))}
        self.rounds = 0

    def _bundle(self, bundle: Path, argv: list[str]) -> Path:
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(self.runsc.config(argv, bundle)))
        return bundle

    async def cycle(self, kernel: bool) -> dict[str, float]:
        return await scale.run_to_end(self._cycle, self.bundles[kernel])

    def _round(self) -> Path:
        self.rounds += 1
        path = self.work / f"round-{self.rounds}"
        path.mkdir()
        return path

    def _cycle(self, bundle: Path, stop: threading.Event) -> dict[str, float]:
        """Checkpoint --leave-running, checkpoint, restore → exec true, of one python."""
        work = self._round()
        found: dict[str, float] = {}
        try:
            state = work / "state"
            self._start(state, "idle", bundle)
            kept, parked = work / "kept", work / "parked"
            started = time.perf_counter()
            self._run(state, "checkpoint --leave-running", "checkpoint", "--leave-running",
                      *CHECKPOINT_FLAGS, "--image-path", str(kept), "idle")
            found["snapshot"] = time.perf_counter() - started
            found["snapshot_mib"] = disk_bytes(kept) / MIB
            started = time.perf_counter()
            self._run(state, "checkpoint", "checkpoint", *CHECKPOINT_FLAGS, "--image-path",
                      str(parked), "idle")
            found["pause"] = time.perf_counter() - started
            restored = work / "state-restored"
            restored.mkdir()
            started = time.perf_counter()
            self._run(restored, "restore --detach", "restore", "--detach", "--image-path",
                      str(parked), "--bundle", str(bundle), "restored")
            self._run(restored, "exec", "exec", "restored", "/bin/true")
            found["resume_first"] = time.perf_counter() - started
            return found
        finally:
            self._drop(work)

    def fork(self, count: int, stop: threading.Event) -> float:
        """Checkpoint --leave-running, then ``count`` restores → exec true at once."""
        work = self._round()
        try:
            state = work / "state"
            bundle = self.bundles[False]
            self._start(state, "source", bundle)
            image = work / "image"

            def clone(i: int) -> None:
                if stop.is_set():
                    raise InternalError("the bare fork was stopped")
                where = work / f"state-{i}"
                where.mkdir()
                self._run(where, "restore --detach", "restore", "--detach", "--image-path",
                          str(image), "--bundle", str(bundle), f"clone-{i}")
                self._run(where, "exec", "exec", f"clone-{i}", "/bin/true")

            started = time.perf_counter()
            self._run(state, "checkpoint --leave-running", "checkpoint", "--leave-running",
                      *CHECKPOINT_FLAGS, "--image-path", str(image), "source")
            with ThreadPoolExecutor(count, thread_name_prefix="bench-fork") as pool:
                list(pool.map(clone, range(count)))
            return time.perf_counter() - started
        finally:
            self._drop(work)

    def _start(self, state: Path, container: str, bundle: Path) -> None:
        """``runsc run --detach`` of ``bundle``'s python; returns once it marked itself
        ready."""
        state.mkdir()
        self._run(state, "run --detach", "run", "--detach", "--bundle", str(bundle), container)
        probe = self.runsc.argv(state, "exec", container, "/bin/test", "-e", "/dev/shm/ready")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if subprocess.run(probe, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=STEP_TIMEOUT,
                              check=False).returncode == 0:
                return
            time.sleep(0.02)
        raise InternalError(f"the bare python was not ready within {READY_TIMEOUT:g} s")

    def _run(self, state: Path, what: str, *command: str) -> None:
        # stderr to a file: a detached sandbox keeps it open, a pipe would never end.
        argv = self.runsc.argv(state, *command)
        with tempfile.TemporaryFile() as log:
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=log,
                                      timeout=STEP_TIMEOUT, check=False)
            except subprocess.TimeoutExpired as exc:
                raise InternalError(f"bare runsc {what} did not finish within "
                                    f"{STEP_TIMEOUT:g} s") from exc
            if done.returncode != 0:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip()[-1000:]
                raise InternalError(f"bare runsc {what} failed (exit status "
                                    f"{done.returncode}): {tail}")

    @staticmethod
    def _drop(work: Path) -> None:
        primitives.kill_naming(str(work))
        shutil.rmtree(work, ignore_errors=True)


class _BareFreezer:
    """One bare ``bwrap`` of ``sleep`` in a cgroup of its own, frozen and thawed in turn.

    Started, frozen and thawed on the event loop's thread: bwrap dies with the thread that
    started it (``--die-with-parent``), and a freeze takes well under a millisecond."""

    def __init__(self, node: Node, rootfs: Path) -> None:
        sandbox_id = f"{BARE_PREFIX}{secrets.token_hex(6)}"
        self.directory = node.sandboxes_dir / sandbox_id
        self.cgroup = SandboxCgroups(f"{node.settings.node_key}/{sandbox_id}")
        self.directory.mkdir(mode=0o700)
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self.cgroup.create(memory_mib=1024, cpus=1.0, pids=1024)
            self.process = primitives.bwrap_start_idle(rootfs, SLEEP, self.cgroup)
        except BaseException:
            self.close()
            raise

    async def cycle(self, kernel: bool) -> dict[str, float]:
        """Freeze, then thaw + a host ``/bin/true`` (the same for either variant)."""
        started = time.perf_counter()
        if not self.cgroup.freeze():
            raise InternalError("a bare bwrap could not be frozen within 5 s")
        pause = time.perf_counter() - started
        started = time.perf_counter()
        self.cgroup.thaw()
        primitives.host_exec()
        return {"pause": pause, "resume_first": time.perf_counter() - started}

    def close(self) -> None:
        with contextlib.suppress(SandboxError, OSError):
            teardown(self.directory, self.cgroup.name)
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.wait(5)


@contextlib.asynccontextmanager
async def _bare(node: Node, bench: StateBench,
                gvisor: bool) -> AsyncIterator[_BareGvisor | _BareFreezer]:
    """The runtime's bare primitive; everything it started gone afterwards."""
    if not gvisor:
        freezer = _BareFreezer(node, bench.rootfs)
        try:
            yield freezer
        finally:
            freezer.close()
        return
    # In the node's data dir: the same filesystem as Corral's checkpoints (and O_DIRECT,
    # which --direct needs, works there; it does not on a tmpfs).
    work = node.sandboxes_dir / f"{BARE_PREFIX}state-{secrets.token_hex(6)}"
    work.mkdir(mode=0o700)
    try:
        with primitives.BareRunsc(bench.rootfs) as runsc:
            yield _BareGvisor(runsc, work)
    finally:
        _BareGvisor._drop(work)


# -- helpers ----------------------------------------------------------------------------------


async def _create(node: Node, image: str, runtime: str, made: _Made) -> NodeSandbox:
    sandbox = await node.create(image, runtime=runtime, timeout=SANDBOX_LIFETIME)
    made.sandboxes.append(sandbox)
    return sandbox


async def _kill(sandbox: NodeSandbox, made: _Made) -> None:
    await _kill_all([sandbox], made)


async def _kill_all(sandboxes: list[NodeSandbox], made: _Made) -> None:
    """Kill them (shielded from a cancel, bounded) and forget them."""
    try:
        await scale.kill_all(sandboxes)
    finally:
        gone = {id(sb) for sb in sandboxes}
        made.sandboxes[:] = [sb for sb in made.sandboxes if id(sb) not in gone]


async def _clean(node: Node, made: _Made) -> None:
    """What an error or a cancel left: sandboxes killed, snapshots removed."""
    await scale.kill_all(list(made.sandboxes))
    made.sandboxes.clear()
    for snapshot_id in list(made.snapshots):
        with contextlib.suppress(SandboxError):
            await asyncio.shield(node.remove_snapshot(snapshot_id))
        made.snapshots.discard(snapshot_id)


def _stat(samples: list[float]) -> Stat:
    if not samples:
        raise InternalError("a state measure has no samples (iterations must be at least 1)")
    return Stat(tuple(samples))

