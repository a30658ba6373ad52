"""What the benchmark measures, per runtime, and in which order.

Each Corral measure is interleaved with its bare primitive, iteration by iteration, so that
whatever else the host is doing weighs on both alike. Every measure starts with warm-up
iterations that are not recorded (first-use costs: page cache, the agent bundle).
Timings come from :func:`time.perf_counter`; nothing here judges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from corral.api.errors import InternalError, InvalidArgumentError
from corral.node import Node, NodeSettings
from corral.node.images import Image, ImageStore
from corral.runtime import available_runtimes
from corral.runtime.agent_bundle import MOUNT_POINT, ensure_bundle
from corral.runtime.host import remove_node_cgroups

from . import api, checkpoint, code, images, network, pools, primitives, scale, state
from .report import BenchReport, machine_info
from .stats import Row, RuntimeResult, Stat

MIB = 1024 * 1024
Progress = Callable[[str], None]
SANDBOX_LIFETIME = 600.0
HOST_TMPFS = Path("/dev/shm")
TRUE = ["/bin/true"]
PYTHON = ["/usr/bin/python3", "-S", "-c", "pass"]


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure.

    Attributes:
        iterations: recorded create→first command runs per runtime (and bare runs beside).
        exec_iterations: recorded warm exec round trips per runtime.
        file_iterations: recorded write+read round trips per file size.
        file_sizes: sizes of the file round trips, in bytes.
        warmup: unrecorded iterations before each measure.
        image: the image every sandbox and bare run uses.
        runtimes: runtimes to measure; empty means every one that works here.
        code_iterations: recorded cold create → first run_code runs (default: iterations).
        code_warmup: unrecorded ones before them (default: warmup).
        pool_iterations: recorded warm-pool acquires (each of two kinds) per runtime.
        pool_warmup: unrecorded ones before them (each takes two pooled sandboxes).
        cold_pandas_iterations: recorded cold create → import pandas runs.
        burst: creates at once from a full warm pool.
        clients: concurrencies of the creation throughput measure.
        creates_per_client: creates per client in each throughput batch.
        min_creates: creates in each throughput batch, at least.
        settle: seconds idle sandboxes settle before their memory is read.
        density: idle sandboxes held at once for the memory measure.
        checkpoint_iterations: recorded gVisor checkpoint/restore rounds.
        image_build_iterations: recorded cold image builds, and as many rebuilds after
            changing the last step (0: neither row).
        image_many_layers: the layers of the second built image whose create → first
            command is measured (0: none).
        scale: measure the warm pool, throughput, density and checkpoint rows at all.
        state_iterations: recorded pause/resume (and gVisor snapshot and fork) rounds
            per runtime (0: no state rows).
        state_fork: copies per fork round (gVisor; 0 to 10).
        state_paused: sandboxes paused at once to see what a paused one costs the host.
    """

    iterations: int = 20
    exec_iterations: int = 100
    file_iterations: int = 5
    file_sizes: tuple[int, ...] = (1 * MIB, 64 * MIB)
    warmup: int = 2
    image: str = "python"
    runtimes: tuple[str, ...] = ()
    code_iterations: int | None = None
    code_warmup: int | None = None
    pool_iterations: int = 10
    pool_warmup: int = 1
    cold_pandas_iterations: int = 3
    burst: int = 100
    clients: tuple[int, ...] = (1, 8, 32)
    creates_per_client: int = 3
    min_creates: int = 8
    density: int = 100
    checkpoint_iterations: int = 3
    image_build_iterations: int = 5
    image_many_layers: int = 24
    settle: float = 2.0
    scale: bool = True
    state_iterations: int = 10
    state_fork: int = state.MAX_CLONES
    state_paused: int = 10

    @classmethod
    def quick(cls, image: str = "python", runtimes: tuple[str, ...] = ()) -> BenchConfig:
        """Few iterations: a smoke run in under a minute, not figures to publish."""
        return cls(iterations=3, exec_iterations=20, file_iterations=2, warmup=1, image=image,
                   runtimes=runtimes, code_iterations=1, code_warmup=0, pool_iterations=1,
                   pool_warmup=0, cold_pandas_iterations=0, burst=10, clients=(8,),
                   creates_per_client=1, min_creates=4, density=10, checkpoint_iterations=1,
                   image_build_iterations=0, image_many_layers=0, settle=0.5,
                   state_iterations=1, state_fork=3, state_paused=3)


