"""``corral bench --console`` on a few sandboxes: a real ``corral serve`` of its own, real
namespaces sandboxes, Debian's chromium; every row is there with its samples and its bare
call, and no server data dir is left behind. No timing is judged here."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from corral.bench import console
from corral.bench.stats import RuntimeResult
from tests.conftest import IMAGE_DIR, WORKING


def test_console_rows_on_three_sandboxes(python_image: str) -> None:
    problem = console.browser_problem()
    if problem is not None:
        pytest.skip(problem)
    if "namespaces" not in WORKING:
        pytest.skip("the namespaces runtime does not work here")
    before = set(Path(tempfile.gettempdir()).glob("corral-bench-api-*"))
    config = console.ConsoleBench(sandboxes=3, iterations=2, warmup=0, image=python_image,
                                  arrows=2)
    result = RuntimeResult(runtime="console", detail="test")
    steps: list[str] = []
    asyncio.run(console.measure_console(IMAGE_DIR, config, result, steps.append))

    rows = {row.key: row for row in result.rows}
    with_bare = {"console_list_shown", "console_list_fetch", "console_list_sparklines",
                 "console_page_load", "console_enter", "console_js_heap",
                 "console_dom_nodes"}
    alone = {"console_list_sent", "console_filter", "console_arrow"}
    assert set(rows) == with_bare | alone  # 3 sandboxes fill one page: no page turn
    assert any("page turn rows: skipped" in note for note in result.notes)
    for key, row in rows.items():
        assert row.corral.n == (4 if key == "console_arrow" else 2), key  # 2 arrows a round
        assert (row.bare is not None) == (key in with_bare), key
    assert min(rows["console_list_shown"].corral.samples) > 0
    assert rows["console_dom_nodes"].bare is not None
    assert min(rows["console_dom_nodes"].corral.samples) > max(rows["console_dom_nodes"]
                                                              .bare.samples)  # 3 rows more
    assert "3/3 namespaces sandboxes live" in " ".join(steps)
    assert any("killing sandboxes" in step for step in steps)
    assert set(Path(tempfile.gettempdir()).glob("corral-bench-api-*")) <= before
