"""``corral bench``: measure Corral beside the bare primitives it is built on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from corral.bench import BenchConfig, markdown, rich_table, run_benchmark
from corral.bench.console import ConsoleBench, run_console_benchmark
from corral.bench.plots import render_plots
from corral.bench.report import BenchReport
from corral.runtime import RUNTIME_NAMES

from ._common import DataDirOption, node_settings, private_node, reporting_errors, say, stderr


def _check_runtimes(values: list[str] | None) -> list[str] | None:
    for value in values or []:
        if value not in RUNTIME_NAMES:
            raise typer.BadParameter(
                f"unknown runtime {value!r}; choose one of: {', '.join(RUNTIME_NAMES)}")
    return values


def bench(
    quick: Annotated[bool, typer.Option(
        "--quick", help="A few iterations only (under a minute): a smoke run.")] = False,
    iterations: Annotated[int | None, typer.Option(
        "--iterations", "-n", min=1, show_default="20, or 3 with --quick",
        help="Recorded create→first command runs per runtime.")] = None,
    runtime: Annotated[list[str] | None, typer.Option(
        "--runtime", "-r", callback=_check_runtimes, show_default="every one that works",
        help=f"Runtime to measure ({', '.join(RUNTIME_NAMES)}); repeatable.")] = None,
    image: Annotated[str, typer.Option(help="Image for every sandbox and bare run.")] = "python",
    json_path: Annotated[Path | None, typer.Option(
        "--json", metavar="PATH", help="Also write every figure and sample as JSON.")] = None,
    markdown_path: Annotated[Path | None, typer.Option(
        "--markdown", metavar="PATH", help="Also write the tables as Markdown.")] = None,
    density: Annotated[int | None, typer.Option(
        "--density", min=1, max=2000, show_default="100, or 10 with --quick",
        help="Idle sandboxes held at once for the memory (PSS) measure; 500 needs ~10 GB.")
    ] = None,
    plots: Annotated[Path | None, typer.Option(
        "--plots", metavar="DIR", help="Also render PNG plots into DIR (needs matplotlib: "
        "the `bench` extra).")] = None,
    console: Annotated[bool, typer.Option(
        "--console", help="Measure the web console (/ui) alone, with --console-sandboxes "
        "live sandboxes listed, in headless chromium (needs the playwright package and "
        "chromium: `scripts/install --test`).")] = False,
    console_sandboxes: Annotated[int | None, typer.Option(
        "--console-sandboxes", min=1, max=1000, show_default="500, or 50 with --quick",
        help="Live sandboxes (namespaces, unless --runtime) the --console rows list.")] = None,
    cluster_sim: Annotated[bool, typer.Option(
        "--cluster-sim", help="Run the cluster-mode simulation instead (100,000 sandboxes on "
        "1,000 hosts, no sandboxes started; docs/scaling.md); --quick for 1/20 of it, "
        "--json and --plots as usual.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Measure sandbox start-up, exec and file round trips against bare runsc/bwrap.

    For each runtime that works: create → first command (p50/p95) beside a bare
    `runsc run` (gvisor) or `bwrap` (namespaces) of the same image, teardown, a warm exec
    round trip beside a host fork+exec and beside a process start timed inside a bare
    sandbox (its floor), 1 MiB / 64 MiB file round trips, and an exec round
    trip through the HTTP API (a `corral serve` the bench starts on 127.0.0.1, driven by
    the SDK) beside the same exec through the in-process node, requests to an app in a
    sandbox through that server's exposed-port proxy beside the same app on the host
    (small GET, new connection, 64 MiB), and (as root, with
    nftables) a network policy's cost at create, per connection and per 64 MiB, beside
    the same without it, against a test internet in a namespace of its own, and built
    images: a cold three-step build and a rebuild of its last step beside as many bare
    runs, and create → first command from a built image beside the same from the base
    image (with --quick, that last row alone). Ratios are Corral / bare
    (HTTP / in-process for the API row). The image must be built (`corral image build
    python`).

    Examples:

        corral bench --quick

        corral bench -n 20 --json bench.json --runtime gvisor

        corral bench --density 500 --runtime gvisor --plots docs/img

        corral bench --console -n 10 --json console.json

        corral bench --cluster-sim --plots docs/img

    With --console, the web console alone: a `corral serve` of its own with 500 live
    sandboxes of one tenant, the list page, a page turn, its sparklines, a filter, the
    keyboard, and the page's JS heap and DOM nodes, each beside the API call it is built on
    (docs/benchmarks.md says what each row times).

    With --cluster-sim, no sandbox is started: a discrete-event simulation of cluster mode
    fills 1,000 hosts with 100,000 sandboxes in each scenario of docs/scaling.md and prints
    create rate, latencies and each resource's busy share (python -m corral.bench.cluster_sim
    takes a parameters file and one scenario).
    """
    if cluster_sim:
        _cluster_sim(quick, json_path, plots)
        return
    if console:
        report = _console_report(quick, iterations, runtime, image, console_sandboxes,
                                 data_dir)
        _print(report, image, json_path, markdown_path)
        return
    runtimes = tuple(runtime or ())
    config = BenchConfig.quick(image, runtimes) if quick else BenchConfig(
        image=image, runtimes=runtimes)
    if iterations is not None:
        config = dataclasses.replace(config, iterations=iterations)
    if density is not None:
        config = dataclasses.replace(config, density=density)
    settings = node_settings(data_dir)
    with reporting_errors(), private_node(settings) as private:
        if stderr.is_terminal:
            with stderr.status("starting") as status:
                report = asyncio.run(run_benchmark(private, config, status.update))
        else:
            report = asyncio.run(run_benchmark(private, config, lambda line: None))
    _print(report, config.image, json_path, markdown_path)
    if plots is not None:
        with reporting_errors():
            for path in render_plots(report.to_json(), plots):
                say(f"wrote {path}")


