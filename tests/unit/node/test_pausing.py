"""The node's side of pausing, on the fake runtime (its pause stops the agent's processes
with SIGSTOP): the state and its record, what a paused sandbox answers, its lifetime clock,
no-ops, kill, failures, and adoption of a paused sandbox by the next node."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from corral.api.errors import (
    InternalError,
    RuntimeUnavailableError,
    SandboxError,
    SandboxNotRunningError,
)
from corral.node import Node, NodeSettings, SandboxState, records
from corral.runtime import Runtime, RuntimeSandbox, RuntimeState
from tests.fakes.runtime import FakeRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]
S = SandboxState


async def test_a_paused_sandbox_says_so_and_a_resumed_one_carries_on(node: Node) -> None:
    seen: list[SandboxState] = []
    sandbox = await node.create("python")
    node.on_state(lambda sb, state: seen.append(state) if sb is sandbox else None)
    await sandbox.files.write("/work/note", "before")
    await node.pause(sandbox.id)
    assert sandbox.state is S.PAUSED and sandbox.is_paused
    record = records.read(sandbox.handle.spec.directory)
    assert record.state == "paused" and record.lifetime_left is not None
    for call in (sandbox.commands.run("true"), sandbox.files.read_text("/work/note"),
                 sandbox.code.run("1"), sandbox.commands.list(), sandbox.set_timeout(60)):
        with pytest.raises(SandboxNotRunningError, match="is paused; resume it"):
            await call
    await node.resume(sandbox.id)
    assert sandbox.state is S.RUNNING and not sandbox.is_paused
    assert records.read(sandbox.handle.spec.directory).lifetime_left is None
    assert await sandbox.files.read_text("/work/note") == "before"
    assert (await sandbox.commands.run("echo after")).stdout == "after\n"
    assert seen == [S.PAUSED, S.RUNNING]
    await sandbox.kill()


async def test_pausing_twice_and_resuming_twice_do_nothing(node: Node) -> None:
    sandbox = await node.create("python")
    await node.resume(sandbox.id)  # running: nothing to do
    await asyncio.gather(node.pause(sandbox.id), node.pause(sandbox.id))
    await node.pause(sandbox.id)
    assert sandbox.state is S.PAUSED
    await asyncio.gather(node.resume(sandbox.id), node.resume(sandbox.id))
    await node.resume(sandbox.id)
    assert (await sandbox.commands.run("echo once")).stdout == "once\n"
    await sandbox.kill()


async def test_the_lifetime_stands_still_while_paused(node: Node) -> None:
    sandbox = await node.create("python", timeout=1.5)
    await node.pause(sandbox.id)
    left = sandbox.lifetime_left
    assert left is not None and 1.0 < left <= 1.5
    await asyncio.sleep(2.0)  # past its lifetime, had it run
    assert sandbox.state is S.PAUSED
    await node.resume(sandbox.id)
    assert sandbox.state is S.RUNNING
    assert sandbox.expires_at == pytest.approx(time.time() + left, abs=0.5)
    while sandbox.state is not S.STOPPED:  # the rest of it still ends it
        await asyncio.sleep(0.05)
    assert sandbox.stop_reason is not None and sandbox.stop_reason.startswith("timeout")


async def test_kill_while_paused_removes_everything(node: Node, fake_runtime: FakeRuntime
                                                    ) -> None:
    sandbox = await node.create("python")
    await node.pause(sandbox.id)
    await sandbox.kill()
    assert sandbox.state is S.STOPPED and sandbox.stop_reason == "killed by request"
    assert not sandbox.handle.spec.directory.exists()
    for call in (node.pause, node.resume):
        with pytest.raises(SandboxError):  # gone from the node: not found
            await call(sandbox.id)


async def test_a_stopping_sandbox_cannot_be_paused_or_resumed(node: Node) -> None:
    sandbox = await node.create("python")
    stopping = node.lifecycle.begin_stop(sandbox, "on its way out")
    with pytest.raises(SandboxNotRunningError, match="on its way out"):
        await node.pause(sandbox.id)
    with pytest.raises(SandboxNotRunningError, match="on its way out"):
        await node.resume(sandbox.id)
    await stopping


async def test_a_command_running_across_a_pause_runs_on(node: Node) -> None:
    sandbox = await node.create("python")
    handle = await sandbox.commands.start("sleep 1; echo done > /dev/null; sleep 60")
    waiting = asyncio.ensure_future(handle.wait())
    await asyncio.sleep(0.1)
    await node.pause(sandbox.id)
    with pytest.raises(SandboxNotRunningError, match="was paused"):
        await waiting  # its output stream ends with the pause
    await node.resume(sandbox.id)
    assert [p.id for p in await sandbox.commands.list()] == [handle.id]
    await sandbox.commands.kill(handle.id)
    await sandbox.kill()


class _Unpausable(FakeRuntime):
    def check_pause(self, sandbox: RuntimeSandbox) -> None:
        Runtime.check_pause(self, sandbox)


class _FailingPause(FakeRuntime):
    """A pause that fails with the sandbox left running (as a failed checkpoint may)."""

    async def pause(self, sandbox: RuntimeSandbox) -> None:
        raise InternalError("checkpointing failed: the test said so")


class _LosingPause(FakeRuntime):
    """A pause that fails and loses the sandbox."""

    async def pause(self, sandbox: RuntimeSandbox) -> None:
        sandbox.state = RuntimeState.PAUSED
        raise InternalError("the test lost it")


async def test_a_runtime_that_cannot_pause_changes_nothing(node_settings: NodeSettings
                                                           ) -> None:
    runtime = _Unpausable()
    async with Node(node_settings, runtimes={"fake": runtime}) as node:
        sandbox = await node.create("python")
        with pytest.raises(RuntimeUnavailableError, match="cannot pause"):
            await node.pause(sandbox.id)
        assert sandbox.state is S.RUNNING and sandbox.lifetime_left is None
        assert (await sandbox.commands.run("echo fine")).stdout == "fine\n"


async def test_a_failed_pause_leaves_a_sandbox_that_still_runs_running(
        node_settings: NodeSettings) -> None:
    async with Node(node_settings, runtimes={"fake": _FailingPause()}) as node:
        sandbox = await node.create("python", timeout=600)
        with pytest.raises(InternalError, match="the test said so"):
            await node.pause(sandbox.id)
        assert sandbox.state is S.RUNNING and sandbox.lifetime_left is None
        assert (await sandbox.commands.run("echo fine")).stdout == "fine\n"
        assert sandbox.expires_at > time.time() + 500


async def test_a_pause_that_loses_the_sandbox_stops_it_with_why(
        node_settings: NodeSettings) -> None:
    async with Node(node_settings, runtimes={"fake": _LosingPause()}) as node:
        sandbox = await node.create("python")
        with pytest.raises(InternalError, match="lost it"):
            await node.pause(sandbox.id)
        assert sandbox.state is S.STOPPED
        assert sandbox.stop_reason == "pausing it failed: the test lost it"


async def test_a_paused_sandbox_is_adopted_paused_by_the_next_node(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    first = Node(node_settings, runtimes={"fake": fake_runtime})
    await first.start()
    try:
        sandbox = await first.create("python", timeout=600)
        await sandbox.files.write("/work/note", "kept")
        await first.pause(sandbox.id)
        left = sandbox.lifetime_left
    finally:
        await first.close(detach=True)
    body = json.loads((sandbox.handle.spec.directory / records.RECORD_NAME).read_text())
    assert body["state"] == "paused"
    async with Node(node_settings, runtimes={"fake": fake_runtime}) as second:
        assert second.lost == {}
        adopted = second.get(sandbox.id)
        assert adopted.state is S.PAUSED and adopted.lifetime_left == left
        with pytest.raises(SandboxNotRunningError, match="paused"):
            await adopted.files.read_text("/work/note")
        await second.resume(sandbox.id)  # its agent comes back on the socket
        assert await adopted.files.read_text("/work/note") == "kept"
        await second.pause(sandbox.id)  # a socket channel: closed by the agent, then back
        await second.resume(sandbox.id)
        assert (await adopted.commands.run("echo again")).stdout == "again\n"
    assert adopted.state is S.STOPPED


async def _until(condition: Callable[[], bool], what: str, deadline: float = 30.0) -> None:
    """Wait for ``condition``, failing after ``deadline`` seconds (a hung pause, say)."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"still not {what} after {deadline:g} s"
        await asyncio.sleep(0.05)


