"""``corral sandbox top``'s table: each sandbox with its newest sample (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table

from corral.api.models import MetricSample, SandboxInfo

COLUMNS = ("id", "state", "image", "runtime", "cpu %", "memory", "disk", "pids", "net rx/tx")


def size(n: int | None) -> str:
    """Bytes the way people read them: 512B, 1.5K, 20.0M, 2.1G."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # not reached


def table(sandboxes: Sequence[SandboxInfo], latest: Mapping[str, Sequence[MetricSample]],
          title: str | None = None) -> Table:
    """One row a sandbox: its state, and what its newest sample says (dashes before its
    first sample, and while it is paused)."""
    grid = Table(*COLUMNS, title=title)
    grid.columns[0].no_wrap = True
    for column in grid.columns[4:]:
        column.justify = "right"
    for sb in sandboxes:
        samples = latest.get(sb.id) or ()
        sample = samples[-1] if samples and sb.state == "running" else None
        if sample is None:
            grid.add_row(sb.id, sb.state, sb.image, sb.runtime, "-", "-", "-", "-", "-")
            continue
        net = ("-" if sample.net_rx_bytes is None
               else f"{size(sample.net_rx_bytes)}/{size(sample.net_tx_bytes)}")
        grid.add_row(sb.id, sb.state, sb.image, sb.runtime, f"{sample.cpu_percent:.1f}",
                     f"{size(sample.memory_used)}/{size(sample.memory_limit)}",
                     f"{size(sample.disk_used)}/{size(sample.disk_limit)}",
                     str(sample.pids), net)
    return grid
