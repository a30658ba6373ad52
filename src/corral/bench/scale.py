"""Corral at scale: creation throughput under concurrent clients, and idle density.

* **Throughput**: ``clients`` concurrent clients each loop create → first command
  (``true``) → kill until ``creates`` sandboxes were made; the rate is creates / wall time.
  Beside it, the same number of bare runs (``runsc run`` / ``bwrap`` of ``/bin/true``,
  which include their own teardown) by as many threads at once.
* **Density**: ``live`` idle sandboxes are started (8 at a time) and held; then the PSS of
  each (``Pss`` of ``/proc/<pid>/smaps_rollup`` summed over every host process in its
  cgroup: for gVisor the Sentry, gofer and ptrace stubs) is read. Beside it, as many bare
  idle sandboxes (``runsc run --detach`` / ``bwrap`` of ``sleep``) in cgroups of their own,
  measured the same way, one set after the other so both never share the host. Creation
  stops early, and says why, when the host's available memory falls under a floor.

Everything started here is torn down in ``finally`` blocks, within bounded waits, on
errors and on Ctrl-C too. Bare idle sandboxes live in the node's ``sandboxes`` folder and
under its cgroups, so a node on the same data dir sweeps any a crash left.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from corral.api.errors import InternalError, SandboxError
from corral.node import Node
from corral.node import NodeSandbox
from corral.runtime.host import CgroupView, SandboxCgroups, teardown

from . import primitives
from .stats import Rate, Row, RuntimeResult, Stat

SANDBOX_LIFETIME = 1800.0
TRUE = ["/bin/true"]
SLEEP = ["/bin/sleep", "infinity"]
KIB_PER_MIB = 1024
#: Sandboxes started at once while filling the host for the density measure.
DENSITY_CLIENTS = 8
#: Creation stops once the host has less memory available than this (KiB), or 10 % of it.
MEMORY_FLOOR_KIB = 3 * 1024 * 1024
#: Bounded waits for tearing everything down (seconds).
TEARDOWN_TIMEOUT = 300.0
BARE_PREFIX = "bench-bare-"

Progress = Callable[[str], None]
T = TypeVar("T")
BareRun = Callable[[list[str]], float]


async def measure_throughput(node: Node, image: str, clients: tuple[int, ...],
                             creates: tuple[int, int], bare: BareRun, bare_label: str,
                             result: RuntimeResult, progress: Progress) -> None:
    """Add one ``create_throughput_<clients>`` row per concurrency to ``result``.

    ``creates``: (per client, at least) for each batch.
    """
    name = result.runtime
    per_client, least = creates
    for width in clients:
        count = max(least, width * per_client)
        progress(f"{name}: creation throughput, {width} clients, {count} creates")
        latencies, wall = await _corral_batch(node, name, image, width, count)
        progress(f"{name}: bare throughput, {width} at once, {count} runs")
        bare_latencies, bare_wall = await asyncio.to_thread(bare_batch, bare, width, count)
        result.rows.append(Row(
            f"create_throughput_{width}", f"creation throughput, {width} clients",
            Stat(tuple(latencies)), f"{bare_label} /bin/true, {width} at once",
            Stat(tuple(bare_latencies)), rate=Rate(count, wall, bare_wall),
            extra={"clients": width, "creates": count}))


async def _corral_batch(node: Node, runtime: str, image: str, width: int,
                        count: int) -> tuple[list[float], float]:
    """``width`` clients looping create → ``true`` → kill until ``count`` creates started."""
    latencies: list[float] = []
    left = count

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            sandbox = await node.create(image, runtime=runtime, timeout=SANDBOX_LIFETIME)
            try:
                reply = await sandbox.commands.run(["true"])
                latencies.append(time.perf_counter() - started)
            finally:
                await sandbox.kill()
            if reply.exit_code != 0:
                raise InternalError(f"`true` exited {reply.exit_code} in a {runtime} sandbox")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(width)))
    return latencies, time.perf_counter() - started


def bare_batch(bare: BareRun, width: int, count: int) -> tuple[list[float], float]:
    """``count`` bare runs of ``/bin/true``, ``width`` at a time (threads)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="bench-bare") as pool:
        latencies = list(pool.map(lambda _: bare(TRUE), range(count)))
    return latencies, time.perf_counter() - started


