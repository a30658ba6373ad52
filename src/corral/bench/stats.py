"""Samples, percentiles and the rows of a benchmark report. Plain values, no I/O."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def percentile(samples: tuple[float, ...], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of non-empty ``samples``.

    Nearest-rank never interpolates, so p95 of 20 samples is the 19th smallest: a value
    that was actually measured.
    """
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Stat:
    """Timings of one measure, in seconds."""

    samples: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {"unit": "s", "n": self.n, "p50": self.p50, "p95": self.p95, "mean": self.mean,
                "min": min(self.samples), "max": max(self.samples),
                "samples": list(self.samples)}


@dataclass(frozen=True)
class Rate:
    """``count`` operations done by Corral in ``corral_seconds`` of wall time, and the same
    count of bare primitives in ``bare_seconds`` (creation throughput, bursts)."""

    count: int
    corral_seconds: float
    bare_seconds: float | None = None

    @property
    def corral_per_s(self) -> float:
        return self.count / self.corral_seconds if self.corral_seconds > 0 else 0.0

    @property
    def bare_per_s(self) -> float | None:
        if self.bare_seconds is None or self.bare_seconds <= 0:
            return None
        return self.count / self.bare_seconds

    @property
    def ratio(self) -> float | None:
        """Corral's wall time / bare's (= bare rate / Corral rate; above 1: Corral slower)."""
        if self.bare_seconds is None or self.bare_seconds <= 0:
            return None
        return self.corral_seconds / self.bare_seconds

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "corral_seconds": self.corral_seconds,
                "bare_seconds": self.bare_seconds, "corral_per_s": self.corral_per_s,
                "bare_per_s": self.bare_per_s, "ratio": self.ratio}


@dataclass(frozen=True)
class Row:
    """One line of a report: a Corral measure, with the bare primitive it is compared to.

    ``size_bytes`` is set for file transfers: each sample wrote and then read that many
    bytes, so the throughput is ``2 * size / time``. ``unit`` is what the samples count:
    seconds (``"s"``), or ``"MiB"`` for memory rows. ``rate`` is set for throughput rows
    (the samples are then each operation's latency); ``extra`` holds facts of the row
    (clients, sandboxes live, image size) for the JSON document and the verdicts.
    """

    key: str
    label: str
    corral: Stat
    bare_label: str = ""
    bare: Stat | None = None
    size_bytes: int | None = None
    unit: str = "s"
    rate: Rate | None = None
    extra: Mapping[str, float | str] = field(default_factory=dict)

    def ratio(self, q: str) -> float | None:
        """``corral / bare`` at ``q`` ("p50" or "p95"); None without a primitive."""
        if self.bare is None:
            return None
        bare = float(getattr(self.bare, q))
        return float(getattr(self.corral, q)) / bare if bare > 0 else None

    def throughput_mib_s(self, q: str = "p50") -> float | None:
        """MiB moved per second (written plus read) at the ``q`` time."""
        if self.size_bytes is None:
            return None
        seconds = float(getattr(self.corral, q))
        return 2 * self.size_bytes / (1024 * 1024) / seconds if seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": self.key, "label": self.label,
                               "corral": {**self.corral.to_json(), "unit": self.unit}}
        if self.bare is not None:
            doc["bare"] = {"label": self.bare_label, **self.bare.to_json(), "unit": self.unit}
            doc["ratio"] = {"p50": self.ratio("p50"), "p95": self.ratio("p95")}
        if self.size_bytes is not None:
            doc["size_bytes"] = self.size_bytes
            doc["throughput_mib_s"] = {"p50": self.throughput_mib_s("p50"),
                                       "p95": self.throughput_mib_s("p95")}
        if self.rate is not None:
            doc["rate"] = self.rate.to_json()
        if self.extra:
            doc["extra"] = dict(self.extra)
        return doc


@dataclass
class RuntimeResult:
    """Everything measured for one runtime."""

    runtime: str
    detail: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        """The row named ``key``, if it was measured."""
        return next((row for row in self.rows if row.key == key), None)

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "detail": self.detail,
                "rows": [row.to_json() for row in self.rows], "notes": list(self.notes)}


def out_of_time(deadline: float, recorded: list[float], i: int, rounds: int, what: str,
                result: RuntimeResult, budget: float) -> bool:
    """Whether a measure stops taking rounds: its ``budget`` (seconds, ending at the
    monotonic ``deadline``) is spent and a sample is recorded; says so in ``result``."""
    if not recorded or time.monotonic() < deadline:
        return False
    result.notes.append(f"{what}: stopped after {i} of {rounds} rounds, "
                        f"its {budget:g} s budget spent")
    return True


def round_label(i: int, warmup: int, rounds: int) -> str:
    """Round ``i`` of ``rounds`` as the progress line says it (warm-up rounds first)."""
    if i < warmup:
        return f"warm-up {i + 1}/{warmup}"
    return f"{i + 1 - warmup}/{rounds - warmup}"