async def measure(node: Node, image: Image, config: BenchConfig,
                  progress: Progress) -> list[RuntimeResult]:
    """Measure every selected runtime on a started ``node``; skipped ones carry a note."""
    results = []
    for name, (_, status) in available_runtimes().items():
        if config.runtimes and name not in config.runtimes:
            continue
        result = RuntimeResult(runtime=name, detail=status.detail)
        if not status.ok:
            result.notes.append(f"skipped: {status.detail}")
        else:
            await _measure_runtime(node, image, config, result, progress)
        results.append(result)
    unknown = set(config.runtimes) - {r.runtime for r in results}
    if unknown:
        raise InternalError(f"unknown runtimes: {', '.join(sorted(unknown))}")
    return results


async def _measure_runtime(node: Node, image: Image, config: BenchConfig,
                           result: RuntimeResult, progress: Progress) -> None:
    name = result.runtime
    has_python = os.path.exists(image.rootfs / PYTHON[0].lstrip("/"))
    if not has_python:
        result.notes.append(f"image {image.name} has no {PYTHON[0]}: python start-up skipped")
    with contextlib.ExitStack() as stack:
        bundle = ensure_bundle(node.settings.data_dir / "agent")  # the node's own
        bare_label, bare, bare_output = _bare_runner(name, image.rootfs, bundle, stack)
        await _measure_start(node, image, config, result, progress, bare_label, bare,
                             has_python)
        await _measure_warm(node, config, result, progress)
        if has_python:
            await _measure_spawn_floor(config, result, progress, bare_label, bare_output)
        await api.measure_api(node, config, result, progress)
        if os.geteuid() == 0 and shutil.which("nft"):
            await network.measure_network(node, config.image, config.iterations,
                                          config.warmup, result, progress)
        else:
            result.notes.append("network rows skipped: they need root and nftables")
        code_iterations = config.code_iterations or config.iterations
        await code.measure_code(node, config.image, image.rootfs, code_iterations,
                                config.exec_iterations, config.warmup, result, progress,
                                config.code_warmup)
        await images.measure_images(node, images.ImageBench(
            image=config.image, iterations=config.iterations,
            build_iterations=config.image_build_iterations, warmup=config.warmup,
            many_layers=config.image_many_layers, bare=bare, bare_label=bare_label),
            result, progress)
        if config.state_iterations > 0:
            await state.measure_state(node, state.StateBench(
                image=config.image, rootfs=image.rootfs, iterations=config.state_iterations,
                warmup=config.warmup, fork=config.state_fork, paused=config.state_paused,
                settle=config.settle), result, progress)
        if config.scale:
            await measure_scale(node, image, config, result, progress, bare_label, bare)


async def _measure_start(node: Node, image: Image, config: BenchConfig,
                         result: RuntimeResult, progress: Progress, bare_label: str,
                         bare: Callable[[list[str]], float], has_python: bool) -> None:
    """create → first command beside the bare runs, and its parts."""
    name = result.runtime
    primitives_argv = {"true": TRUE, "agent": primitives.agent_start_argv()}
    if has_python:
        primitives_argv["python"] = PYTHON
    corral: dict[str, list[float]] = {k: [] for k in ("total", "create", "first", "kill")}
    bare_samples: dict[str, list[float]] = {k: [] for k in primitives_argv}
    rounds = config.warmup + config.iterations
    for i in range(rounds):
        progress(f"{name}: create → first command, {_step(i, config.warmup, rounds)}")
        times = await _create_to_first(node, name, config.image)
        measured = {key: await asyncio.to_thread(bare, argv)
                    for key, argv in primitives_argv.items()}
        if i >= config.warmup:
            for samples, value in zip(corral.values(), times, strict=True):
                samples.append(value)
            for key, value in measured.items():
                bare_samples[key].append(value)

    label, total = "create → first command", _stat(corral["total"])
    result.rows.append(Row("create_to_first_command", label, total,
                           f"{bare_label} /bin/true", _stat(bare_samples["true"])))
    if has_python:
        result.rows.append(Row("create_to_first_command_vs_python", label, total,
                               f"{bare_label} python3 -S", _stat(bare_samples["python"])))
    result.rows.append(Row("create_to_first_command_vs_agent", label, total,
                           f"{bare_label} agent start", _stat(bare_samples["agent"])))
    result.rows.append(Row("create", "↳ create (agent up)", _stat(corral["create"])))
    result.rows.append(Row("first_command", "↳ first command", _stat(corral["first"])))
    result.rows.append(Row("teardown", "teardown (kill)", _stat(corral["kill"])))


