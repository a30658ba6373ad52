"""Auto-pause on the fake runtime, in process: what ``on_idle``, ``on_timeout`` and
``paused_ttl`` do and say, their bounds, and what happens where a pause cannot be done.

The tests watch states by listing (listing is not activity), with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from corral import AsyncSandbox, InvalidArgumentError
from corral.api.errors import InternalError
from corral.api.limits import PAUSED_TTL_RANGE
from corral.api.models import SandboxInfo
from corral.node import NodeSettings
from corral.runtime import Runtime, RuntimeSandbox
from corral.sdk.testing import in_process
from corral.server import ServerSettings, create_app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from tests.fakes.runtime import FakeRuntime
from tests.server._spec import SpecCheck

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]
DEADLINE = 30.0
#: The tests' server: its own paused TTL (the most a create may ask for), a fast reaper.
SERVER_PAUSED_TTL = 100.0


class _Unpausable(FakeRuntime):
    def check_pause(self, sandbox: RuntimeSandbox) -> None:
        Runtime.check_pause(self, sandbox)


class _FailingPause(FakeRuntime):
    """A pause that fails with the sandbox left running (as a failed checkpoint may)."""

    async def pause(self, sandbox: RuntimeSandbox) -> None:
        raise InternalError("checkpointing failed: the test said so")


@asynccontextmanager
async def serving(settings: NodeSettings, runtime: FakeRuntime,
                  app: list[FastAPI] | None = None) -> AsyncIterator[dict[str, Any]]:
    """A server on ``runtime`` whose reaper looks every 0.1 s; yields the SDK's arguments
    (and puts the app in ``app``, if given)."""
    server = ServerSettings(node=settings, port=0, idle_check_interval=0.1,
                            paused_ttl=SERVER_PAUSED_TTL)
    engine = open_engine(database_url(settings.data_dir, None))
    key = KeyStore(engine).create("alpha").key
    made = create_app(server, runtimes={"fake": runtime})
    if app is not None:
        app.append(made)
    check = SpecCheck(made)
    try:
        async with in_process(check) as url:
            yield {"url": url, "api_key": key}
    finally:
        engine.dispose()
    check.fail_if_off_spec()


async def _listed(sdk: dict[str, Any], sandbox_id: str) -> SandboxInfo:
    found = [s for s in await AsyncSandbox.list(**sdk) if s.id == sandbox_id]
    assert len(found) == 1
    return found[0]


async def _until(sdk: dict[str, Any], sandbox_id: str, state: str) -> SandboxInfo:
    end = time.monotonic() + DEADLINE
    while (info := await _listed(sdk, sandbox_id)).state != state:
        assert time.monotonic() < end, f"{sandbox_id} is still {info.state}, not {state}"
        await asyncio.sleep(0.05)
    return info


async def test_idle_pauses_and_a_call_resumes_saying_why(node_settings: NodeSettings,
                                                         fake_runtime: FakeRuntime) -> None:
    async with serving(node_settings, fake_runtime) as sdk:
        async with await AsyncSandbox.create(idle_timeout=1, on_idle="pause", **sdk) as sb:
            assert (sb.info.on_idle, sb.info.on_timeout) == ("pause", "kill")
            assert sb.info.paused_ttl == SERVER_PAUSED_TTL and sb.info.state_reason is None
            await sb.files.write("/work/kept", "kept")
            paused = await _until(sdk, sb.id, "paused")
            assert paused.state_reason == "paused: idle for 1 s"
            assert paused.paused_at is not None
            assert (await sb.refresh()).state == "paused"  # a get does not resume it
            assert await sb.files.read_text("/work/kept") == "kept"  # this does
            resumed = await sb.refresh()
            assert (resumed.state, resumed.paused_at) == ("running", None)
            assert resumed.state_reason == "resumed: by a file call"
            await _until(sdk, sb.id, "paused")  # idle again
            assert (await sb.commands.run("echo hi")).stdout == "hi\n"
            assert (await sb.refresh()).state_reason == "resumed: by a command"


async def test_the_api_says_who_paused_and_resumed(node_settings: NodeSettings,
                                                   fake_runtime: FakeRuntime) -> None:
    async with serving(node_settings, fake_runtime) as sdk:
        async with await AsyncSandbox.create(**sdk) as sb:
            assert (await sb.pause()).state_reason == "paused: by the API"
            assert (await _listed(sdk, sb.id)).state_reason == "paused: by the API"
            assert (await sb.resume()).state_reason == "resumed: by the API"
            await sb.pause()
            again = await AsyncSandbox.connect(sb.id, **sdk)  # connect resumes through the API
            assert again.info.state_reason == "resumed: by the API"
            await again.close()
        stopped = await _listed(sdk, sb.id)
        assert stopped.state_reason == stopped.stop_reason == "killed by request"


async def test_on_timeout_pause_keeps_it_and_a_resume_gives_a_whole_lifetime(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    async with serving(node_settings, fake_runtime) as sdk:
        async with await AsyncSandbox.create(timeout=1, on_timeout="pause", **sdk) as sb:
            await sb.files.write("/work/kept", "kept")
            paused = await _until(sdk, sb.id, "paused")
            assert paused.state_reason == "paused: lifetime ran out (on_timeout=pause)"
            asked = time.time()
            assert await sb.files.read_text("/work/kept") == "kept"
            resumed = await sb.refresh()
            assert resumed.state == "running"
            assert resumed.expires_at.timestamp() >= asked + 1.0
            await _until(sdk, sb.id, "paused")  # its fresh lifetime ran out too


async def test_a_sandbox_paused_past_its_ttl_is_killed_with_why(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    async with serving(node_settings, fake_runtime) as sdk:
        async with await AsyncSandbox.create(paused_ttl=1, **sdk) as sb, \
                await AsyncSandbox.create(**sdk) as kept:
            assert sb.info.paused_ttl == 1
            await sb.pause()
            await kept.pause()
            stopped = await _until(sdk, sb.id, "stopped")
            assert stopped.stop_reason == "paused for more than 1 s (paused_ttl)"
            assert stopped.state_reason == stopped.stop_reason and stopped.paused_at is None
            assert (await _listed(sdk, kept.id)).state == "paused"  # 100 s: not yet


async def test_the_new_fields_are_checked_at_their_edges(node_settings: NodeSettings,
                                                         fake_runtime: FakeRuntime) -> None:
    async with serving(node_settings, fake_runtime) as sdk:
        low, high = PAUSED_TTL_RANGE
        for bad in (low - 0.5, 0, -1, high + 1):
            with pytest.raises(InvalidArgumentError, match="paused_ttl .* is outside"):
                await AsyncSandbox.create(paused_ttl=bad, **sdk)
        with pytest.raises(InvalidArgumentError, match="more than this server allows"):
            await AsyncSandbox.create(paused_ttl=SERVER_PAUSED_TTL + 0.5, **sdk)
        for edge in (low, SERVER_PAUSED_TTL):
            async with await AsyncSandbox.create(paused_ttl=edge, **sdk) as sb:
                assert sb.info.paused_ttl == edge
        with pytest.raises(InvalidArgumentError, match="on_idle=pause needs idle_timeout"):
            await AsyncSandbox.create(on_idle="pause", **sdk)
        for field in ("on_idle", "on_timeout"):
            unknown: dict[str, Any] = {field: "sleep"}
            with pytest.raises(InvalidArgumentError, match=field):
                await AsyncSandbox.create(idle_timeout=5, **unknown, **sdk)
        assert await AsyncSandbox.list(state="running", **sdk) == []


def test_the_servers_paused_ttl_is_bounded(node_settings: NodeSettings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    low, high = PAUSED_TTL_RANGE
    for edge in (low, high):
        assert ServerSettings(node=node_settings, paused_ttl=edge).paused_ttl == edge
    for bad in (low - 0.5, high + 1):
        with pytest.raises(InvalidArgumentError, match="CORRAL_PAUSED_TTL"):
            ServerSettings(node=node_settings, paused_ttl=bad)
    monkeypatch.setenv("CORRAL_DATA_DIR", str(node_settings.data_dir))
    monkeypatch.setenv("CORRAL_PAUSED_TTL", "3600")
    assert ServerSettings.from_env().paused_ttl == 3600
    monkeypatch.setenv("CORRAL_PAUSED_TTL", "a day")
    with pytest.raises(InvalidArgumentError, match="CORRAL_PAUSED_TTL.*number of seconds"):
        ServerSettings.from_env()


async def test_pausing_is_refused_at_create_where_the_runtime_cannot_pause(
        node_settings: NodeSettings) -> None:
    runtime = _Unpausable()
    async with serving(node_settings, runtime) as sdk:
        asks: list[tuple[str, Callable[[], Awaitable[AsyncSandbox]]]] = [
            ("on_idle=pause", lambda: AsyncSandbox.create(idle_timeout=5, on_idle="pause",
                                                          **sdk)),
            ("on_timeout=pause", lambda: AsyncSandbox.create(on_timeout="pause", **sdk))]
        for what, create in asks:
            with pytest.raises(InvalidArgumentError, match=f"{what} cannot be honoured: .*"
                                                            "cannot pause"):
                await create()
        assert await AsyncSandbox.list(**sdk) == []  # never recorded
        assert not any(Path(spec.directory).exists() for spec in runtime.created)
        async with await AsyncSandbox.create(idle_timeout=5, **sdk) as sb:  # kill: fine
            assert sb.info.state == "running"


async def test_an_idle_pause_that_fails_stops_the_sandbox_saying_so(
        node_settings: NodeSettings) -> None:
    async with serving(node_settings, _FailingPause()) as sdk:
        async with await AsyncSandbox.create(idle_timeout=1, on_idle="pause", **sdk) as sb:
            stopped = await _until(sdk, sb.id, "stopped")
            assert stopped.stop_reason == (
                "idle timeout: no activity for 1 s; pausing it instead (on_idle=pause) "
                "failed, so it was stopped: checkpointing failed: the test said so")


async def test_a_call_arriving_during_a_pause_resumes_the_sandbox_after_it(
        node_settings: NodeSettings) -> None:
    """The reaper's pause and a request can meet: the request waits for the pause to end,
    then resumes the sandbox, rather than failing on a sandbox being paused."""
    runtime = _GatedPause()
    apps: list[FastAPI] = []
    async with serving(node_settings, runtime, apps) as sdk:
        async with await AsyncSandbox.create(**sdk) as sb:
            node = apps[0].state.sandboxes._node
            asked_to_resume = asyncio.Event()
            resume = node.resume

            async def resume_noted(sandbox_id: str, *, reason: str) -> None:
                asked_to_resume.set()
                await resume(sandbox_id, reason=reason)

            node.resume = resume_noted
            pausing = asyncio.ensure_future(node.pause(sb.id, reason="paused: by the test"))
            await _soon(lambda: runtime.pausing.is_set(), "pausing")
            call = asyncio.ensure_future(sb.commands.run("echo after"))
            # Without the wait, the call fails now, on a sandbox being paused.
            await _soon(lambda: call.done() or asked_to_resume.is_set(), "answered")
            runtime.gate.set()
            assert (await call).stdout == "after\n"
            await pausing
            info = await sb.refresh()
            assert (info.state, info.state_reason) == ("running", "resumed: by a command")


class _GatedPause(FakeRuntime):
    """A pause that waits, once under way, until the test opens its gate."""

    def __init__(self) -> None:
        super().__init__()
        self.pausing = asyncio.Event()
        self.gate = asyncio.Event()

    async def pause(self, sandbox: RuntimeSandbox) -> None:
        self.pausing.set()
        await self.gate.wait()
        await super().pause(sandbox)


async def _soon(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"not {what} after {DEADLINE:g} s"
        await asyncio.sleep(0.01)
