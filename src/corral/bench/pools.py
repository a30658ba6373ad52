"""Warm pools: acquire → first result, create → ``import pandas``, a burst served from a pool.

The benchmark starts a node of its own with one warm pool (on a scratch data dir beside
its main node), waits until the pool is full, then **pauses its refill** (the pool's size
is set to 0) so that no background start competes with what is measured: each recorded
create takes a ready sandbox from a full, quiet pool. In service a take starts a refill
that runs beside the next requests; that cost is not in these figures.

* acquire → first command: ``node.create`` served by a pool, then ``true``; beside an
  exec round trip on an already-running sandbox of the main node (the floor of any
  acquire), and a cold create → first command interleaved with it.
* create → ``import pandas`` result: ``node.create`` served by a pool whose kernels
  imported numpy, pandas and matplotlib ahead, then ``run_code("import pandas")``; beside
  a bare ``python3 -c 'import pandas'`` run (``runsc run`` / ``bwrap``) and a cold create
  → ``run_code("import pandas")`` on the main node (kernel started on demand).
* a burst: ``burst`` creates at once from a full pool, beside as many bare runs, 32 at a
  time. This pool and the acquire → first command one start no kernel (the hand-out path
  is the same; a warm kernel only adds a liveness check), so that a burst of 100 fits in
  memory.
* PSS per pooled sandbox, with and without a warm kernel (what a ready sandbox costs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

from corral.api.errors import InternalError
from corral.node import Node, NodeSettings
from corral.node.pools import Pool, PoolSpec
from corral.node import NodeSandbox
from corral.runtime.host import leftover_names

from . import scale
from ._scratch import scratch_dir
from .stats import Rate, Row, RuntimeResult, Stat

SANDBOX_LIFETIME = 600.0
PANDAS = ["python3", "-c", "import pandas"]
#: Longest a pool may take to fill: a fixed allowance plus this much per sandbox.
FILL_BASE, FILL_PER_SANDBOX = 60.0, 20.0
BURST_WIDTH = 32

Progress = Callable[[str], None]
BareRun = Callable[[list[str]], float]


@dataclasses.dataclass(frozen=True)
class PoolBench:
    """What the pool rows measure with: counts, the image and the bare primitives."""

    image: str
    iterations: int
    warmup: int
    cold_iterations: int
    burst: int
    bare: BareRun
    bare_label: str


async def measure_pools(node: Node, bench: PoolBench, result: RuntimeResult,
                        progress: Progress) -> None:
    """Add the warm-pool rows to ``result`` (its runtime's)."""
    name = result.runtime
    rounds = bench.warmup + bench.iterations
    samples: dict[str, list[float]] = {k: [] for k in ("pandas", "bare_pandas")}
    spec = PoolSpec(bench.image, rounds, name)
    async with pool_node(node, spec, progress) as (pooled, pool):
        pss_warm = await asyncio.to_thread(_pool_pss, pooled)
        for i in range(rounds):
            progress(f"{name}: warm pool → import pandas, {_step(i, bench.warmup, rounds)}")
            pandas = await _acquire_import(pooled, name, bench.image)
            bare = await asyncio.to_thread(bench.bare, PANDAS)
            if i >= bench.warmup:
                samples["pandas"].append(pandas)
                samples["bare_pandas"].append(bare)
        _check_hits(pool, rounds, result)
    result.rows.append(Row("pool_import_pandas", "warm pool create → import pandas result",
                           Stat(tuple(samples["pandas"])),
                           f"{bench.bare_label} python3 import pandas",
                           Stat(tuple(samples["bare_pandas"]))))
    await _measure_cold_pandas(node, bench, result, progress)
    if pss_warm:
        result.rows.append(Row("pool_pss_warm_kernel", "PSS per pooled sandbox (warm kernel)",
                               Stat(tuple(pss_warm)), unit="MiB",
                               extra={"live": len(pss_warm),
                                      "warm": "+".join(spec.warm or ())}))
    await _measure_acquire(node, bench, result, progress)


async def _measure_acquire(node: Node, bench: PoolBench, result: RuntimeResult,
                           progress: Progress) -> None:
    """acquire → first command, then a burst, from one pool of sandboxes without kernels."""
    name = result.runtime
    rounds = bench.warmup + bench.iterations
    samples: dict[str, list[float]] = {k: [] for k in ("acquire", "exec", "cold")}
    spec = PoolSpec(bench.image, rounds + bench.burst, name, warm=None)
    async with await node.create(bench.image, runtime=name,
                                 timeout=SANDBOX_LIFETIME) as running:
        async with pool_node(node, spec, progress) as (pooled, pool):
            pss = await asyncio.to_thread(_pool_pss, pooled)
            for i in range(rounds):
                progress(f"{name}: warm pool acquire, {_step(i, bench.warmup, rounds)}")
                measured = (await _acquire_to_first(pooled, name, bench.image),
                            await _exec(running),
                            await _acquire_to_first(node, name, bench.image))  # no pool: cold
                if i >= bench.warmup:
                    for key, value in zip(samples, measured, strict=True):
                        samples[key].append(value)
            await _measure_burst(pooled, pool, bench, result, progress)
            _check_hits(pool, rounds + bench.burst, result)
    acquire = Stat(tuple(samples["acquire"]))
    result.rows[-1:-1] = [
        Row("pool_acquire_first_command", "warm pool acquire → first command", acquire,
            "exec on a running sandbox", Stat(tuple(samples["exec"]))),
        Row("pool_acquire_vs_cold", "warm pool acquire → first command", acquire,
            "cold create → first command", Stat(tuple(samples["cold"]))),
    ]
    if pss:
        result.rows.append(Row("pool_pss_no_kernel", "PSS per pooled sandbox (no kernel)",
                               Stat(tuple(pss)), unit="MiB", extra={"live": len(pss)}))


def _check_hits(pool: Pool, wanted: int, result: RuntimeResult) -> None:
    if pool.stats.hits < wanted:
        result.notes.append(f"warm pool: only {pool.stats.hits} of {wanted} creates were "
                            "served by the pool")


async def _measure_cold_pandas(node: Node, bench: PoolBench, result: RuntimeResult,
                               progress: Progress) -> None:
    """create → ``run_code("import pandas")`` with no pool: the kernel starts on demand."""
    name = result.runtime
    cold: list[float] = []
    bare: list[float] = []
    for i in range(bench.cold_iterations):
        progress(f"{name}: cold create → import pandas, {i + 1}/{bench.cold_iterations}")
        started = time.perf_counter()
        async with await node.create(bench.image, runtime=name,
                                     timeout=SANDBOX_LIFETIME) as sandbox:
            execution = await sandbox.code.run("import pandas", timeout=300)
            cold.append(time.perf_counter() - started)
        _check(execution.error, name)
        bare.append(await asyncio.to_thread(bench.bare, PANDAS))
    if cold:
        result.rows.append(Row("cold_import_pandas", "cold create → import pandas result",
                               Stat(tuple(cold)), f"{bench.bare_label} python3 import pandas",
                               Stat(tuple(bare))))


async def _measure_burst(pooled: Node, pool: Pool, bench: PoolBench, result: RuntimeResult,
                         progress: Progress) -> None:
    """``burst`` creates at once, all served by a full pool."""
    name = result.runtime
    progress(f"{name}: a burst of {bench.burst} creates from the pool")
    latencies: list[float] = []
    handed: list[NodeSandbox] = []
    hits = pool.stats.hits

    async def one() -> None:
        started = time.perf_counter()
        sandbox = await pooled.create(bench.image, runtime=name, timeout=SANDBOX_LIFETIME)
        latencies.append(time.perf_counter() - started)
        handed.append(sandbox)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one() for _ in range(bench.burst)))
        wall = time.perf_counter() - started
    finally:
        await scale.kill_all(handed)
    hits = pool.stats.hits - hits
    width = min(BURST_WIDTH, bench.burst)
    progress(f"{name}: {bench.burst} bare runs, {width} at once")
    bare_latencies, bare_wall = await asyncio.to_thread(scale.bare_batch, bench.bare, width,
                                                        bench.burst)
    result.rows.append(Row(
        "pool_burst", f"burst of {bench.burst} creates from a pool", Stat(tuple(latencies)),
        f"{bench.bare_label} /bin/true, {width} at once", Stat(tuple(bare_latencies)),
        rate=Rate(bench.burst, wall, bare_wall),
        extra={"creates": bench.burst, "pool_hits": hits}))