async def measure_scale(node: Node, image: Image, config: BenchConfig,
                         result: RuntimeResult, progress: Progress, bare_label: str,
                         bare: Callable[[list[str]], float]) -> None:
    """Warm pools, creation throughput, density and (gVisor) checkpoint/restore."""
    name = result.runtime
    bench = pools.PoolBench(image=config.image, iterations=config.pool_iterations,
                            warmup=config.pool_warmup,
                            cold_iterations=config.cold_pandas_iterations,
                            burst=config.burst, bare=bare, bare_label=bare_label)
    await pools.measure_pools(node, bench, result, progress)
    await scale.measure_throughput(node, config.image, config.clients,
                                   (config.creates_per_client, config.min_creates), bare,
                                   bare_label, result, progress)
    with contextlib.ExitStack() as stack:
        runsc = (stack.enter_context(primitives.BareRunsc(image.rootfs))
                 if name == "gvisor" else None)
        await scale.measure_density(node, config.image, image.rootfs, config.density,
                                    config.settle, runsc, result, progress)
    if name == "gvisor" and config.checkpoint_iterations > 0:
        await scale.run_to_end(checkpoint.measure_checkpoint, image.rootfs,
                               config.checkpoint_iterations, config.pool_warmup, result,
                               progress)


def _bare_runner(runtime: str, rootfs: Path, bundle: Path, stack: contextlib.ExitStack,
                 ) -> tuple[str, Callable[[list[str]], float], Callable[[list[str]], str]]:
    """The bare primitive for ``runtime``: its label, a function timing one run and one
    returning what a run printed."""
    if runtime == "gvisor":
        runsc = stack.enter_context(primitives.BareRunsc(rootfs, bundle))
        return "runsc run", runsc.run, runsc.output
    return "bwrap", lambda argv: primitives.bwrap_run(
        rootfs, argv, bundle if argv[0].startswith(MOUNT_POINT) else None), \
        lambda argv: primitives.bwrap_output(rootfs, argv)


async def _create_to_first(node: Node, runtime: str, image: str) -> tuple[float, ...]:
    """(create→first result, create alone, first command alone, kill) in seconds."""
    started = time.perf_counter()
    sandbox = await node.create(image, runtime=runtime, timeout=SANDBOX_LIFETIME)
    created = time.perf_counter()
    try:
        reply = await sandbox.commands.run(["true"])
        answered = time.perf_counter()
    finally:
        killing = time.perf_counter()
        await sandbox.kill()
        killed = time.perf_counter()
    if reply.exit_code != 0:
        raise InternalError(f"`true` exited {reply.exit_code} in a {runtime} sandbox")
    return answered - started, created - started, answered - created, killed - killing


