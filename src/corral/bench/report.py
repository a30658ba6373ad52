"""The benchmark's outputs: rich tables, a JSON document, a Markdown table, machine facts."""

from __future__ import annotations

import fnmatch
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.table import Table

from corral.api.errors import SandboxError
from corral.runtime.gvisor.runsc import GvisorOptions, RunscError
from corral.runtime.gvisor.runsc import resolve as resolve_runsc
from corral import __version__

from .stats import Row, RuntimeResult

MS = 1000.0

def _clients(row: Row) -> float:
    return float(row.extra.get("clients", 0))


def _rate_ratio(row: Row) -> float:
    return row.rate.ratio or 99.0 if row.rate is not None else 99.0


#: Goals from the design brief and the "speed at scale", images and state-over-time issues,
#: as (runtime or "*", row key or fnmatch pattern) -> (goal, whether a row meets it, or None
#: where it does not apply).
TARGETS: dict[tuple[str, str], tuple[str, Callable[[Row], bool | None]]] = {
    ("gvisor", "create_to_first_command"): (
        "≤ 1.3× bare runsc, < 150 ms",
        lambda row: (row.ratio("p50") or 99.0) <= 1.3 and row.corral.p50 < 0.150),
    ("namespaces", "create_to_first_command"): (
        "< 25 ms", lambda row: row.corral.p50 < 0.025),
    ("*", "warm_exec"): ("< 5 ms", lambda row: row.corral.p50 < 0.005),
    ("*", "api_exec"): ("< 5 ms through HTTP on localhost",
                        lambda row: row.corral.p50 < 0.005),
    ("*", "warm_run_code"): ("< 5 ms", lambda row: row.corral.p50 < 0.005),
    ("*", "pool_acquire_first_command"): ("< 10 ms", lambda row: row.corral.p50 < 0.010),
    ("*", "pool_import_pandas"): ("< 50 ms", lambda row: row.corral.p50 < 0.050),
    ("*", "pool_burst"): (
        "100 creates from pools in < 1 s (< 10 ms each)",
        lambda row: row.rate is not None and row.rate.corral_seconds / row.rate.count < 0.010),
    ("gvisor", "create_throughput_*"): (
        "≤ 1.2× bare runsc's wall time for as many creates, as many at once",
        lambda row: _rate_ratio(row) <= 1.2 if _clients(row) > 1 else None),
    ("namespaces", "create_throughput_*"): (
        "≥ 100 creates/s",
        lambda row: (row.rate is not None and row.rate.corral_per_s >= 100)
        if _clients(row) > 1 else None),
    ("gvisor", "idle_pss"): ("< 20 MiB PSS per idle sandbox (goal: 500 live)",
                             lambda row: row.corral.p50 < 20),
    ("gvisor", "checkpoint_idle"): ("< 300 ms", lambda row: row.corral.p50 < 0.300),
    ("*", "network_create"): (
        "a policy's set-up < 20 ms (p50 with it less p50 without)",
        lambda row: row.bare is not None and row.corral.p50 - row.bare.p50 < 0.020),
    ("gvisor", "restore_first_command_idle"): ("< 300 ms",
                                               lambda row: row.corral.p50 < 0.300),
    ("*", "image_create_custom"): (
        "within 10% of the base image's create → first command (≤ 1.1×)",
        lambda row: (row.ratio("p50") or 99.0) <= 1.1),
    ("*", "resume_first_command*"): ("< 300 ms", lambda row: row.corral.p50 < 0.300),
    ("gvisor", "fork_*"): (
        "< 2 s until all 10 copies answered",
        lambda row: row.corral.p50 < 2.0 if row.extra.get("copies") == 10 else None),
    ("*", "e2b_*"): ("within 1.2× of Corral's own SDK",
                     lambda row: (row.ratio("p50") or 99.0) <= 1.2),
    ("gvisor", "paused_memory*"): (
        "no process and no memory left while paused",
        lambda row: max(row.corral.samples) == 0 and row.extra.get("processes_paused") == 0),
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
        **_gvisor_facts(),
        "bwrap_version": _first_line(["bwrap", "--version"]),
        "loadavg_start": list(os.getloadavg()),
    }


def _gvisor_facts() -> dict[str, str | None]:
    """The runsc binary, version and platform the gvisor runtime uses (and the bare runsc
    rows with it), or why there is none."""
    try:
        runsc, platform = resolve_runsc(GvisorOptions.from_env())
    except (RunscError, SandboxError) as exc:
        return {"runsc_path": None, "runsc_version": None, "gvisor_platform": None,
                "gvisor_problem": str(exc)}
    return {"runsc_path": runsc.path, "runsc_version": runsc.version,
            "gvisor_platform": platform.name}


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
    for (who, pattern), (goal, check) in TARGETS.items():
        if who in (runtime, "*") and fnmatch.fnmatchcase(row.key, pattern):
            met = check(row)
            return None if met is None else (goal, met)
    return None


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    value = seconds * MS
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(row: Row) -> str:
    """The last column: MiB/s of a file round trip, or creates/s beside the bare rate."""
    value = row.throughput_mib_s()
    if value is not None:
        return f"{value:.0f} MiB/s"
    if row.rate is None:
        return ""
    bare = row.rate.bare_per_s
    text = f"{row.rate.corral_per_s:.1f}/s"
    if bare is not None:
        text += f" vs {bare:.1f}/s ({_ratio(row.rate.ratio)})"
    return text


