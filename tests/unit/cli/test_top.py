"""``corral sandbox top``'s table: sizes people read, dashes where there is no sample."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from corral.api.models import MetricSample, ResourcesSpec, SandboxInfo
from corral.cli._top import size, table

NOW = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)


def _info(sandbox_id: str, state: str) -> SandboxInfo:
    return SandboxInfo.model_validate({
        "id": sandbox_id, "image": "python", "runtime": "gvisor", "state": state,
        "resources": ResourcesSpec().model_dump(), "metadata": {}, "created_at": NOW,
        "expires_at": NOW})


def _sample(rx: int | None) -> MetricSample:
    return MetricSample(time=NOW, cpu_percent=12.345, memory_used=64 * 2**20,
                        memory_limit=512 * 2**20, disk_used=3 * 2**20, disk_limit=2**30,
                        pids=7, net_rx_bytes=rx, net_tx_bytes=None if rx is None else 2048)


def _text(grid: object) -> str:
    console = Console(width=200, record=True)
    console.print(grid)
    return console.export_text()


def test_sizes() -> None:
    assert [size(n) for n in (None, 0, 512, 1536, 20 * 2**20, 2**40 * 3)] == [
        "-", "0B", "512B", "1.5K", "20.0M", "3.0T"]


def test_rows_show_the_newest_sample() -> None:
    grid = table([_info("sbx-a", "running"), _info("sbx-b", "paused"),
                  _info("sbx-c", "running"), _info("sbx-d", "running")],
                 {"sbx-a": [_sample(None), _sample(4096)], "sbx-b": [_sample(None)],
                  "sbx-d": [_sample(None)]})
    a = [line for line in _text(grid).splitlines() if "sbx-a" in line][0]
    assert "12.3" in a and "64.0M/512.0M" in a and "3.0M/1.0G" in a and "4.0K/2.0K" in a
    b = [line for line in _text(grid).splitlines() if "sbx-b" in line][0]
    assert "paused" in b and "512.0M" not in b  # paused: no live figures
    c = [line for line in _text(grid).splitlines() if "sbx-c" in line][0]
    assert "512.0M" not in c  # no sample yet
    d = [line for line in _text(grid).splitlines() if "sbx-d" in line][0]
    assert "64.0M/512.0M" in d and d.rstrip(" │").endswith("-")  # no network