async def test_pauses_and_resumes_say_why(node: Node) -> None:
    sandbox = await node.create("python")
    assert sandbox.state_reason is None and sandbox.paused_at is None
    before = time.time()
    await node.pause(sandbox.id, reason="paused: by a test")
    assert sandbox.state_reason == "paused: by a test"
    assert sandbox.paused_at is not None and before <= sandbox.paused_at <= time.time()
    record = records.read(sandbox.handle.spec.directory)
    assert (record.state_reason, record.paused_at) == ("paused: by a test", sandbox.paused_at)
    assert sandbox.info.state_reason == "paused: by a test" and sandbox.info.paused_at
    await node.pause(sandbox.id, reason="paused: again")  # paused already: nothing changes
    assert sandbox.state_reason == "paused: by a test"
    await node.resume(sandbox.id)
    assert sandbox.state_reason == "resumed: by request" and sandbox.paused_at is None
    await sandbox.kill()
    assert sandbox.info.state_reason == "killed by request"  # a stopped one's: why it stopped


async def test_on_timeout_pause_pauses_and_the_resume_gives_a_whole_lifetime(
        node: Node) -> None:
    sandbox = await node.create("python", timeout=1.0)
    await sandbox.files.write("/work/note", "kept")
    await sandbox.set_on_timeout("pause")
    assert records.read(sandbox.handle.spec.directory).on_timeout == "pause"
    await _until(lambda: sandbox.state is not S.RUNNING, "paused")
    assert sandbox.state is S.PAUSED
    assert sandbox.state_reason == "paused: lifetime ran out (on_timeout=pause)"
    assert sandbox.lifetime_left == sandbox.timeout == 1.0
    record = records.read(sandbox.handle.spec.directory)
    assert (record.lifetime_left, record.timeout) == (1.0, 1.0)
    started = time.time()
    await node.resume(sandbox.id)
    assert started + 1.0 <= sandbox.expires_at <= time.time() + 1.0
    assert await sandbox.files.read_text("/work/note") == "kept"
    await _until(lambda: sandbox.state is not S.RUNNING, "paused again")  # and again
    assert sandbox.state is S.PAUSED
    await sandbox.kill()


