"""``corral doctor``: what works on this host, what does not, and how to fix it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from corral.api.errors import SandboxError
from corral.node.images import ImageStore
from corral.node.gpus import doctor_rows as gpu_rows
from corral.runtime import GvisorOptions, available_runtimes
from corral.runtime.gpu import discover
from corral.runtime.gvisor import runsc as runsc_module
from corral.runtime.host import favordynmods_enabled

from ._common import DataDirOption, human_size, node_settings, reporting_errors

CGROUP_ROOT = Path("/sys/fs/cgroup")


def doctor(data_dir: DataDirOption = None) -> None:
    """Check which sandbox runtimes work here, and show host facts and built images.

    Exits 0 when at least one runtime works, else 1.

    Example:

        corral doctor
    """
    console = Console()
    with reporting_errors():  # e.g. CORRAL_GVISOR_PLATFORM=kvm
        runtimes = available_runtimes(gvisor=GvisorOptions.from_env())
    default = next((name for name, (_, status) in runtimes.items() if status.ok), None)

    table = Table(title="Runtimes (strongest first)")
    table.add_column("runtime", style="bold")
    table.add_column("works", justify="center")
    table.add_column("detail")
    table.add_column("how to fix")
    for name, (_, status) in runtimes.items():
        label = f"{name} (default)" if name == default else name
        table.add_row(label, "[green]✓[/]" if status.ok else "[red]✗[/]", status.detail,
                      status.fix or "-")
    table.add_row("microvm", "[red]✗[/]", _kvm_fact(),
                  "not built: needs a host whose KVM can boot a guest")
    console.print(table)
    console.print(_gvisor_table())
    gpus = Table(title="GPUs", show_header=False)
    gpus.add_column("fact", style="bold")
    gpus.add_column("value")
    for fact, value in gpu_rows(discover(), runtimes):
        gpus.add_row(fact, value)
    console.print(gpus)

    settings = node_settings(data_dir)
    host = Table(title="Host", show_header=False)
    host.add_column("fact", style="bold")
    host.add_column("value")
    host.add_row("kernel", f"{platform.system()} {platform.release()} ({platform.machine()})")
    host.add_row("cpus", str(os.cpu_count()))
    host.add_row("memory", human_size(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")))
    host.add_row("cgroups", _cgroup_fact())
    host.add_row("cgroup favordynmods", _favordynmods_fact())
    host.add_row("/dev/kvm", _kvm_fact())
    host.add_row("running as", "root" if os.geteuid() == 0 else f"uid {os.geteuid()} (need root)")
    host.add_row("data dir", str(settings.data_dir))
    host.add_row("image dir", str(settings.image_dir))
    console.print(host)

    images = Table(title="Images")
    images.add_column("name", style="bold")
    images.add_column("size", justify="right")
    images.add_column("root filesystem")
    try:
        built = ImageStore(settings.image_dir).list()
    except SandboxError as exc:
        built = []
        images.add_row("[red]?[/]", "-", exc.message)
    for image in built:
        images.add_row(image.name, human_size(image.size_bytes), str(image.rootfs))
    if not built:
        images.add_row("[dim](none)[/]", "-", "build one: corral image build python")
    console.print(images)

    if default is None:
        console.print("[red]No runtime works on this host; see 'how to fix' above.[/]")
        raise typer.Exit(1)
    console.print(f"[green]Ready:[/] sandboxes use [bold]{default}[/] unless told otherwise.")


def _gvisor_table() -> Table:
    """The runsc binary, and each platform's probe: what gvisor sandboxes run on, and why."""
    table = Table(title="gVisor", show_header=False)
    table.add_column("fact", style="bold")
    table.add_column("value")
    options = GvisorOptions.from_env()
    try:
        runsc = runsc_module.locate(options.runsc)
    except runsc_module.RunscError as exc:
        table.add_row("runsc", f"[red]{exc}[/]")
        return table
    origin = ("pinned, installed by scripts/install" if runsc.managed
              else "CORRAL_RUNSC" if options.runsc else "the system's, from PATH")
    table.add_row("runsc", f"{runsc.path} ({origin})")
    version = runsc.version if runsc.pinned else (
        f"{runsc.version} [yellow](not the pinned {runsc_module.PINNED_VERSION}: "
        f"{runsc_module.INSTALL_COMMAND} fetches it)[/]")
    table.add_row("version", version)
    for name in runsc_module.PLATFORMS:
        problem = runsc_module.probe(runsc.path, name)
        table.add_row(f"platform {name}", "[green]works[/]" if problem is None
                      else f"[red]does not work[/]: {problem}")
    table.add_row("platform kvm", "not offered: runsc hangs on it on hosts whose KVM cannot "
                                  "boot a guest")
    try:
        chosen = runsc_module.choose(runsc, options.platform)
        table.add_row("sandboxes use", f"[bold]{chosen.name}[/] ({chosen.why})")
    except runsc_module.RunscError as exc:
        table.add_row("sandboxes use", f"[red]{exc}[/]")
    return table


def _cgroup_fact() -> str:
    """Which cgroup hierarchies are mounted (Corral needs v1 memory/pids/cpu and a v2 one)."""
    v1 = [c for c in ("memory", "pids", "cpu") if (CGROUP_ROOT / c / "cgroup.procs").exists()]
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "v2 only (unified at /sys/fs/cgroup)"
    unified = (CGROUP_ROOT / "unified" / "cgroup.controllers").exists()
    parts = [f"v1 controllers: {', '.join(v1) or 'none'}",
             "v2 at /sys/fs/cgroup/unified" if unified else "no v2 hierarchy"]
    return "hybrid; " + "; ".join(parts)


def _favordynmods_fact() -> str:
    """Whether cgroup moves are fast (the node turns it on at start; see ARCHITECTURE.md)."""
    on = favordynmods_enabled()
    if on is None:
        return "no v2 hierarchy"
    return ("on" if on else "off: a node turns it on when it starts (CORRAL_TUNE_CGROUPS=0 "
            "leaves it off; each sandbox start then waits 5-20 ms on the cgroup lock)")


def _kvm_fact() -> str:
    present = os.path.exists("/dev/kvm")
    return ("/dev/kvm exists, but micro-VMs are not supported on this host kind "
            "(its KVM cannot boot a guest)" if present else
            "no /dev/kvm: micro-VMs are not supported here")
