"""The benchmark's outputs: rich tables, a JSON document, a Markdown table, machine facts."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.table import Table

from corral import __version__

from .stats import Row, RuntimeResult

MS = 1000.0

#: Goals from the design brief, as (runtime or "*", row key) -> (goal, whether a row meets it).
TARGETS: dict[tuple[str, str], tuple[str, Callable[[Row], bool]]] = {
    ("gvisor", "create_to_first_command"): (
        "≤ 1.3× bare runsc, < 150 ms",
        lambda row: (row.ratio("p50") or 99.0) <= 1.3 and row.corral.p50 < 0.150),
    ("namespaces", "create_to_first_command"): (
        "< 25 ms", lambda row: row.corral.p50 < 0.025),
    ("*", "warm_exec"): ("< 5 ms", lambda row: row.corral.p50 < 0.005),
}


@dataclass(frozen=True)
class BenchReport:
    """A whole benchmark run: the machine, the settings, and each runtime's rows."""

    machine: dict[str, Any]
    config: dict[str, Any]
    started: datetime
    finished: datetime
    results: list[RuntimeResult]

    def to_json(self) -> dict[str, Any]:
        return {"corral_version": __version__, "started": self.started.isoformat(),
                "finished": self.finished.isoformat(), "machine": self.machine,
                "config": self.config, "runtimes": [r.to_json() for r in self.results]}


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare figures across machines."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(), "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}", "arch": platform.machine(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "runsc_version": _first_line(["runsc", "--version"]),
        "bwrap_version": _first_line(["bwrap", "--version"]),
        "loadavg_start": list(os.getloadavg()),
    }


def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def target_verdict(runtime: str, row: Row) -> tuple[str, bool] | None:
    """The design goal that applies to ``row``, and whether it is met; None if none applies."""
    found = TARGETS.get((runtime, row.key)) or TARGETS.get(("*", row.key))
    if found is None:
        return None
    goal, check = found
    return goal, check(row)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    value = seconds * MS
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _throughput(row: Row) -> str:
    corral = row.throughput_mib_s()
    if corral is None:
        return ""
    host = (2 * (row.size_bytes or 0) / (1024 * 1024) / row.bare.p50
            if row.bare is not None and row.bare.p50 > 0 else None)
    return f"{corral:.0f}" + (f" (host {host:.0f})" if host is not None else "")


def _cells(runtime: str, row: Row) -> list[str]:
    bare = row.bare
    verdict = target_verdict(runtime, row)
    target = "" if verdict is None else f"{'met' if verdict[1] else 'MISSED'}: {verdict[0]}"
    return [row.label, _ms(row.corral.p50), _ms(row.corral.p95), row.bare_label or "-",
            _ms(bare.p50 if bare else None), _ms(bare.p95 if bare else None),
            _ratio(row.ratio("p50")), _ratio(row.ratio("p95")), _throughput(row), target]


HEADERS = ["measure", "Corral p50 ms", "p95 ms", "bare primitive", "bare p50 ms", "p95 ms",
           "ratio p50", "ratio p95", "MiB/s p50", "target"]


def rich_table(result: RuntimeResult) -> Table:
    """One runtime's rows as a rich table (times in milliseconds)."""
    n = result.rows[0].corral.n if result.rows else 0
    table = Table(title=f"{result.runtime} — {result.detail}", caption=f"n = {n} per create "
                  "measure; ratio = Corral / bare; lower is better")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i in (0, 3, 9) else "right",
                         style="bold" if i == 0 else None)
    for row in result.rows:
        cells = _cells(result.runtime, row)
        if cells[-1].startswith("MISSED"):
            cells[-1] = f"[red]{cells[-1]}[/]"
        elif cells[-1].startswith("met"):
            cells[-1] = f"[green]{cells[-1]}[/]"
        table.add_row(*cells)
    for note in result.notes:
        table.add_row(f"[yellow]note: {note}[/]", *[""] * (len(HEADERS) - 1))
    return table


def markdown(report: BenchReport) -> str:
    """Every runtime's rows as Markdown tables, ready for docs/benchmarks.md."""
    lines = []
    for result in report.results:
        lines += [f"### {result.runtime}", "", f"{result.detail}", ""]
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "|".join("---" if i in (0, 3, 9) else "---:"
                                    for i in range(len(HEADERS))) + "|")
        for row in result.rows:
            lines.append("| " + " | ".join(_cells(result.runtime, row)) + " |")
        lines += [f"\n_Note: {note}_" for note in result.notes]
        lines.append("")
    return "\n".join(lines)