async def test_on_timeout_is_checked(node: Node) -> None:
    sandbox = await node.create("python")
    with pytest.raises(SandboxError, match="on_timeout must be one of kill, pause"):
        await sandbox.set_on_timeout("sleep")
    await sandbox.kill()


async def test_on_timeout_pause_is_refused_where_the_runtime_cannot_pause(
        node_settings: NodeSettings) -> None:
    async with Node(node_settings, runtimes={"fake": _Unpausable()}) as node:
        sandbox = await node.create("python")
        with pytest.raises(RuntimeUnavailableError, match="cannot pause"):
            await sandbox.set_on_timeout("pause")
        assert sandbox.on_timeout == "kill"


async def test_a_lifetime_pause_that_fails_stops_the_sandbox_with_why(
        node_settings: NodeSettings) -> None:
    async with Node(node_settings, runtimes={"fake": _FailingPause()}) as node:
        sandbox = await node.create("python", timeout=1.0)
        await sandbox.set_on_timeout("pause")
        await _until(lambda: sandbox.state is S.STOPPED, "stopped")
        assert sandbox.stop_reason == (
            "timeout: sandbox lifetime reached, and pausing it instead (on_timeout=pause) "
            "failed: checkpointing failed: the test said so")


async def test_the_next_node_keeps_when_and_why_it_was_paused(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    first = Node(node_settings, runtimes={"fake": fake_runtime})
    await first.start()
    try:
        sandbox = await first.create("python", timeout=1.0)
        await sandbox.set_on_timeout("pause")
        await _until(lambda: sandbox.state is not S.RUNNING, "paused")
        paused_at = sandbox.paused_at
    finally:
        await first.close(detach=True)
    async with Node(node_settings, runtimes={"fake": fake_runtime}) as second:
        adopted = second.get(sandbox.id)
        assert adopted.state is S.PAUSED and adopted.paused_at == paused_at
        assert adopted.state_reason == "paused: lifetime ran out (on_timeout=pause)"
        assert (adopted.on_timeout, adopted.timeout, adopted.lifetime_left) == ("pause", 1.0,
                                                                                1.0)
        await second.resume(sandbox.id, reason="resumed: by the next node")
        assert adopted.state_reason == "resumed: by the next node"
