"""Semantic Kernel's own ``SessionsPythonTool`` (the published package, unmodified) against
Corral's dynamic-sessions façade over HTTPS: code with state, uploads, listings, downloads,
and the client's quirks (a JSON Content-Type left on uploads, unescaped identifiers)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from semantic_kernel.core_plugins.sessions_python_tool.sessions_python_plugin import (
    SessionsPythonTool,
)
from semantic_kernel.core_plugins.sessions_python_tool.sessions_python_settings import (
    SessionsPythonSettings,
)

from .conftest import Corral

pytestmark = pytest.mark.anyio


def tool(corral: Corral, identifier: str | None = None, key: str | None = None,
         **kwargs: object) -> SessionsPythonTool:
    """The tool as a user would set it up: Corral's URL, the API key as the token, and an
    httpx client trusting Corral's CA (with a timeout above the tool's 5 s default)."""
    settings = SessionsPythonSettings()
    if identifier is not None:
        settings.session_id = identifier
    return SessionsPythonTool(
        pool_management_endpoint=corral.pool(), auth_callback=lambda: key or corral.key,
        settings=settings, http_client=httpx.AsyncClient(verify=corral.ssl(), timeout=120),
        **kwargs)


@pytest.fixture
def session_tool(corral: Corral) -> Iterator[SessionsPythonTool]:
    yield tool(corral, f"test-{uuid.uuid4()}")


async def test_code_keeps_state_and_runs_in_mnt_data(session_tool: SessionsPythonTool
                                                      ) -> None:
    first = await session_tool.execute_code("```python\nx = 21\nprint('set', x)\n```")
    assert "Status:\nSuccess" in first and "Stdout:\nset 21\n" in first
    second = await session_tool.execute_code("import os\nprint(os.getcwd())\nx * 2")
    assert "Result:\n42\n" in second and "Stdout:\n/mnt/data\n" in second


async def test_an_exception_is_a_failure_with_its_traceback(session_tool: SessionsPythonTool
                                                           ) -> None:
    out = await session_tool.execute_code("1 / 0")
    assert "Status:\nFailure" in out
    assert "Result:\nZeroDivisionError: division by zero" in out
    assert "Traceback" in out.split("Stderr:")[1] or "ZeroDivisionError" in out.split(
        "Stderr:")[1]


async def test_upload_list_read_and_download(session_tool: SessionsPythonTool,
                                             tmp_path: Path) -> None:
    local = tmp_path / "sales.csv"
    local.write_bytes(b"region,amount\nnorth,3\nsouth,4\n")
    # Code first: the tool's JSON Content-Type then sticks to the upload that follows.
    await session_tool.execute_code("print('warm')")
    t = session_tool
    t.enable_dangerous_file_uploads = True
    t.allowed_upload_directories = {str(tmp_path)}
    uploaded = await t.upload_file(local_file_path=str(local))
    assert uploaded.full_path == "/mnt/data/sales.csv"
    assert uploaded.size_in_bytes == local.stat().st_size
    out = await t.execute_code("import pandas as pd\npd.read_csv('sales.csv').amount.sum()")
    assert "Result:\n7\n" in out
    await t.execute_code("import os\nos.makedirs('out/deeper', exist_ok=True)\n"
                         "open('out/deeper/résumé v2.txt', 'w').write('é' * 3)")
    listed = {f.filename: f.size_in_bytes for f in await t.list_files()}
    assert listed == {"sales.csv": 30, "out/deeper/résumé v2.txt": 6}
    data = await t.download_file(remote_file_name="out/deeper/résumé v2.txt")
    assert data is not None and data.read() == "ééé".encode()
