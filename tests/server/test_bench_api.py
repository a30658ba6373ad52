"""The benchmark's rows that need a server: it starts a real ``corral serve``, measures an
exec through it beside the same exec in-process, and HTTP to an app in a sandbox through
the port proxy beside the same app on the host, and leaves no server, sandbox, app process
or data dir behind. No timing is judged here: that is the benchmark's report's job."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

import httpx
import pytest

from corral.bench.api import api_server, measure_api_exec
from corral.bench.ports import DOWNLOAD_BYTES, MARKER, measure_ports
from corral.bench.stats import RuntimeResult
from corral.bench.suite import BenchConfig
from corral.node import Node, NodeSettings, SandboxState
from corral.sdk import AsyncSandbox
from tests.conftest import IMAGE_DIR, sandbox_data_dir


def _leftover_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("corral-bench-api-*"))


def test_measures_exec_over_http_beside_in_process(runtime: str, python_image: str) -> None:
    before = _leftover_dirs()
    config = BenchConfig(exec_iterations=3, warmup=1, image=python_image)
    result = RuntimeResult(runtime=runtime, detail="test")
    steps: list[str] = []

    async def measure() -> None:
        with sandbox_data_dir("corral-bench-test-") as data_dir:
            async with Node(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as node, \
                    api_server(IMAGE_DIR) as server:
                await measure_api_exec(node, server, config, result, steps.append)
                assert node.list(state=SandboxState.RUNNING) == []  # its sandbox was killed
                assert await AsyncSandbox.list(state="running", url=server.url,
                                               api_key=server.key) == []

    asyncio.run(measure())
    (row,) = result.rows
    assert (row.key, row.bare_label) == ("api_exec", "in-process node exec")
    assert row.corral.n == 3 and row.bare is not None and row.bare.n == 3
    assert min(row.corral.samples) > 0 and min(row.bare.samples) > 0
    assert any("HTTP API" in step for step in steps)
    assert _leftover_dirs() <= before


def _apps_running() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and MARKER.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
    return found


def test_measures_port_traffic_beside_the_same_app_on_the_host(runtime: str,
                                                               python_image: str) -> None:
    before = _leftover_dirs()
    config = BenchConfig(iterations=1, exec_iterations=2, warmup=0, image=python_image)
    result = RuntimeResult(runtime=runtime, detail="test")
    steps: list[str] = []

    async def measure() -> None:
        async with api_server(IMAGE_DIR) as server:
            await measure_ports(server, config, result, steps.append)
            assert await AsyncSandbox.list(state="running", url=server.url,
                                           api_key=server.key) == []

    asyncio.run(measure())
    rows = {row.key: row for row in result.rows}
    assert list(rows) == ["port_request", "port_connect", "port_download_64mib"]
    assert [(row.corral.n, row.bare.n if row.bare else 0) for row in rows.values()] == [
        (2, 2), (5, 5), (3, 3)]
    for row in rows.values():
        assert row.bare is not None and row.bare_label, row.key
        assert min(row.corral.samples) > 0 and min(row.bare.samples) > 0, row.key
    assert rows["port_download_64mib"].size_bytes == DOWNLOAD_BYTES // 2
    assert any("port proxy" in step for step in steps)
    assert _apps_running() == []  # neither the host's app nor the sandbox's
    assert _leftover_dirs() <= before


def test_the_server_serves_its_key_and_is_gone_after(python_image: str) -> None:
    before = _leftover_dirs()

    async def use() -> str:
        async with api_server(IMAGE_DIR) as server:
            assert server.url.startswith("http://127.0.0.1:")
            found = await AsyncSandbox.list(url=server.url, api_key=server.key)
            assert found == []
            with pytest.raises(httpx.HTTPStatusError):
                async with httpx.AsyncClient() as client:
                    (await client.get(f"{server.url}/v1/sandboxes")).raise_for_status()
            return server.url

    url = asyncio.run(use())
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/openapi.json", timeout=5)
    assert _leftover_dirs() <= before


def test_measures_the_e2b_sdk_beside_corrals(runtime: str, python_image: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.bench.api import default_runtime
    from corral.bench.e2b import E2B_VERSION, PYTHON_ENV, measure_e2b

    from .test_e2b_sdk import sdk_python

    if runtime != default_runtime():
        pytest.skip("an E2B create gets the default runtime; the rows compare on it alone")
    monkeypatch.setenv(PYTHON_ENV, str(sdk_python(E2B_VERSION)))
    result = RuntimeResult(runtime=runtime, detail="test")
    steps: list[str] = []

    async def measure() -> None:
        async with api_server(IMAGE_DIR) as server:
            await measure_e2b(server.url, server.key, python_image, runtime, 2, 3, 1, result,
                              steps.append)
            # Both SDKs' sandboxes were killed (E2B's list shows running and paused ones).
            assert await AsyncSandbox.list(url=server.url, api_key=server.key,
                                           state="running") == []

    asyncio.run(measure())
    assert result.notes == []
    rows = {row.key: row for row in result.rows}
    assert list(rows) == ["e2b_create_first", "e2b_exec"]
    assert [(row.corral.n, row.bare.n if row.bare else 0) for row in rows.values()] == [
        (2, 2), (3, 3)]
    assert all(min(row.corral.samples) > 0 and row.bare and min(row.bare.samples) > 0
               for row in rows.values())
    assert any("E2B SDK" in step for step in steps)


def test_the_e2b_rows_say_why_they_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.bench.e2b import PYTHON_ENV, measure_e2b

    monkeypatch.setenv(PYTHON_ENV, "/nonexistent/python")
    result = RuntimeResult(runtime="gvisor", detail="test")
    asyncio.run(measure_e2b("http://127.0.0.1:9", "k", "python", "gvisor", 1, 1, 0, result,
                            lambda _: None))
    assert result.rows == []
    assert result.notes == [f"E2B rows skipped: {PYTHON_ENV}=/nonexistent/python is not an "
                            "executable Python"]
