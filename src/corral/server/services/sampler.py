"""The metrics sampler: a task of the server's lifespan that looks at every running sandbox
every ``interval`` seconds (``CORRAL_METRICS_INTERVAL``) and keeps what it saw.

A look is a few reads of the host (the sandbox's cgroups, its disk's ``statvfs``, its veth's
counters in sysfs), made in one thread for all sandboxes; nothing asks the agent. So a look
is not activity (no idle timer is touched), never resumes a paused sandbox (paused ones
are skipped: their series has a gap) and costs the sandbox nothing.

Samples are kept in memory (:mod:`._series` bounds each series) for the sandbox's life and
``retention`` seconds after it was seen stopped (``CORRAL_METRICS_RETENTION``), for at most
:data:`MAX_STOPPED` stopped sandboxes (the longest stopped dropped first). A restart of the
server loses them: they are a view of the recent past, not a record (the audit log and the
store are the records).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from corral.api import models
from corral.api.errors import SandboxError
from corral.node import NodeSandbox, SandboxState
from corral.node.gpus import recorded as recorded_gpus
from corral.runtime import Usage
from corral.runtime.gpu import GpuUsage
from corral.runtime.gpu import usage as gpu_usage

from ._series import Sample, Series, cpu_percent, past_retention
from .sandboxes import SandboxService

log = logging.getLogger(__name__)

#: Stopped sandboxes whose series are kept at most (then the longest stopped go first): with
#: a full series at ~290 KB, at most ~300 MB for all of them.
MAX_STOPPED = 1024


@dataclass(frozen=True)
class TenantTotals:
    """One tenant's running sandboxes as their latest samples add up."""

    cpu_percent: float  # summed over its sandboxes: 100 per sandbox whose cores are all busy
    memory_bytes: int
    disk_bytes: int


