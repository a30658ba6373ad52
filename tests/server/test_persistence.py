"""A server's records outlive it, on each store backend: create, list and kill over HTTP,
restart the server on the same database, and find every record stopped, with why."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral import Sandbox, SandboxNotRunningError
from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.services.sandboxes import RESTART_REASON
from corral.server.store import KeyStore, SandboxRecord, SandboxStore, open_engine
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._serving import serving


@pytest.fixture
def own_data_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-restart-test-") as path:
        yield path


def test_records_survive_a_restart(store_url: str, own_data_dir: Path,
                                   python_image: str) -> None:
    settings = ServerSettings(node=NodeSettings(data_dir=own_data_dir, image_dir=IMAGE_DIR),
                              port=0, database_url=store_url)
    engine = open_engine(store_url)
    key = KeyStore(engine).create("alpha").key
    label = {"run": f"restart-{time.monotonic_ns()}"}

    with serving(create_app(settings)) as url:
        sdk = {"url": url, "api_key": key}
        killed = Sandbox.create("python", timeout=120, metadata=label, **sdk)
        kept = Sandbox.create("python", timeout=120, idle_timeout=60, metadata=label, **sdk)
        assert kept.commands.run("echo up").stdout == "up\n"
        assert {s.id: s.state for s in Sandbox.list(metadata=label, **sdk)} == {
            killed.id: "running", kept.id: "running"}
        killed.kill()
        assert killed.refresh().stop_reason == "killed by request"
        killed.close()
        kept.close()
    # As if a server had crashed: a record it never closed.
    now = datetime.now(UTC)
    SandboxStore(engine).add(SandboxRecord(
        id="sbx-00000000000000c1", tenant="alpha", image="python", runtime="gvisor",
        state="running", resources={}, metadata=label, created_at=now, expires_at=now))
    engine.dispose()

    with serving(create_app(settings)) as url:
        sdk = {"url": url, "api_key": key}
        after = {s.id: s for s in Sandbox.list(metadata=label, **sdk)}
        assert {i: s.state for i, s in after.items()} == {
            killed.id: "stopped", kept.id: "stopped", "sbx-00000000000000c1": "stopped"}
        assert after[killed.id].stop_reason == "killed by request"
        assert after[kept.id].stop_reason is not None  # the node stopped it at shutdown
        assert after[kept.id].idle_timeout == 60 and after[killed.id].idle_timeout is None
        assert after["sbx-00000000000000c1"].stop_reason == RESTART_REASON
        again = Sandbox.connect(kept.id, **sdk)
        with pytest.raises(SandboxNotRunningError):
            again.commands.run("true")
        again.close()