def _cluster_sim(quick: bool, json_path: Path | None, plots: Path | None) -> None:
    from corral.bench.cluster_sim import run_scenarios, write_json
    from corral.bench.cluster_report import markdown_table

    with reporting_errors():
        results = run_scenarios(quick_run=quick)
        print(markdown_table(results), end="")
        if json_path is not None:
            write_json(results, json_path)
            say(f"wrote {json_path}")
        if plots is not None:
            from corral.bench.cluster_plots import render_cluster_plots
            for path in render_cluster_plots(results, plots):
                say(f"wrote {path}")


def _console_report(quick: bool, iterations: int | None, runtime: list[str] | None,
                    image: str, sandboxes: int | None, data_dir: Path | None) -> BenchReport:
    if runtime is not None and len(runtime) != 1:
        raise typer.BadParameter("--console measures one runtime; give --runtime once",
                                 param_hint="--runtime")
    config = ConsoleBench(sandboxes=sandboxes or (50 if quick else 500),
                          iterations=iterations or (3 if quick else 10),
                          warmup=1 if quick else 2, image=image,
                          runtime=runtime[0] if runtime else "namespaces")
    settings = node_settings(data_dir)
    with reporting_errors():
        if stderr.is_terminal:
            with stderr.status("starting") as status:
                return asyncio.run(run_console_benchmark(settings.image_dir, config,
                                                         status.update))
        return asyncio.run(run_console_benchmark(settings.image_dir, config, say))


def _print(report: BenchReport, image: str, json_path: Path | None,
           markdown_path: Path | None) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a log or a file: do not squeeze the tables into 80
    machine = report.machine
    console.print(f"[bold]Corral benchmark[/] {report.started:%Y-%m-%d %H:%M} UTC · "
                  f"{machine['cpu_count']} CPUs ({machine['cpu_model']}) · {machine['kernel']}"
                  f" · runsc {machine['runsc_version']} on {machine['gvisor_platform']}"
                  f" · image {image}", soft_wrap=True)
    for result in report.results:
        console.print(rich_table(result))
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        say(f"wrote {json_path}")
    if markdown_path is not None:
        markdown_path.write_text(markdown(report))
        say(f"wrote {markdown_path}")
