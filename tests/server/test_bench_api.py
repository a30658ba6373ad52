"""The benchmark's HTTP API round trip: it starts a real ``corral serve``, measures an exec
through it beside the same exec in-process, and leaves no server, sandbox or data dir behind.
No timing is judged here: that is the benchmark's report's job."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx
import pytest

from corral.bench.api import api_server, measure_api_exec
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
            async with Node(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as node:
                await measure_api_exec(node, config, result, steps.append)
                assert node.list(state=SandboxState.RUNNING) == []  # its sandbox was killed

    asyncio.run(measure())
    (row,) = result.rows
    assert (row.key, row.bare_label) == ("api_exec", "in-process node exec")
    assert row.corral.n == 3 and row.bare is not None and row.bare.n == 3
    assert min(row.corral.samples) > 0 and min(row.bare.samples) > 0
    assert any("HTTP API" in step for step in steps)
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
