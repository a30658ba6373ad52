"""One sandbox's metric samples over time, in bounded memory: pure logic, no I/O.

A series keeps its samples in two runs, oldest first:

* **recent**: every sample of the last :data:`FULL_WINDOW` seconds, at most
  :data:`MAX_RECENT` of them (an hour at the default 5 s interval);
* **thinned**: older samples, one per :data:`THIN_STEP` seconds (the first sample of each
  step is kept, the rest dropped), at most :data:`MAX_THINNED` (a day of them).

So a series never holds more than :data:`MAX_SAMPLES` samples whatever the interval or the
sandbox's life: a sandbox that lives longer than a day loses its oldest minutes first.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
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


def cpu_percent(cpu_before: float, cpu_now: float, elapsed: float, cpus: float) -> float:
    """Share of ``cpus`` cores busy over ``elapsed`` seconds, 0 to 100, two decimals."""
    if elapsed <= 0 or cpus <= 0:
        return 0.0
    return round(min(max((cpu_now - cpu_before) / (elapsed * cpus) * 100, 0.0), 100.0), 2)


def _micro(seconds: float) -> int:
    return round(seconds * 1_000_000)


class Series:
    """A sandbox's samples (see the module's docstring for the bounds)."""

    __slots__ = ("tenant", "stopped_at", "_recent", "_thinned")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        #: When the sandbox was seen stopped (epoch seconds), None while it lives.
        self.stopped_at: float | None = None
        self._recent: collections.deque[Sample] = collections.deque()
        self._thinned: collections.deque[Sample] = collections.deque(maxlen=MAX_THINNED)

    def __len__(self) -> int:
        return len(self._recent) + len(self._thinned)

    def add(self, sample: Sample) -> None:
        """Append ``sample`` (newer than every one held); thin what ages out."""
        self._recent.append(sample)
        while self._recent and (len(self._recent) > MAX_RECENT
                                or self._recent[0].time < sample.time - FULL_WINDOW):
            old = self._recent.popleft()
            if not self._thinned or old.time >= self._thinned[-1].time + THIN_STEP:
                self._thinned.append(old)

    def samples(self, start: float | None = None, end: float | None = None
                ) -> list[Sample]:
        """Samples from ``start`` to ``end`` (epoch seconds, both included, to the
        microsecond: the precision of the times the API shows), oldest first."""
        low = None if start is None else _micro(start)
        high = None if end is None else _micro(end)
        return [s for s in self._all() if (low is None or _micro(s.time) >= low)
                and (high is None or _micro(s.time) <= high)]

    def last(self, points: int) -> list[Sample]:
        """The newest ``points`` samples, oldest first."""
        if points <= 0:
            return []
        if points <= len(self._recent):
            return list(self._recent)[-points:]
        return list(self._all())[-points:]

    def latest(self) -> Sample | None:
        if self._recent:
            return self._recent[-1]
        return self._thinned[-1] if self._thinned else None

    def _all(self) -> Iterator[Sample]:
        yield from self._thinned
        yield from self._recent
