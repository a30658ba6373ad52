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
    ("*", "api_exec"): ("< 5 ms through HTTP on localhost",
                        lambda row: row.corral.p50 < 0.005),
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
    value = row.throughput_mib_s()
    return "" if value is None else f"{value:.0f}"


def _cells(row: Row) -> list[str]:
    bare = row.bare
    return [row.label, _ms(row.corral.p50), _ms(row.corral.p95), row.bare_label or "-",
            _ms(bare.p50 if bare else None), _ms(bare.p95 if bare else None),
            _ratio(row.ratio("p50")), _ratio(row.ratio("p95")), _throughput(row)]


HEADERS = ["measure", "p50 ms", "p95 ms", "bare primitive", "bare p50", "bare p95",
           "ratio p50", "ratio p95", "MiB/s"]
_LEFT = (0, 3)


def verdicts(result: RuntimeResult) -> list[tuple[str, bool]]:
    """One sentence per design goal that applies to ``result``, and whether it is met."""
    found = []
    for row in result.rows:
        verdict = target_verdict(result.runtime, row)
        if verdict is None:
            continue
        goal, met = verdict
        ratio = row.ratio("p50")
        measured = f"p50 {_ms(row.corral.p50)} ms" + (f", {_ratio(ratio)}" if ratio else "")
        found.append((f"{row.label}: goal {goal}; measured {measured}", met))
    return found


def rich_table(result: RuntimeResult) -> Table:
    """One runtime's rows as a rich table (times in milliseconds)."""
    n = result.rows[0].corral.n if result.rows else 0
    caption = [f"n = {n} create runs; ratio = Corral / bare, lower is better"]
    caption += [f"[{'green' if met else 'red'}]{'met' if met else 'MISSED'}[/] {text}"
                for text, met in verdicts(result)]
    caption += [f"[yellow]note:[/] {note}" for note in result.notes]
    table = Table(title=f"{result.runtime} — {result.detail}", caption="\n".join(caption),
                  caption_justify="left")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i in _LEFT else "right",
                         style="bold" if i == 0 else None, no_wrap=i in _LEFT)
    for row in result.rows:
        table.add_row(*_cells(row))
    return table


def markdown(report: BenchReport) -> str:
    """Every runtime's rows as Markdown tables, ready for docs/benchmarks.md."""
    lines = []
    for result in report.results:
        lines += [f"### {result.runtime}", "", f"{result.detail}", ""]
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "|".join("---" if i in _LEFT else "---:"
                                    for i in range(len(HEADERS))) + "|")
        for row in result.rows:
            lines.append("| " + " | ".join(_cells(row)) + " |")
        lines.append("")
        lines += [f"* {'met' if met else '**missed**'}: {text}"
                  for text, met in verdicts(result)]
        lines += [f"* note: {note}" for note in result.notes]
        lines.append("")
    return "\n".join(lines)
