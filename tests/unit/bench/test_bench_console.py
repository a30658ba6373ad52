"""The console rows' logic outside the browser: batches, pages, the filter rounds, the
figures read from chromium, the report's count table, what is missing, and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.api.errors import InternalError, InvalidArgumentError
from corral.bench import BenchReport, Row, RuntimeResult, Stat, markdown
from corral.bench import console
from corral.cli import app


def test_batches_cover_every_index_once_in_bounded_parts() -> None:
    parts = console.batches(500, 16)
    assert [i for part in parts for i in part] == list(range(500))
    assert max(len(p) for p in parts) == 16 and len(parts[-1]) == 500 % 16
    assert console.batches(0, 16) == []
    with pytest.raises(InvalidArgumentError):
        console.batches(3, 0)


@pytest.mark.parametrize(("count", "pages"), [(0, 1), (1, 1), (50, 1), (51, 2), (500, 10),
                                             (501, 11)])
def test_pages_as_the_console_counts_them(count: int, pages: int) -> None:
    assert console.pages(count) == pages


@pytest.mark.parametrize("count", [1, 9, 10, 20, 95, 500])
def test_each_filter_leaves_the_group_its_text_names(count: int) -> None:
    names = [f"console-{i:04d}" for i in range(count)]
    seen = set()
    for round_ in range(12):
        text, kept = console.filter_text(round_, count)
        assert [i for i, name in enumerate(names) if text in name] == list(kept)
        assert 1 <= len(kept) <= 10
        seen.add(text)
    assert len(seen) == min(12, -(-count // 10))  # another group each round, while any left


def test_heap_figures_from_performance_metrics() -> None:
    metrics = [{"name": "Nodes", "value": 3210}, {"name": "JSHeapUsedSize", "value": 5 * 2**20},
               {"name": "Documents", "value": 2}]
    assert console.heap_figures(metrics) == (5.0, 3210)
    with pytest.raises(InternalError, match="Nodes"):
        console.heap_figures([{"name": "JSHeapUsedSize", "value": 1}])


def test_browser_problem_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv(console.CHROMIUM_ENV, str(tmp_path / "no-chromium"))
    problem = console.browser_problem()
    assert problem is not None
    assert "apt-get install chromium" in problem and "scripts/install --test" in problem


def test_count_rows_get_a_table_in_their_own_unit() -> None:
    result = RuntimeResult("console", "3 live namespaces sandboxes", rows=[
        Row("console_list_shown", "list page shown, 3 listed", Stat((0.04, 0.05)),
            "GET /v1/sandboxes (3) via httpx", Stat((0.005, 0.006))),
        Row("console_js_heap", "JS heap, list page, 3 listed", Stat((4.0, 4.2)),
            "the same, none listed", Stat((2.0, 2.1)), unit="MiB"),
        Row("console_dom_nodes", "DOM nodes, list page, 3 listed", Stat((600.0, 600.0)),
            "the same, none listed", Stat((300.0, 300.0)), unit="nodes"),
    ])
    now = datetime.now(UTC)
    text = markdown(BenchReport(machine={}, config={}, started=now, finished=now,
                                results=[result]))
    assert "| memory | p50 MiB |" in text and "| nodes | p50 nodes |" in text
    assert "| DOM nodes, list page, 3 listed | 600.0 |" in text
    assert "| list page shown, 3 listed | 45.0 |" in text


def test_cli_help_names_the_console_rows() -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "--console " in result.output and "--console-sandboxes" in result.output


def test_cli_console_takes_one_runtime(tmp_path: Path) -> None:
    result = CliRunner(env={"COLUMNS": "200", "CORRAL_IMAGE_DIR": None}).invoke(
        app, ["bench", "--console", "-r", "gvisor", "-r", "namespaces", "--data-dir",
              str(tmp_path)])
    assert result.exit_code == 2
    assert "one runtime" in result.stderr
    assert list(tmp_path.iterdir()) == []