async def _measure_warm(node: Node, config: BenchConfig, result: RuntimeResult,
                        progress: Progress) -> None:
    """Exec and file round trips on one already-running sandbox."""
    name = result.runtime
    async with await node.create(config.image, runtime=name,
                                 timeout=SANDBOX_LIFETIME) as sandbox:
        warm: list[float] = []
        host: list[float] = []
        rounds = config.warmup * 5 + config.exec_iterations
        for i in range(rounds):
            if i % 10 == 0:
                progress(f"{name}: warm exec, {_step(i, config.warmup * 5, rounds)}")
            started = time.perf_counter()
            reply = await sandbox.commands.run(["true"])
            elapsed = time.perf_counter() - started
            if reply.exit_code != 0:
                raise InternalError(f"`true` exited {reply.exit_code} in a {name} sandbox")
            bare = await asyncio.to_thread(primitives.host_exec)
            if i >= config.warmup * 5:
                warm.append(elapsed)
                host.append(bare)
        result.rows.append(Row("warm_exec", "warm exec round trip", _stat(warm),
                               "host fork+exec", _stat(host)))

        for size in config.file_sizes:
            data = os.urandom(size)
            trips: list[float] = []
            floor: list[float] = []
            rounds = config.warmup + config.file_iterations
            for i in range(rounds):
                step = _step(i, config.warmup, rounds)
                progress(f"{name}: file round trip {size // MIB} MiB, {step}")
                started = time.perf_counter()
                await sandbox.files.write("/tmp/corral-bench.bin", data)
                back = await sandbox.files.read("/tmp/corral-bench.bin")
                elapsed = time.perf_counter() - started
                if back != data:
                    raise InternalError(f"a {size}-byte file came back changed from {name}")
                bare = await asyncio.to_thread(primitives.host_file_round_trip, HOST_TMPFS, data)
                if i >= config.warmup:
                    trips.append(elapsed)
                    floor.append(bare)
            label = f"{size // MIB} MiB"
            result.rows.append(Row(f"file_round_trip_{size // MIB}mib",
                                   f"file write+read {label}", _stat(trips),
                                   "host tmpfs", _stat(floor), size))


async def _measure_spawn_floor(config: BenchConfig, result: RuntimeResult, progress: Progress,
                               bare_label: str, output: Callable[[list[str]], str]) -> None:
    """The warm exec row again, beside spawns timed inside a bare sandbox of the same kind:
    the floor that no agent, channel or node can go under (the first spawns, which pay for
    warming the sandbox, are left out as the warm-up)."""
    name = result.runtime
    warmup = config.warmup * 5
    progress(f"{name}: {warmup + config.exec_iterations} spawns inside a bare sandbox")
    argv = primitives.spawn_probe_argv(warmup + config.exec_iterations)
    spawns = primitives.spawn_times(await asyncio.to_thread(output, argv))[warmup:]
    warm = next(row for row in result.rows if row.key == "warm_exec")
    result.rows.append(Row("warm_exec_vs_spawn", warm.label, warm.corral,
                           f"spawn of /bin/true inside a bare {bare_label}",
                           _stat(spawns)))


def _step(i: int, warmup: int, rounds: int) -> str:
    if i < warmup:
        return f"warm-up {i + 1}/{warmup}"
    return f"{i + 1 - warmup}/{rounds - warmup}"


def _stat(samples: list[float]) -> Stat:
    if not samples:
        raise InternalError("a measure has no samples (iterations must be at least 1)")
    return Stat(tuple(samples))


async def run_benchmark(settings: NodeSettings, config: BenchConfig,
                        progress: Progress) -> BenchReport:
    """Start a node on ``settings``, measure, and return the whole report.

    The node must be this benchmark's own (it sweeps its data dir when it starts).
    """
    if min(config.iterations, config.exec_iterations, config.file_iterations) < 1:
        raise InvalidArgumentError("iterations must be at least 1")
    if not 0 <= config.state_fork <= state.MAX_CLONES:
        raise InvalidArgumentError(f"a fork row makes 0 to {state.MAX_CLONES} copies")
    image = ImageStore(settings.image_dir).get(config.image)
    machine = machine_info()
    started = datetime.now(UTC)
    try:
        async with Node(settings) as node:
            results = await measure(node, image, config, progress)
    finally:
        # The node removes its parent cgroups when it closes; bare idle sandboxes live
        # under them too, and are torn down before it closes, but never leave them behind.
        remove_node_cgroups(settings.node_key)
    machine["loadavg_end"] = list(os.getloadavg())
    doc = dataclasses.asdict(config)
    return BenchReport(machine=machine, config=doc, started=started,
                       finished=datetime.now(UTC), results=results)
