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


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only), or a clear error without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgumentError("plots need matplotlib: install the `bench` extra "
                                   "(pip install -e '.[bench]')") from None
    return plt


def render_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write the plots this report has data for into ``directory``; returns their paths."""
    plt = pyplot()
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


#: Colours of the configurations a comparison plot sets side by side, in order.
COMPARE_COLORS = ("#7f7f7f", "#ff7f0e", "#1f77b4", "#2ca02c")


def comparison(reports: list[tuple[str, dict[str, Any]]],
               runtime: str) -> list[tuple[str, list[float | None]]]:
    """(row label, p50 in ms of each report or None) for every timed row of ``runtime`` in
    any report, in the first report's order: what :func:`render_comparison` draws. A row
    told apart only by its bare primitive (one Corral figure beside several) comes once."""
    order: list[str] = []
    labels: dict[str, str] = {}
    values: dict[str, dict[int, float]] = {}
    for index, (_, report) in enumerate(reports):
        for found in report["runtimes"]:
            if found["runtime"] != runtime:
                continue
            for row in found["rows"]:
                stat = row.get("corral") or {}
                if stat.get("unit") != "s" or stat.get("p50") is None:
                    continue
                if row["key"] not in labels:
                    if row["label"] in labels.values():
                        continue  # the same Corral figure beside another bare primitive
                    order.append(row["key"])
                    labels[row["key"]] = row["label"]
                values.setdefault(row["key"], {})[index] = stat["p50"] * 1000
    return [(labels[key], [values[key].get(i) for i in range(len(reports))]) for key in order]


def render_comparison(reports: list[tuple[str, dict[str, Any]]], runtime: str,
                      path: Path) -> Path:
    """One runtime's p50s of several reports (named configurations) as grouped bars."""
    plt = pyplot()
    rows = comparison(reports, runtime)
    if not rows:
        raise InvalidArgumentError(f"no report has timed rows for runtime {runtime!r}")
    figure = plt.figure(figsize=(10, 0.45 * len(rows) * len(reports) + 1.5))
    axes = figure.add_subplot()
    height = 0.8 / len(reports)
    for index, (name, _) in enumerate(reports):
        ys = [r - 0.4 + height * (index + 0.5) for r in range(len(rows))]
        xs = [values[index] or 0.0 for _, values in rows]
        axes.barh(ys, xs, height=height, label=name,
                  color=COMPARE_COLORS[index % len(COMPARE_COLORS)], alpha=0.8)
        for y, (_, values) in zip(ys, rows, strict=True):
            value = values[index]
            if value is not None:
                axes.text(value, y, f" {value:.1f}", va="center", fontsize=6)
    axes.set_yticks(range(len(rows)), [textwrap.shorten(label, 60) for label, _ in rows],
                    fontsize=7)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("p50, ms (log scale)")
    axes.set_title(f"{runtime}: Corral's figures, configuration by configuration")
    axes.grid(axis="x", which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def main(argv: list[str]) -> None:
    """``python -m corral.bench.plots REPORT.json DIR``, or
    ``python -m corral.bench.plots --compare RUNTIME OUT.png NAME=REPORT.json ...``."""
    if argv[:1] == ["--compare"] and len(argv) >= 5:
        named = [item.split("=", 1) for item in argv[3:]]
        if any(len(pair) != 2 for pair in named):
            raise SystemExit("each report is NAME=REPORT.json")
        reports = [(name, json.loads(Path(file).read_text())) for name, file in named]
        print(f"wrote {render_comparison(reports, argv[1], Path(argv[2]))}")
        return
    if len(argv) != 2:
        raise SystemExit("usage: python -m corral.bench.plots REPORT.json DIR\n"
                         "       python -m corral.bench.plots --compare RUNTIME OUT.png "
                         "NAME=REPORT.json NAME=REPORT.json ...")
    for path in render_plots(json.loads(Path(argv[0]).read_text()), Path(argv[1])):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
