"""A server's sandboxes and records outlive it, on each store backend: stop a server, start
another on the same data dir and database, and find each running sandbox re-attached (its
files, processes and settings intact) and every other record closed, with why."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral import Sandbox, SandboxNotRunningError
from corral.node import NodeSettings
from corral.runtime import _cgroups_unsafe as cgroups
from corral.server import ServerSettings, create_app
from corral.server.services.sandboxes import RESTART_REASON
from corral.server.store import KeyStore, SandboxRecord, SandboxStore, open_engine
from tests.conftest import IMAGE_DIR, sandbox_data_dir
from tests.integration.test_restart import crashed_node, wait_for

from ._serving import serving


@pytest.fixture
def own_data_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-restart-test-") as path:
        yield path


def settings_for(data_dir: Path, store_url: str) -> ServerSettings:
    return ServerSettings(node=NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR), port=0,
                          database_url=store_url)


def test_a_restarted_server_reattaches_its_sandboxes(store_url: str, own_data_dir: Path,
                                                      python_image: str) -> None:
    settings = settings_for(own_data_dir, store_url)
    engine = open_engine(store_url)
    key = KeyStore(engine).create("alpha").key
    label = {"run": f"restart-{time.monotonic_ns()}"}

    with serving(create_app(settings)) as url:
        sdk = {"url": url, "api_key": key}
        killed = Sandbox.create("python", timeout=120, metadata=label, **sdk)
        kept = Sandbox.create("python", timeout=120, idle_timeout=60, metadata=label, **sdk)
        kept.files.write("/work/state.txt", b"before the restart")
        sleeper = kept.commands.run_background("sleep 1000")
        killed.kill()
        expires = kept.refresh().expires_at
        killed.close()
        kept.close()
    # As if a server had crashed: a record it never closed, of a sandbox that is gone.
    now = datetime.now(UTC)
    SandboxStore(engine).add(SandboxRecord(
        id="sbx-00000000000000c1", tenant="alpha", image="python", runtime="gvisor",
        state="running", resources={}, metadata=label, created_at=now, expires_at=now))
    engine.dispose()

    with serving(create_app(settings)) as url:
        sdk = {"url": url, "api_key": key}
        after = {s.id: s for s in Sandbox.list(metadata=label, **sdk)}
        assert {i: s.state for i, s in after.items()} == {
            killed.id: "stopped", kept.id: "running", "sbx-00000000000000c1": "stopped"}
        assert after[killed.id].stop_reason == "killed by request"
        assert after["sbx-00000000000000c1"].stop_reason == RESTART_REASON
        assert after[kept.id].idle_timeout == 60 and after[kept.id].expires_at == expires
        with Sandbox.connect(kept.id, **sdk) as again:
            assert again.files.read("/work/state.txt") == b"before the restart"
            assert [p.id for p in again.commands.list()] == [sleeper.id]
            assert again.commands.run("echo back").stdout == "back\n"
            again.commands.kill(sleeper.id)
            wait_for(lambda: again.commands.list() == [], 10)
            again.kill()


def test_what_died_while_the_server_was_down_is_closed_with_why(
        store_url: str, own_data_dir: Path, python_image: str) -> None:
    settings = settings_for(own_data_dir, store_url)
    key = KeyStore(open_engine(store_url)).create("alpha").key
    # A sandbox the node made but no server recorded (it died in between): nobody owns it.
    (unrecorded,) = crashed_node(own_data_dir, "namespaces")
    with serving(create_app(settings)) as url:
        assert not (own_data_dir / "sandboxes" / unrecorded).exists()
        doomed = Sandbox.create("python", timeout=120, url=url, api_key=key)
        doomed.close()
    assert cgroups.SandboxCgroups(f"{settings.node.node_key}/{doomed.id}").kill()
    with serving(create_app(settings)) as url:
        with Sandbox.connect(doomed.id, url=url, api_key=key) as gone:
            info = gone.refresh()
            assert info.state == "stopped"
            assert info.stop_reason is not None and "no process is left" in info.stop_reason
            with pytest.raises(SandboxNotRunningError, match="no process is left"):
                gone.commands.run("true")
        assert not (own_data_dir / "sandboxes" / doomed.id).exists()


def test_keep_sandboxes_off_stops_them_with_the_server(store_url: str, own_data_dir: Path,
                                                        python_image: str) -> None:
    settings = replace(settings_for(own_data_dir, store_url), keep_sandboxes=False)
    key = KeyStore(open_engine(store_url)).create("alpha").key
    with serving(create_app(settings)) as url:
        sb = Sandbox.create("python", timeout=120, url=url, api_key=key)
        sb.close()
    with serving(create_app(settings)) as url:
        with Sandbox.connect(sb.id, url=url, api_key=key) as again:
            info = again.refresh()
            assert info.state == "stopped" and info.stop_reason == "node shutting down"


def test_a_paused_sandbox_keeps_when_why_and_its_ttl_across_a_restart(
        store_url: str, own_data_dir: Path, python_image: str) -> None:
    settings = settings_for(own_data_dir, store_url)
    key = KeyStore(open_engine(store_url)).create("alpha").key
    label = {"run": f"paused-restart-{time.monotonic_ns()}"}
    with serving(create_app(settings)) as url:
        sdk = {"url": url, "api_key": key}
        short = Sandbox.create("python", timeout=600, paused_ttl=5, metadata=label, **sdk)
        kept = Sandbox.create("python", timeout=600, idle_timeout=60, on_idle="pause",
                              on_timeout="pause", metadata=label, **sdk)
        kept.files.write("/work/state.txt", b"before the restart")
        short.pause()
        paused = kept.pause()
        short.close()
        kept.close()

    with serving(create_app(settings)) as url:
        sdk = {"url": url, "api_key": key}
        after = {s.id: s for s in Sandbox.list(metadata=label, **sdk)}
        again = after[kept.id]
        assert (again.state, again.paused_at, again.state_reason) == (
            "paused", paused.paused_at, "paused: by the API")
        assert (again.idle_timeout, again.on_idle, again.on_timeout, again.paused_ttl) == (
            60, "pause", "pause", settings.paused_ttl)
        # Its pause time came back unchanged (above), and its paused TTL still ends it.
        wait_for(lambda: {s.id: s.state for s in Sandbox.list(metadata=label, **sdk)}
                 [short.id] == "stopped", 60)
        gone = [s for s in Sandbox.list(metadata=label, **sdk) if s.id == short.id]
        assert gone[0].stop_reason == "paused for more than 5 s (paused_ttl)"
        with Sandbox.connect(kept.id, **sdk) as resumed:
            assert resumed.info.state_reason == "resumed: by the API"
            assert resumed.files.read("/work/state.txt") == b"before the restart"
            resumed.kill()
