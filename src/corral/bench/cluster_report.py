"""The summary of one cluster simulation run, and its Markdown table (docs/scaling.md)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cluster_sim import Simulation

# The resources whose busy share the summary reports. The WAL flusher is busy whenever
# commits come faster than one a flush, yet group commit lets it take many more: it is
# shown (with commits per flush) but not named the bottleneck for being busy.
RESOURCES = ("api_cpu", "db_cpu", "db_wal", "db_pool", "host_start_slots")
QUEUEING = ("api_cpu", "db_cpu", "db_pool", "host_start_slots")
RESOURCE_NAMES = {
    "api_cpu": "API server CPU",
    "db_cpu": "PostgreSQL CPU",
    "db_wal": "PostgreSQL WAL flush",
    "db_pool": "DB connection pools",
    "host_start_slots": "host start slots",
}


def quantile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(sim: Simulation) -> dict[str, Any]:
    p = sim.p
    series = sim.series
    reached = sim._target_reached_at
    # The busy window: from the top of the ramp (or 10 s before the target, if sooner)
    # to the target. That is where the offered load is highest.
    end = reached if reached is not None else (series[-1]["t"] if series else 0.0)
    start = min(p.ramp_s, max(0.0, end - 10.0))
    window = [row for row in series if start < row["t"] <= end] or series[-1:]
    utilisation = {name: (sum(row[name] for row in window) / len(window) if window else 0.0)
                   for name in RESOURCES}
    bottleneck = max(QUEUEING, key=lambda name: utilisation[name])
    created = [row["created"] for row in series]
    peak = max((sum(created[i:i + 5]) / 5 for i in range(max(1, len(created) - 4))),
               default=0.0)
    window_rate = sum(row["created"] for row in window) / max(1, len(window))
    unfinished = sum(sim.in_flight) + sum(len(queue) for queue in sim.backlog)
    return {
        "params": dataclasses.asdict(p),
        "arrivals": sim.arrivals,
        "placed": sim.placed,
        "refused_full": sim.refused_full,
        "refused_overload": sim.refused_overload,
        "unfinished": unfinished,
        "started": sim.started_total,
        "live_at_end": sum(sim.live),
        "live_max": sim.live_max,
        "deleted": sim.deleted,
        "lost": sim.lost,
        "failed_in_flight": sim.failed_in_flight,
        "retries": sim.retries,
        "pool_hits": sim.pool_hits,
        "cold_starts": sim.cold_starts,
        "max_over_capacity": sim.max_over_capacity,
        "host_live_max": max(sim.live, default=0),
        "db_commits": sum(db.commits for db in sim.dbs),
        "db_flushes": sum(db.flushes for db in sim.dbs),
        "target_reached_s": reached,
        "peak_create_rate": peak,
        "window_create_rate": window_rate,
        "window_s": [start, end],
        "placement_p50_s": quantile(sim.placement_latency, 0.50),
        "placement_p99_s": quantile(sim.placement_latency, 0.99),
        "create_p50_s": quantile(sim.create_latency, 0.50),
        "create_p99_s": quantile(sim.create_latency, 0.99),
        "latency_min_s": min(sim.placement_latency + sim.create_latency, default=0.0),
        "utilisation": utilisation,
        "bottleneck": bottleneck,
        "series": series,
        "placement_latency": sim.placement_latency,
        "create_latency": sim.create_latency,
    }


def markdown_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per scenario: rates, latencies, the busiest resources."""
    head = ("| scenario | time to target | peak creates/s (5 s) | placement p50 / p99 | "
            "create p50 / p99 | 429s | API CPU | PG CPU | WAL (commits/flush) | pools | "
            "start slots | bottleneck |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, result in results:
        used = result["utilisation"]
        reached = result["target_reached_s"]
        lines.append(
            f"| {name} | "
            + (f"{reached:.0f} s" if reached is not None
               else f"not in {result['params']['max_s']:.0f} s (at most {result['live_max']:,})")
            + " | "
            f"{result['peak_create_rate']:,.0f} | "
            f"{_ms(result['placement_p50_s'])} / {_ms(result['placement_p99_s'])} | "
            f"{_ms(result['create_p50_s'])} / {_ms(result['create_p99_s'])} | "
            f"{result['refused_overload']:,} | "
            + " | ".join(f"{used[name]:.0%}" + (
                f" ({result['db_commits'] / max(1, result['db_flushes']):.1f})"
                if name == "db_wal" else "") for name in RESOURCES)
            + f" | {RESOURCE_NAMES[result['bottleneck']]} |")
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