@contextlib.asynccontextmanager
async def pool_node(node: Node, spec: PoolSpec,
                    progress: Progress) -> AsyncIterator[tuple[Node, Pool]]:
    """A node with one warm pool of ``spec``, filled, its refill paused; torn down after."""
    image_dir = node.settings.image_dir
    with scratch_dir("corral-bench-pool-", image_dir) as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=image_dir, pools=(spec,),
                                max_sandboxes=max(1000, spec.size + 10),
                                tune_cgroups=node.settings.tune_cgroups,
                                orphan_grace=0)
        async with Node(settings) as pooled:
            if not pooled.pools:
                raise InternalError(f"the warm pool {spec.image}:{spec.runtime} did not start")
            pool = pooled.pools[0]
            await _wait_full(pool, spec, progress)
            # Pause the refill: taken sandboxes are not replaced while measuring.
            pool.spec = dataclasses.replace(spec, size=0)
            yield pooled, pool


async def _wait_full(pool: Pool, spec: PoolSpec, progress: Progress) -> None:
    deadline = time.monotonic() + FILL_BASE + FILL_PER_SANDBOX * spec.size
    kind = "warm kernels" if spec.warm else "no kernel"
    while pool.stats.ready < spec.size:
        if time.monotonic() > deadline:
            raise InternalError(f"the warm pool filled only {pool.stats.ready} of {spec.size} "
                                f"sandboxes in time ({pool.stats.failed_starts} failed starts)")
        progress(f"{spec.runtime}: filling a warm pool ({kind}), "
                 f"{pool.stats.ready}/{spec.size} ready")
        await asyncio.sleep(0.2)