class MetricsSampler:
    def __init__(self, sandboxes: SandboxService, interval: float, retention: float) -> None:
        self._sandboxes = sandboxes
        self.interval = interval
        self.retention = retention
        self._series: dict[str, Series] = {}
        #: Each running sandbox's CPU time at its last look: (monotonic time, seconds).
        self._cpu: dict[str, tuple[float, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling on the running event loop (the server's lifespan calls this)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="corral-metrics-sampler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def series(self, tenant: str, sandbox_id: str) -> Series | None:
        """The tenant's sandbox's series; None if it has none (never sampled, gone past
        its retention, or not the tenant's)."""
        found = self._series.get(sandbox_id)
        return found if found is not None and found.tenant == tenant else None

    async def sandbox_metrics(self, tenant: str, sandbox_id: str, start: float | None,
                              end: float | None) -> models.SandboxMetrics:
        """The tenant's sandbox's samples from ``start`` to ``end`` (epoch seconds; None:
        unbounded); NotFoundError if it is not the tenant's. Touches nothing."""
        series = self.series(tenant, sandbox_id)
        if series is None:
            await self._sandboxes.check_owner(tenant, sandbox_id)
        return models.SandboxMetrics(
            interval=self.interval,
            samples=[] if series is None else [wire(s) for s in series.samples(start, end)])

    def latest_of(self, tenant: str, sandbox_ids: list[str], points: int
                  ) -> models.SandboxesMetrics:
        """The newest ``points`` samples of each of the tenant's sandboxes among
        ``sandbox_ids`` (others' and unknown ids are left out). Touches nothing."""
        found: dict[str, list[models.MetricSample]] = {}
        for sandbox_id in sandbox_ids:
            series = self.series(tenant, sandbox_id)
            if series is not None:
                found[sandbox_id] = [wire(s) for s in series.last(points)]
            elif self._sandboxes.owner(sandbox_id) == tenant:
                found[sandbox_id] = []  # live, not looked at yet
        return models.SandboxesMetrics(interval=self.interval, sandboxes=found)

    def tenant_totals(self) -> dict[str, TenantTotals]:
        """Each tenant's running sandboxes' latest samples, added up (a paused one's are
        not: it uses no CPU, and under gVisor no memory)."""
        totals: dict[str, list[float]] = {}
        for tenant, sandbox in self._sandboxes.tenanted():
            series = self._series.get(sandbox.id)
            latest = series.latest() if series is not None else None
            if latest is None or not _running(sandbox):
                continue
            row = totals.setdefault(tenant, [0.0, 0, 0])
            row[0] += latest.cpu_percent
            row[1] += latest.memory_used
            row[2] += latest.disk_used
        return {tenant: TenantTotals(round(cpu, 2), int(memory), int(disk))
                for tenant, (cpu, memory, disk) in totals.items()}

    async def sample_all(self) -> int:
        """Look at every running sandbox once; returns how many were sampled."""
        live = self._sandboxes.tenanted()
        running = [(tenant, sandbox) for tenant, sandbox in live if _running(sandbox)]
        for _, sandbox in live:
            if not _running(sandbox):
                self._cpu.pop(sandbox.id, None)  # paused: its next look sets a baseline
        readings = await asyncio.to_thread(_read_all, [s for _, s in running])
        now_wall, now = round(time.time(), 6), time.monotonic()
        taken = 0
        for (tenant, sandbox), reading in zip(running, readings, strict=True):
            if reading is None or not _running(sandbox):
                self._cpu.pop(sandbox.id, None)
                continue
            sample = self._sample(sandbox, reading, now_wall, now)
            series = self._series.get(sandbox.id)
            if series is None:
                series = self._series[sandbox.id] = Series(tenant)
            if sample is not None:
                series.add(sample)
                taken += 1
        self._age({sandbox.id for _, sandbox in live}, now_wall)
        return taken

    def _sample(self, sandbox: NodeSandbox, reading: _Reading, now_wall: float,
                now: float) -> Sample | None:
        """A sample from ``reading``; None for the first look after a pause (its CPU time
        is then the baseline for the next)."""
        usage = reading.usage
        before = self._cpu.get(sandbox.id)
        self._cpu[sandbox.id] = (now, usage.cpu_seconds)
        if before is None:
            if sandbox.id in self._series:
                return None  # back from a pause: this look only sets the baseline
            before = (now - max(now_wall - sandbox.created_at, 0.0), 0.0)
        cpus = sandbox.resources.cpus
        memory_limit = usage.memory_limit_bytes
        configured = sandbox.resources.memory_mib * 1024 * 1024
        if memory_limit <= 0 or memory_limit > configured:
            memory_limit = configured  # the cgroup's may be unset, or higher (gVisor's)
        net = reading.net
        gpu = reading.gpu
        return Sample(time=now_wall,
                      cpu_percent=cpu_percent(before[1], usage.cpu_seconds, now - before[0],
                                              cpus),
                      memory_used=usage.memory_bytes, memory_limit=memory_limit,
                      memory_cache=usage.memory_cache_bytes,
                      disk_used=usage.disk_used_bytes, disk_limit=usage.disk_total_bytes,
                      pids=usage.pids, net_rx_bytes=net[0] if net else None,
                      net_tx_bytes=net[1] if net else None,
                      gpu_percent=gpu[0] if gpu else None,
                      gpu_memory_used=gpu[1] if gpu else None)

    def _age(self, live: set[str], now: float) -> None:
        """Start the retention of series whose sandbox is no longer live; drop those past it
        (and the longest stopped beyond :data:`MAX_STOPPED`)."""
        for sandbox_id in [i for i in self._cpu if i not in live]:
            del self._cpu[sandbox_id]
        stopped: list[tuple[float, str]] = []
        for sandbox_id, series in self._series.items():
            if series.stopped_at is None and sandbox_id not in live:
                series.stopped_at = now
            if series.stopped_at is not None:
                stopped.append((series.stopped_at, sandbox_id))
        for sandbox_id in past_retention(stopped, now, self.retention, MAX_STOPPED):
            self.forget(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        """Drop a sandbox's series now (its retention is over)."""
        self._series.pop(sandbox_id, None)
        self._cpu.pop(sandbox_id, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sample_all()
            except Exception:
                log.exception("sampling sandboxes' metrics failed")


@dataclass(frozen=True)
class _Reading:
    usage: Usage
    net: tuple[int, int] | None
    #: Its GPUs' mean utilisation (%) and memory in use (bytes); None: no GPU or no NVML.
    gpu: tuple[float, int] | None = None


def wire(sample: Sample) -> models.MetricSample:
    return models.MetricSample(
        time=datetime.fromtimestamp(sample.time, UTC), cpu_percent=sample.cpu_percent,
        memory_used=sample.memory_used, memory_limit=sample.memory_limit,
        disk_used=sample.disk_used, disk_limit=sample.disk_limit, pids=sample.pids,
        net_rx_bytes=sample.net_rx_bytes, net_tx_bytes=sample.net_tx_bytes,
        gpu_percent=sample.gpu_percent, gpu_memory_used=sample.gpu_memory_used)


def _running(sandbox: NodeSandbox) -> bool:
    """Running, with no pause, resume or snapshot under way (a look never wakes one)."""
    return sandbox.state is SandboxState.RUNNING and sandbox.changing is None


def gpu_reading(minors: tuple[int, ...], readings: dict[int, GpuUsage]
                ) -> tuple[float, int] | None:
    """A sandbox's GPUs' mean utilisation and summed memory in use, from NVML's readings
    of every GPU; None unless each of its GPUs was read."""
    if not minors or any(m not in readings for m in minors):
        return None
    mine = [readings[m] for m in minors]
    return (round(sum(r.utilization_percent for r in mine) / len(mine), 2),
            sum(r.memory_used_bytes for r in mine))


def _read_all(sandboxes: list[NodeSandbox]) -> list[_Reading | None]:
    """Each sandbox's usage and interface counters (in a thread: file reads)."""
    readings: list[_Reading | None] = []
    held = {sandbox.id: recorded_gpus(sandbox.handle.extra) for sandbox in sandboxes}
    gpus = gpu_usage(tuple(sorted({m for minors in held.values() for m in minors})))
    for sandbox in sandboxes:
        try:
            readings.append(_Reading(sandbox.usage(), sandbox.network.interface_bytes(),
                                     gpu_reading(held[sandbox.id], gpus)))
        except (SandboxError, OSError):
            readings.append(None)  # stopping under us, or a runtime without usage
    return readings
