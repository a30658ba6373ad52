"""One sandbox's metric samples over time, in bounded memory: pure logic, no I/O.

A series keeps its samples in two runs, oldest first:

* **recent**: every sample of the last :data:`FULL_WINDOW` seconds, at most
  :data:`MAX_RECENT` of them (an hour at the default 5 s interval);
* **thinned**: older samples, one per :data:`THIN_STEP` seconds (the first sample of each
  step is kept, the rest dropped), at most :data:`MAX_THINNED` (a day of them).

So a series never holds more than :data:`MAX_SAMPLES` samples whatever the interval or the
sandbox's life: a sandbox that lives longer than a day loses its oldest minutes first. Each
is kept packed (:data:`_PACKED`, 96 bytes and a bytes object's header: ~136 bytes, against
~350 as objects), so a full series takes about 290 KB.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: Seconds of the most recent samples kept at full resolution.
FULL_WINDOW = 3600.0
#: Samples kept at full resolution, at most.
MAX_RECENT = 720
#: Seconds between two kept samples older than :data:`FULL_WINDOW` (or pushed out of the
#: recent run by :data:`MAX_RECENT`).
THIN_STEP = 60.0
#: Thinned samples kept, at most.
MAX_THINNED = 1440
#: The most samples one series holds.
MAX_SAMPLES = MAX_RECENT + MAX_THINNED


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at a sandbox: ``time`` in epoch seconds; sizes in bytes; ``cpu_percent`` of
    its cores (100: all of them busy) since the previous sample; ``net_*`` None without a
    network."""

    time: float
    cpu_percent: float
    memory_used: int
    memory_limit: int
    memory_cache: int
    disk_used: int
    disk_limit: int
    pids: int
    net_rx_bytes: int | None
    net_tx_bytes: int | None
    #: Its GPUs' mean utilisation (percent of time a kernel ran) and memory in use, from
    #: NVML; None without a GPU or without NVML.
    gpu_percent: float | None = None
    gpu_memory_used: int | None = None


#: A sample packed: time, CPU %, the eight counts (-1: no network), GPU % and GPU memory
#: (-1: none).
_PACKED = struct.Struct("<dd8qdq")


def _pack(sample: Sample) -> bytes:
    return _PACKED.pack(sample.time, sample.cpu_percent, sample.memory_used,
                        sample.memory_limit, sample.memory_cache, sample.disk_used,
                        sample.disk_limit, sample.pids,
                        -1 if sample.net_rx_bytes is None else sample.net_rx_bytes,
                        -1 if sample.net_tx_bytes is None else sample.net_tx_bytes,
                        -1.0 if sample.gpu_percent is None else sample.gpu_percent,
                        -1 if sample.gpu_memory_used is None else sample.gpu_memory_used)


def _unpack(packed: bytes) -> Sample:
    (time, cpu, used, limit, cache, disk, disk_limit, pids, rx,
     tx, gpu, gpu_memory) = _PACKED.unpack(packed)
    return Sample(time, cpu, used, limit, cache, disk, disk_limit, pids,
                  None if rx < 0 else rx, None if tx < 0 else tx,
                  None if gpu < 0 else gpu, None if gpu_memory < 0 else gpu_memory)


def _time(packed: bytes) -> float:
    time: float = _PACKED.unpack_from(packed)[0]
    return time


def cpu_percent(cpu_before: float, cpu_now: float, elapsed: float, cpus: float) -> float:
    """Share of ``cpus`` cores busy over ``elapsed`` seconds, 0 to 100, two decimals."""
    if elapsed <= 0 or cpus <= 0:
        return 0.0
    return round(min(max((cpu_now - cpu_before) / (elapsed * cpus) * 100, 0.0), 100.0), 2)


def past_retention(stopped: Iterable[tuple[float, str]], now: float, retention: float,
                   keep: int) -> list[str]:
    """Of sandboxes stopped at the given times (``(stopped_at, sandbox_id)``), those whose
    records go now: past ``retention`` seconds, or beyond the ``keep`` most recently
    stopped."""
    ordered = sorted(stopped)
    excess = max(len(ordered) - keep, 0)
    return [sandbox_id for i, (stopped_at, sandbox_id) in enumerate(ordered)
            if i < excess or now - stopped_at > retention]


def _micro(seconds: float) -> int:
    return round(seconds * 1_000_000)


class Series:
    """A sandbox's samples (see the module's docstring for the bounds)."""

    __slots__ = ("tenant", "stopped_at", "_recent", "_thinned", "_thinned_at", "_latest")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        #: When the sandbox was seen stopped (epoch seconds), None while it lives.
        self.stopped_at: float | None = None
        self._recent: collections.deque[bytes] = collections.deque()
        self._thinned: collections.deque[bytes] = collections.deque(maxlen=MAX_THINNED)
        #: The time of the newest thinned sample, and the last sample (unpacked).
        self._thinned_at = float("-inf")
        self._latest: Sample | None = None

    def __len__(self) -> int:
        return len(self._recent) + len(self._thinned)

    def add(self, sample: Sample) -> None:
        """Append ``sample`` (newer than every one held); thin what ages out."""
        self._recent.append(_pack(sample))
        self._latest = sample
        while self._recent and (len(self._recent) > MAX_RECENT
                                or _time(self._recent[0]) < sample.time - FULL_WINDOW):
            old = self._recent.popleft()
            at = _time(old)
            if at >= self._thinned_at + THIN_STEP:
                self._thinned.append(old)
                self._thinned_at = at

    def samples(self, start: float | None = None, end: float | None = None
                ) -> list[Sample]:
        """Samples from ``start`` to ``end`` (epoch seconds, both included, to the
        microsecond: the precision of the times the API shows), oldest first."""
        low = None if start is None else _micro(start)
        high = None if end is None else _micro(end)
        return [_unpack(p) for p in self._all() if (low is None or _micro(_time(p)) >= low)
                and (high is None or _micro(_time(p)) <= high)]

    def last(self, points: int) -> list[Sample]:
        """The newest ``points`` samples, oldest first."""
        if points <= 0:
            return []
        if points <= len(self._recent):
            return [_unpack(p) for p in list(self._recent)[-points:]]
        return [_unpack(p) for p in list(self._all())[-points:]]

    def latest(self) -> Sample | None:
        return self._latest

    def _all(self) -> Iterator[bytes]:
        yield from self._thinned
        yield from self._recent