def _pool_pss(node: Node) -> list[float]:
    """PSS (MiB) of each sandbox of ``node`` (a pool node: they are all pooled)."""
    key = node.settings.node_key
    return scale.pss_mib([f"{key}/{name}" for name in sorted(leftover_names(key))])


async def _acquire_to_first(node: Node, runtime: str, image: str) -> float:
    started = time.perf_counter()
    sandbox = await node.create(image, runtime=runtime, timeout=SANDBOX_LIFETIME)
    try:
        reply = await sandbox.commands.run(["true"])
        elapsed = time.perf_counter() - started
    finally:
        await sandbox.kill()
    if reply.exit_code != 0:
        raise InternalError(f"`true` exited {reply.exit_code} in a {runtime} sandbox")
    return elapsed


async def _acquire_import(node: Node, runtime: str, image: str) -> float:
    started = time.perf_counter()
    sandbox = await node.create(image, runtime=runtime, timeout=SANDBOX_LIFETIME)
    try:
        execution = await sandbox.code.run("import pandas", timeout=300)
        elapsed = time.perf_counter() - started
    finally:
        await sandbox.kill()
    _check(execution.error, runtime)
    return elapsed


async def _exec(sandbox: NodeSandbox) -> float:
    started = time.perf_counter()
    reply = await sandbox.commands.run(["true"])
    elapsed = time.perf_counter() - started
    if reply.exit_code != 0:
        raise InternalError(f"`true` exited {reply.exit_code}")
    return elapsed


def _check(error: object, runtime: str) -> None:
    if error is not None:
        raise InternalError(f"import pandas failed in a {runtime} sandbox: {error!r:.300}")


def _step(i: int, warmup: int, rounds: int) -> str:
    if i < warmup:
        return f"warm-up {i + 1}/{warmup}"
    return f"{i + 1 - warmup}/{rounds - warmup}"