def _cells(row: Row) -> list[str]:
    bare = row.bare
    return [row.label, _ms(row.corral.p50), _ms(row.corral.p95), row.bare_label or "-",
            _ms(bare.p50 if bare else None), _ms(bare.p95 if bare else None),
            _ratio(row.ratio("p50")), _ratio(row.ratio("p95")), _rate(row)]


def _memory_cells(row: Row) -> list[str]:
    bare = row.bare
    ratio = row.corral.mean / bare.mean if bare is not None and bare.mean > 0 else None
    return [row.label, _mib(row.corral.p50), _mib(row.corral.p95), _mib(row.corral.mean),
            row.bare_label or "-", _mib(bare.p50 if bare else None),
            _mib(bare.mean if bare else None), _ratio(row.ratio("p50")), _ratio(ratio)]


HEADERS = ["measure", "p50 ms", "p95 ms", "bare primitive", "bare p50", "bare p95",
           "ratio p50", "ratio p95", "rate"]
MEMORY_HEADERS = ["memory", "p50 MiB", "p95 MiB", "mean MiB", "bare primitive", "bare p50",
                  "bare mean", "ratio p50", "ratio mean"]
_LEFT = (0, 3)
_MEMORY_LEFT = (0, 4)


def _split(result: RuntimeResult) -> tuple[list[Row], list[Row]]:
    """(time rows, the others: memory in MiB, counts)."""
    return ([r for r in result.rows if r.unit == "s"],
            [r for r in result.rows if r.unit != "s"])


def _memory_headers(row: Row) -> list[str]:
    """The memory table's headers, or a count's (DOM nodes) in its own unit."""
    if row.unit == "MiB":
        return MEMORY_HEADERS
    return [row.unit, *(h.replace("MiB", row.unit) for h in MEMORY_HEADERS[1:])]


def verdicts(result: RuntimeResult) -> list[tuple[str, bool]]:
    """One sentence per design goal that applies to ``result``, and whether it is met."""
    found = []
    for row in result.rows:
        verdict = target_verdict(result.runtime, row)
        if verdict is None:
            continue
        goal, met = verdict
        ratio = row.ratio("p50")
        if row.unit == "MiB":
            measured = f"p50 {_mib(row.corral.p50)} MiB"
        elif row.rate is not None:
            measured = f"{_rate(row)}, wall {_ms(row.rate.corral_seconds)} ms"
        else:
            measured = f"p50 {_ms(row.corral.p50)} ms"
        if ratio and row.rate is None:
            measured += f", {_ratio(ratio)}"
        found.append((f"{row.label}: goal {goal}; measured {measured}", met))
    return found


def rich_table(result: RuntimeResult) -> Table:
    """One runtime's rows as a rich table (times in milliseconds, memory apart)."""
    rows, memory = _split(result)
    n = rows[0].corral.n if rows else 0
    runs = "create runs" if rows and rows[0].key.startswith("create") else "rounds"
    caption = [f"n = {n} {runs}; ratio = Corral / bare, lower is better; rate: "
               "Corral vs bare, ratio of wall times"]
    caption += [f"[{'green' if met else 'red'}]{'met' if met else 'MISSED'}[/] {text}"
                for text, met in verdicts(result)]
    caption += [f"[yellow]note:[/] {note}" for note in result.notes]
    table = Table(title=f"{result.runtime} — {result.detail}", caption="\n".join(caption),
                  caption_justify="left")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i in _LEFT else "right",
                         style="bold" if i == 0 else None, no_wrap=i in _LEFT)
    for row in rows:
        table.add_row(*_cells(row))
    headers = None
    for row in memory:
        if _memory_headers(row) != headers:
            headers = _memory_headers(row)
            table.add_section()
            table.add_row(*(f"[dim]{h}[/]" for h in headers))
        table.add_row(*_memory_cells(row))
    return table


def _markdown_table(headers: list[str], left: tuple[int, ...], cells: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i in left else "---:" for i in range(len(headers))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]


def candidates(result: RuntimeResult) -> list[list[str]]:
    """Ways to have pandas imported at create, side by side (the rows that were measured)."""
    found = []
    warm_pss = result.row("pool_pss_warm_kernel")
    for key, what in (("pool_import_pandas", "warm kernel in a pooled sandbox"),
                      ("restore_first_command", "runsc restore of a checkpoint"),
                      ("cold_import_pandas", "cold kernel start")):
        row = result.row(key)
        if row is None:
            continue
        memory = _mib(warm_pss.corral.p50) if key == "pool_import_pandas" and warm_pss else "-"
        found.append([what, row.label, _ms(row.corral.p50), _ms(row.corral.p95), memory])
    return found


def markdown(report: BenchReport) -> str:
    """Every runtime's rows as Markdown tables, ready for docs/benchmarks.md."""
    lines = []
    for result in report.results:
        rows, memory = _split(result)
        lines += [f"### {result.runtime}", "", f"{result.detail}", ""]
        lines += _markdown_table(HEADERS, _LEFT, [_cells(row) for row in rows])
        lines.append("")
        for unit in dict.fromkeys(row.unit for row in memory):
            same = [row for row in memory if row.unit == unit]
            lines += _markdown_table(_memory_headers(same[0]), _MEMORY_LEFT,
                                     [_memory_cells(row) for row in same])
            lines.append("")
        found = candidates(result)
        if found:
            lines += _markdown_table(["candidate", "measure", "p50 ms", "p95 ms",
                                      "PSS MiB"], (0, 1), found)
            lines.append("")
        lines += [f"* {'met' if met else '**missed**'}: {text}"
                  for text, met in verdicts(result)]
        lines += [f"* note: {note}" for note in result.notes]
        lines.append("")
    return "\n".join(lines)
