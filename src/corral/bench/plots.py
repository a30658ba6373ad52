"""PNG plots of a benchmark report (``corral bench --plots DIR``), for docs/benchmarks.md.

They are drawn from the report's JSON document, so a saved ``--json`` file can be plotted
again later (``python -m corral.bench.plots bench.json DIR``). Needs matplotlib, the
``bench`` extra (``pip install 'corral[bench]'``; scripts/install installs it).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from corral.api.errors import InvalidArgumentError

CORRAL, BARE = "#1f77b4", "#7f7f7f"
DPI = 110


def render_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write the plots this report has data for into ``directory``; returns their paths."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgumentError("plots need matplotlib: install the `bench` extra "
                                   "(pip install -e '.[bench]')") from None
    directory.mkdir(parents=True, exist_ok=True)
    runtimes = report["runtimes"]
    stamp = f"corral bench, {report['started'][:16].replace('T', ' ')} UTC"
    written = []
    for name, draw in (("bench-create.png", _create), ("bench-throughput.png", _throughput),
                       ("bench-pss.png", _pss)):
        figure = plt.figure(figsize=(10, 5))
        if draw(figure, runtimes):
            figure.text(0.99, 0.01, stamp, ha="right", va="bottom", fontsize=7, color="gray")
            figure.tight_layout(rect=(0, 0.03, 1, 1))
            path = directory / name
            figure.savefig(path, dpi=DPI)
            written.append(path)
        plt.close(figure)
    return written


def _label(runtime: str, what: str) -> str:
    return runtime + "\n" + textwrap.fill(what, 16)


def _rows(runtime: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in runtime["rows"]}


def _create(figure: Any, runtimes: list[dict[str, Any]]) -> bool:
    """create → first command samples per runtime, beside the bare runs (log scale)."""
    series: list[tuple[str, list[float], str]] = []
    for runtime in runtimes:
        rows = _rows(runtime)
        first = rows.get("create_to_first_command")
        if first is None:
            continue
        name = runtime["runtime"]
        series.append((_label(name, "Corral"), first["corral"]["samples"], CORRAL))
        series.append((_label(name, first["bare"]["label"]), first["bare"]["samples"], BARE))
        agent = rows.get("create_to_first_command_vs_agent")
        if agent is not None:
            series.append((_label(name, agent["bare"]["label"]), agent["bare"]["samples"],
                           BARE))
        pool = rows.get("pool_acquire_first_command")
        if pool is not None:
            series.append((_label(name, "Corral, warm pool acquire"),
                           pool["corral"]["samples"], CORRAL))
    if not series:
        return False
    axes = figure.add_subplot()
    data = [[value * 1000 for value in samples] for _, samples, _ in series]
    boxes = axes.boxplot(data, patch_artist=True, widths=0.6)
    for patch, (_, _, color) in zip(boxes["boxes"], series, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    axes.set_xticks(range(1, len(series) + 1), [label for label, _, _ in series], fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("ms (log scale)")
    axes.set_title("create → first command: Corral beside the bare primitives")
    axes.grid(axis="y", which="both", alpha=0.3)
    return True


def _throughput(figure: Any, runtimes: list[dict[str, Any]]) -> bool:
    """creates/s against concurrent clients, Corral and bare, per runtime."""
    axes = figure.add_subplot()
    drawn = False
    ticks: set[int] = set()
    for runtime, style in zip(runtimes, ("o-", "s--", "^-."), strict=False):
        rows = sorted((row for row in runtime["rows"] if row["key"].startswith(
            "create_throughput_")), key=lambda row: row["extra"]["clients"])
        if not rows:
            continue
        clients = [int(row["extra"]["clients"]) for row in rows]
        ticks.update(clients)
        name = runtime["runtime"]
        axes.plot(clients, [row["rate"]["corral_per_s"] for row in rows], style,
                  color=CORRAL, label=f"{name}: Corral")
        axes.plot(clients, [row["rate"]["bare_per_s"] or 0 for row in rows], style,
                  color=BARE, label=f"{name}: {rows[0]['bare']['label'].split(',')[0]}")
        drawn = True
    if not drawn:
        return False
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    axes.minorticks_off()
    axes.set_yscale("log")
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("sandboxes created per second (log)")
    axes.set_title("creation throughput (create → first command → kill)")
    axes.grid(which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return True


def _pss(figure: Any, runtimes: list[dict[str, Any]]) -> bool:
    """PSS per sandbox: idle, bare idle, pooled with and without a warm kernel."""
    bars: list[tuple[str, float, str]] = []
    for runtime in runtimes:
        rows = _rows(runtime)
        name = runtime["runtime"]
        idle = rows.get("idle_pss")
        if idle is not None:
            live = idle["extra"]["live"]
            bars.append((_label(name, f"idle, {live:g} live"), idle["corral"]["p50"], CORRAL))
            if "bare" in idle:
                bars.append((_label(name, idle["bare"]["label"]), idle["bare"]["p50"], BARE))
        for key, label in (("pool_pss_no_kernel", "pooled, no kernel"),
                           ("pool_pss_warm_kernel", "pooled, warm kernel")):
            if key in rows:
                bars.append((_label(name, label), rows[key]["corral"]["p50"], CORRAL))
    if not bars:
        return False
    axes = figure.add_subplot()
    positions = range(len(bars))
    axes.bar(positions, [value for _, value, _ in bars],
             color=[color for _, _, color in bars], alpha=0.7)
    for x, (_, value, _) in zip(positions, bars, strict=True):
        axes.text(x, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    axes.set_xticks(list(positions), [label for label, _, _ in bars], fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("MiB PSS per sandbox, p50 (log)")
    axes.set_title("memory per sandbox (PSS of every host process in its cgroup)")
    axes.grid(axis="y", which="both", alpha=0.3)
    return True


def main(argv: list[str]) -> None:
    """``python -m corral.bench.plots REPORT.json DIR``."""
    if len(argv) != 2:
        raise SystemExit("usage: python -m corral.bench.plots REPORT.json DIR")
    for path in render_plots(json.loads(Path(argv[0]).read_text()), Path(argv[1])):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