async def measure_density(node: Node, image: str, rootfs: Path, live: int, settle: float,
                          runsc: primitives.BareRunsc | None, result: RuntimeResult,
                          progress: Progress) -> None:
    """Add the ``idle_pss`` row: PSS per idle sandbox with ``live`` of them running."""
    name = result.runtime
    floor = max(MEMORY_FLOOR_KIB, primitives.mem_available_kib() // 10)
    sandboxes: list[NodeSandbox] = []
    try:
        available_before = primitives.mem_available_kib()
        stopped = await _fill(node, name, image, live, floor, sandboxes, progress)
        await asyncio.sleep(settle)
        progress(f"{name}: reading the PSS of {len(sandboxes)} idle sandboxes")
        groups = [f"{node.settings.node_key}/{sb.id}" for sb in sandboxes]
        corral = await asyncio.to_thread(pss_mib, groups)
        used = (available_before - primitives.mem_available_kib()) / KIB_PER_MIB
    finally:
        progress(f"{name}: stopping {len(sandboxes)} idle sandboxes")
        await kill_all(sandboxes)
    if stopped:
        result.notes.append(f"density: stopped at {len(corral)} of {live} sandboxes: {stopped}")
    if not corral:
        raise InternalError(f"no {name} sandbox could be started for the density measure")

    progress(f"{name}: {len(corral)} bare idle sandboxes")
    bare = await run_to_end(_bare_density, node, rootfs, len(corral), settle, runsc)
    label = "runsc run sleep (idle)" if runsc is not None else "bwrap sleep (idle)"
    result.rows.append(Row(
        "idle_pss", f"PSS per idle sandbox, {len(corral)} live", Stat(tuple(corral)),
        label, Stat(tuple(bare)) if bare else None, unit="MiB",
        extra={"live": len(corral), "requested": live, "totalpss_mib": sum(corral),
               "bare_totalpss_mib": sum(bare), "host_memory_used_mib": used}))


async def _fill(node: Node, runtime: str, image: str, live: int, floor_kib: int,
                sandboxes: list[NodeSandbox], progress: Progress) -> str:
    """Start up to ``live`` sandboxes into ``sandboxes``; why it stopped early, or ""."""
    left = live
    stopped = ""

    async def client() -> None:
        nonlocal left, stopped
        while left > 0 and not stopped:
            left -= 1
            if primitives.mem_available_kib() < floor_kib:
                stopped = f"the host had under {floor_kib // KIB_PER_MIB} MiB available"
                return
            try:
                sandboxes.append(await node.create(image, runtime=runtime,
                                                   timeout=SANDBOX_LIFETIME))
            except SandboxError as exc:
                stopped = f"a create failed: {exc.message}"
                return
            if len(sandboxes) % 10 == 0:
                progress(f"{runtime}: {len(sandboxes)}/{live} idle sandboxes live")

    await asyncio.gather(*(client() for _ in range(min(DENSITY_CLIENTS, live))))
    return stopped


async def kill_all(sandboxes: list[NodeSandbox]) -> None:
    """Kill every sandbox, 16 at a time, within :data:`TEARDOWN_TIMEOUT` in all."""
    turns = asyncio.Semaphore(16)

    async def kill(sandbox: NodeSandbox) -> None:
        async with turns:
            await sandbox.kill()

    await asyncio.wait_for(asyncio.shield(asyncio.gather(
        *(kill(sb) for sb in sandboxes), return_exceptions=True)), TEARDOWN_TIMEOUT)


def pss_mib(cgroups: list[str]) -> list[float]:
    """PSS of each cgroup's processes, in MiB."""
    return [primitives.pss_kib(CgroupView(name).pids()) / KIB_PER_MIB for name in cgroups]


async def run_to_end(function: Callable[..., T], *args: object) -> T:
    """``function(*args, stop=event)`` in a thread; if the caller is cancelled (Ctrl-C),
    ``stop`` is set and the thread is waited for (bounded), so that what it started is torn
    down before the node that owns the cgroups closes."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(function, *args, stop=stop))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([task], timeout=TEARDOWN_TIMEOUT)
        raise


def _bare_density(node: Node, rootfs: Path, count: int, settle: float,
                  runsc: primitives.BareRunsc | None, stop: threading.Event) -> list[float]:
    """Start ``count`` bare idle sandboxes, read their PSS, tear them down (all of them,
    and early, once ``stop`` is set)."""
    started: list[tuple[Path, str]] = []
    processes: list[subprocess.Popen[bytes]] = []

    def start_one(_: int) -> None:
        if stop.is_set():
            return
        sandbox_id = f"{BARE_PREFIX}{secrets.token_hex(6)}"
        directory = node.sandboxes_dir / sandbox_id
        cgroup = SandboxCgroups(f"{node.settings.node_key}/{sandbox_id}")
        directory.mkdir(mode=0o700)
        started.append((directory, cgroup.name))
        cgroup.create(memory_mib=1024, cpus=1.0, pids=1024)
        if runsc is not None:
            runsc.start_idle(SLEEP, directory, cgroup)
        else:
            processes.append(primitives.bwrap_start_idle(rootfs, SLEEP, cgroup))

    try:
        if runsc is not None:
            with ThreadPoolExecutor(DENSITY_CLIENTS, thread_name_prefix="bench-idle") as pool:
                list(pool.map(start_one, range(count)))
        else:  # bwrap dies with the thread that started it (--die-with-parent): this one
            for i in range(count):
                start_one(i)
        if stop.wait(settle):
            return []
        return [primitives.pss_kib(CgroupView(name).pids()) / KIB_PER_MIB
                for _, name in started]
    finally:
        deadline = time.monotonic() + TEARDOWN_TIMEOUT
        for directory, name in started:
            if time.monotonic() > deadline:
                break  # what is left is swept by the next node on this data dir
            with contextlib.suppress(SandboxError, OSError):
                teardown(directory, name)
        # Belt and braces: a runsc process that escaped its cgroup still names its state dir.
        primitives.kill_naming(str(node.sandboxes_dir / BARE_PREFIX))
        for process in processes:
            with contextlib.suppress(Exception):
                process.wait(5)
