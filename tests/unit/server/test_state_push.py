"""The node tells the server when a sandbox's state changes: the store follows with no
request touching the sandbox, and nothing polls."""

from __future__ import annotations

import time

import anyio
import pytest

from corral import AsyncSandbox
from corral.node import NodeSettings
from corral.server.store import SandboxStore, open_engine
from corral.server.store.schema import database_url

from .conftest import Server

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]


async def test_a_stop_the_node_decides_reaches_the_store_unasked(
        server: Server, node_settings: NodeSettings) -> None:
    sb = await AsyncSandbox.create(timeout=1, **server.sdk())
    await sb.close()  # no further request touches it
    engine = open_engine(database_url(node_settings.data_dir, None))
    store = SandboxStore(engine)
    try:
        deadline = time.monotonic() + 30
        record = store.get(sb.id)
        while record is not None and record.state != "stopped" and time.monotonic() < deadline:
            await anyio.sleep(0.05)
            record = store.get(sb.id)
        assert record is not None and record.state == "stopped", record
        assert record.stop_reason == "timeout: sandbox lifetime of 1 s reached"
    finally:
        engine.dispose()
