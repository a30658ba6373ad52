"""The benchmark report's scale rows: rates beside the bare rate, memory rows in a table of
their own, the goals that apply, the candidates for pre-warmed interpreters, and the plots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.bench import BenchReport, Row, RuntimeResult, Stat, markdown, rich_table
from corral.bench.report import verdicts
from corral.bench.stats import Rate


def _result(runtime: str) -> RuntimeResult:
    rows = [
        Row("create_to_first_command", "create → first command", Stat((0.26, 0.27)),
            "runsc run /bin/true", Stat((0.10, 0.11))),
        Row("create_throughput_1", "creation throughput, 1 clients", Stat((0.3, 0.3)),
            "runsc run /bin/true, 1 at once", Stat((0.1, 0.1)), rate=Rate(8, 2.4, 0.8),
            extra={"clients": 1, "creates": 8}),
        Row("create_throughput_8", "creation throughput, 8 clients", Stat((1.0, 1.1)),
            "runsc run /bin/true, 8 at once", Stat((0.5, 0.6)), rate=Rate(24, 4.0, 3.6),
            extra={"clients": 8, "creates": 24}),
        Row("pool_acquire_first_command", "warm pool acquire → first command",
            Stat((0.012, 0.014)), "exec on a running sandbox", Stat((0.009, 0.010))),
        Row("pool_import_pandas", "warm pool create → import pandas result",
            Stat((0.020, 0.030)), "runsc run python3 import pandas", Stat((1.5, 1.6))),
        Row("pool_burst", "burst of 100 creates from a pool", Stat((0.01,) * 4),
            "runsc run /bin/true, 32 at once", Stat((0.5,) * 4), rate=Rate(100, 0.8, 9.0)),
        Row("idle_pss", "PSS per idle sandbox, 500 live", Stat((17.0, 18.0, 19.0)),
            "runsc run sleep (idle)", Stat((10.0, 10.0, 10.0)), unit="MiB",
            extra={"live": 500}),
        Row("pool_pss_warm_kernel", "PSS per pooled sandbox (warm kernel)",
            Stat((190.0, 200.0)), unit="MiB"),
        Row("restore_first_command", "runsc restore → first command", Stat((0.4, 0.5)),
            "runsc run python3 → pandas imported", Stat((1.5, 1.6))),
    ]
    return RuntimeResult(runtime, "test", rows)


def _report() -> BenchReport:
    now = datetime.now(UTC)
    return BenchReport(machine={}, config={}, started=now, finished=now,
                       results=[_result("gvisor")])


def test_rates_memory_rows_and_goals() -> None:
    report = _report()
    text = markdown(report)
    assert "| creation throughput, 8 clients |" in text
    assert "6.0/s vs 6.7/s (1.11×)" in text  # 24 creates in 4.0 s vs 3.6 s
    assert "| PSS per idle sandbox, 500 live | 18.0 | 19.0 | 18.0 | runsc run sleep (idle) |" \
        in text
    assert "| memory | p50 MiB |" in text
    assert "| warm kernel in a pooled sandbox | warm pool create → import pandas result | 25.0 |" \
        in text
    found = dict(verdicts(report.results[0]))
    assert [met for goal, met in found.items() if goal.startswith("creation throughput, 8")] \
        == [True]  # within 1.2× of the bare rate
    assert not any(goal.startswith("creation throughput, 1 ") for goal in found)  # serial
    assert [met for goal, met in found.items() if goal.startswith("warm pool acquire")] \
        == [False]  # 13 ms, goal < 10 ms
    assert [met for goal, met in found.items() if goal.startswith("burst")] == [True]
    assert [met for goal, met in found.items() if goal.startswith("PSS per idle")] == [True]
    doc = report.to_json()["runtimes"][0]["rows"]
    throughput = next(row for row in doc if row["key"] == "create_throughput_8")
    assert throughput["rate"]["ratio"] == pytest.approx(4.0 / 3.6)
    assert throughput["extra"]["clients"] == 8
    idle = next(row for row in doc if row["key"] == "idle_pss")
    assert idle["corral"]["unit"] == "MiB" and idle["bare"]["unit"] == "MiB"
    assert rich_table(report.results[0]).row_count == len(report.results[0].rows) + 1


def test_plots_are_rendered_from_the_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from corral.bench.plots import render_plots

    doc = json.loads(json.dumps(_report().to_json()))  # as read back from --json
    written = render_plots(doc, tmp_path / "img")
    assert sorted(p.name for p in written) == ["bench-create.png", "bench-pss.png",
                                               "bench-throughput.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reports_are_compared_row_by_row(tmp_path: Path) -> None:
    """Two configurations side by side: every timed row of the runtime, each report's p50
    (None where a report lacks the row); memory rows are not times."""
    from corral.bench.plots import comparison

    old = json.loads(json.dumps(_report().to_json()))
    new_result = _result("gvisor")
    new_result.rows[0] = Row("create_to_first_command", "create → first command",
                             Stat((0.12, 0.13)), "runsc run /bin/true", Stat((0.10, 0.11)))
    del new_result.rows[-1]
    now = datetime.now(UTC)
    new = json.loads(json.dumps(BenchReport({}, {}, now, now, [new_result]).to_json()))
    rows = dict(comparison([("old", old), ("new", new)], "gvisor"))
    assert rows["create → first command"] == [pytest.approx(265.0), pytest.approx(125.0)]
    assert rows["runsc restore → first command"] == [pytest.approx(450.0), None]
    assert "PSS per idle sandbox, 500 live" not in rows
    assert comparison([("old", old)], "namespaces") == []
    pytest.importorskip("matplotlib")
    from corral.bench.plots import render_comparison

    path = render_comparison([("old", old), ("new", new)], "gvisor", tmp_path / "cmp.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_built_image_goal_is_judged_on_the_ratio_to_the_base_image() -> None:
    """Within 10% of the base image's create → first command; the many-layer variant and
    the build rows carry no goal."""
    def custom(key: str, built: float, base: float) -> Row:
        return Row(key, "create → first command, built image (3 layers)", Stat((built,)),
                   "create → first command, python image", Stat((base,)))

    result = RuntimeResult("namespaces", "test", [
        custom("image_create_custom", 0.0260, 0.0250),
        custom("image_create_custom_24_layers", 0.0400, 0.0250),
        Row("image_rebuild_last_step", "rebuild, last step changed (2/3 steps cached)",
            Stat((0.2,)), "bwrap sh writing a file + sync", Stat((0.01,)))])
    assert [(goal.split(":")[0], met) for goal, met in verdicts(result)] == [
        ("create → first command, built image (3 layers)", True)]
    result.rows[0] = custom("image_create_custom", 0.0280, 0.0250)  # 1.12×
    assert [met for _, met in verdicts(result)] == [False]


def test_the_state_goals() -> None:
    """resume → first command < 300 ms on both runtimes; a fork of 10 < 2 s (other counts
    carry no goal); a paused gVisor sandbox holds no process and no memory."""
    def fork(copies: int, seconds: float) -> Row:
        return Row(f"fork_{copies}", f"fork of {copies} → every copy answered (idle)",
                   Stat((seconds,)), "checkpoint --leave-running + restores", Stat((1.0,)),
                   extra={"copies": copies})

    def paused(mib: float, processes: int) -> Row:
        return Row("paused_memory_kernel", "cgroup memory while paused (kernel)",
                   Stat((mib,)), "the same sandbox, running", Stat((140.0,)), unit="MiB",
                   extra={"processes_running": 14, "processes_paused": processes})

    gvisor = RuntimeResult("gvisor", "test", [
        Row("resume_first_command", "resume → first command (idle)", Stat((0.25, 0.29)),
            "runsc restore → exec true (bare idle python)", Stat((0.2, 0.2))),
        Row("resume_first_command_kernel", "resume → first command (kernel)",
            Stat((0.5,)), "runsc restore → exec true", Stat((0.3,))),
        fork(10, 1.5), fork(3, 9.0), Row("forked_10", "↳ Node.fork returned", Stat((1.0,)),
                                         extra={"copies": 10}),
        paused(0.0, 0)])
    assert [(goal.split(":")[0], met) for goal, met in verdicts(gvisor)] == [
        ("resume → first command (idle)", True), ("resume → first command (kernel)", False),
        ("fork of 10 → every copy answered (idle)", True),
        ("cgroup memory while paused (kernel)", True)]
    gvisor.rows[-1] = paused(0.0, 1)
    assert verdicts(gvisor)[-1][1] is False
    namespaces = RuntimeResult("namespaces", "test", [paused(106.0, 4)])
    assert verdicts(namespaces) == []  # frozen: its memory stays, by design
