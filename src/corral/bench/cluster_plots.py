"""PNG plots of cluster simulation runs (``--cluster-sim --plots DIR``), for docs/scaling.md.

Needs matplotlib, the ``bench`` extra. Three plots: created sandboxes per second over time
with the live count, the CDF of create latency, and each resource's busy share over time,
for every scenario of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any



from .cluster_report import RESOURCE_NAMES, RESOURCES
from .plots import pyplot

DPI = 110


def render_cluster_plots(results: list[tuple[str, dict[str, Any]]],
                         directory: Path) -> list[Path]:
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("scaling-create-rate.png", _rate),
                       ("scaling-latency-cdf.png", _cdf),
                       ("scaling-utilisation.png", _utilisation)):
        figure = draw(plt, results)
        figure.text(0.99, 0.01, "corral bench --cluster-sim (simulated)", ha="right",
                    va="bottom", fontsize=7, color="gray")
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        path = directory / name
        figure.savefig(path, dpi=DPI)
        plt.close(figure)
        written.append(path)
    return written


def _rate(plt: Any, results: list[tuple[str, dict[str, Any]]]) -> Any:
    figure, (rate, live) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name, result in results:
        times = [row["t"] for row in result["series"]]
        rate.plot(times, [row["created"] for row in result["series"]], label=name, lw=1)
        live.plot(times, [row["live"] for row in result["series"]], label=name, lw=1)
    rate.set_ylabel("sandboxes created / s")
    rate.set_title("Create rate while filling 1,000 hosts to 100,000 sandboxes")
    live.set_ylabel("live sandboxes")
    live.set_xlabel("simulated time (s)")
    rate.legend(fontsize=7)
    return figure


def _cdf(plt: Any, results: list[tuple[str, dict[str, Any]]]) -> Any:
    figure, axes = plt.subplots(figsize=(10, 5))
    for name, result in results:
        samples = sorted(result["create_latency"])
        if not samples:
            continue
        step = max(1, len(samples) // 2000)  # the curve needs ~2,000 points, not 100,000
        points = samples[::step]
        axes.plot([value * 1000 for value in points],
                  [(index * step + 1) / len(samples) for index in range(len(points))],
                  label=name, lw=1)
    axes.set_xscale("log")
    axes.set_xlabel("create latency (ms, log scale): request in -> response out")
    axes.set_ylabel("fraction of creates")
    axes.set_title("Create latency CDF")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    return figure


def _utilisation(plt: Any, results: list[tuple[str, dict[str, Any]]]) -> Any:
    figure, panels = plt.subplots(len(RESOURCES), 1, figsize=(10, 2 * len(RESOURCES)),
                                  sharex=True)
    for panel, resource in zip(panels, RESOURCES, strict=True):
        for name, result in results:
            series = result["series"]
            panel.plot([row["t"] for row in series], [row[resource] for row in series],
                       label=name, lw=1)
        panel.set_ylabel(RESOURCE_NAMES[resource], fontsize=8)
        panel.set_ylim(0, 1.05)
    panels[0].set_title("Busy share of each resource, per simulated second")
    panels[0].legend(fontsize=6, ncol=2)
    panels[-1].set_xlabel("simulated time (s)")
    return figure
