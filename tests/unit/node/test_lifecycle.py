"""A node's sandbox lifecycle on the fake runtime: create, find, kill, time out, adopt."""

from __future__ import annotations

import asyncio
import os
import select
import signal

import pytest

from corral.api.errors import (
    InvalidArgumentError,
    NotFoundError,
    SandboxNotRunningError,
)
from corral.node import Node, NodeSettings, NodeSandbox, SandboxState
from tests.fakes.runtime import FakeRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]


async def _stopped(sandbox: NodeSandbox) -> None:
    """Wait for the node to stop ``sandbox`` on its own (the test's timeout bounds it)."""
    while sandbox.state is not SandboxState.STOPPED:
        await asyncio.sleep(0.05)


async def test_create_runs_the_agent_and_kill_removes_everything(
        node: Node, fake_runtime: FakeRuntime) -> None:
    sandbox = await node.create("python", metadata={"job": "a"})
    info = sandbox.info
    assert (info.state, info.runtime, info.image) == (SandboxState.RUNNING.value, "fake",
                                                      "python")
    assert node.get(sandbox.id) is sandbox
    pid = sandbox.handle.extra["pid"]
    assert isinstance(pid, int)
    os.kill(pid, 0)  # the agent runs
    directory = fake_runtime.created[-1].directory
    assert (directory / "rootfs" / "etc" / "passwd").is_file()

    await sandbox.kill()

    assert sandbox.state is SandboxState.STOPPED
    assert sandbox.stop_reason == "killed by request"
    assert not directory.exists()
    with pytest.raises(NotFoundError):
        node.get(sandbox.id)
    with pytest.raises(SandboxNotRunningError, match="killed by request"):
        await sandbox.commands.run("true")
    await sandbox.kill()  # again: a no-op


async def test_list_filters_by_metadata_and_state(node: Node) -> None:
    a = await node.create("python", metadata={"team": "x", "job": "1"})
    b = await node.create("python", metadata={"team": "x", "job": "2"})
    c = await node.create("python", metadata={"team": "y"})
    try:
        assert {sb.id for sb in node.list()} == {a.id, b.id, c.id}
        assert {sb.id for sb in node.list({"team": "x"})} == {a.id, b.id}
        assert [sb.id for sb in node.list({"team": "x", "job": "2"})] == [b.id]
        assert node.list({"team": "z"}) == []
        await b.kill()
        assert {sb.id for sb in node.list({"team": "x"}, SandboxState.RUNNING)} == {a.id}
    finally:
        for sandbox in (a, b, c):
            await sandbox.kill()


async def test_the_lifetime_ends_the_sandbox(node: Node, fake_runtime: FakeRuntime) -> None:
    sandbox = await node.create("python", timeout=1)
    await _stopped(sandbox)
    assert sandbox.stop_reason is not None
    assert sandbox.stop_reason.startswith("timeout: sandbox lifetime of 1 s")
    assert not fake_runtime.created[-1].directory.exists()
    with pytest.raises(NotFoundError):
        node.get(sandbox.id)


async def test_set_timeout_moves_the_expiry(node: Node) -> None:
    async with await node.create("python", timeout=5) as sandbox:
        before = sandbox.expires_at
        await sandbox.set_timeout(600)
        assert sandbox.expires_at > before + 500


async def test_a_dead_agent_stops_its_sandbox_with_why(node: Node) -> None:
    sandbox = await node.create("python")
    pid = sandbox.handle.extra["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    await _stopped(sandbox)
    assert sandbox.stop_reason is not None
    assert "agent exited" in sandbox.stop_reason


async def test_bad_requests_are_refused_before_anything_starts(
        node: Node, fake_runtime: FakeRuntime) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown runtime 'gvisor'"):
        await node.create("python", runtime="gvisor")
    with pytest.raises(NotFoundError, match="not built"):
        await node.create("minimal")
    with pytest.raises(InvalidArgumentError):
        await node.create("python", timeout=0)
    with pytest.raises(InvalidArgumentError):
        await node.create("python", metadata={"": "x"})
    assert fake_runtime.created == []


async def test_closing_the_node_stops_every_sandbox(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    async with Node(node_settings, runtimes={"fake": fake_runtime}) as node:
        sandboxes = [await node.create("python") for _ in range(2)]
    assert [sb.state for sb in sandboxes] == [SandboxState.STOPPED] * 2
    assert all(sb.stop_reason == "node shutting down" for sb in sandboxes)
    assert not any(spec.directory.exists() for spec in fake_runtime.created)


async def test_a_released_sandbox_is_adopted_by_the_next_node(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    first = Node(node_settings, runtimes={"fake": fake_runtime})
    await first.start()
    try:
        sandbox = await first.create("python", metadata={"keep": "yes"})
        await sandbox.files.write("/work/note.txt", "from before the restart")
        runner = await sandbox.commands.start(["sleep", "600"])
    finally:
        await first.close(detach=True)
    assert first.list() == []

    async with Node(node_settings, runtimes={"fake": fake_runtime}) as second:
        adopted = second.get(sandbox.id)
        assert adopted.state is SandboxState.RUNNING
        assert adopted.metadata == {"keep": "yes"}
        assert second.lost == {}
        assert await adopted.files.read_text("/work/note.txt") == "from before the restart"
        assert [p.id for p in await adopted.commands.list()] == [runner.id]
        result = await adopted.commands.run("echo still here")
        assert result.stdout == "still here\n"
    assert adopted.state is SandboxState.STOPPED


async def test_what_cannot_be_adopted_is_listed_as_lost(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    first = Node(node_settings, runtimes={"fake": fake_runtime})
    await first.start()
    try:
        sandbox = await first.create("python")
        pid = sandbox.handle.extra["pid"]
    finally:
        await first.close(detach=True)
    assert isinstance(pid, int)
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        # kill() only queues the signal: on a busy host the agent can still be running
        # (and be adopted) a moment later. Its pidfd turns readable once it has exited.
        readable, _, _ = select.select([pidfd], [], [], 60)
        assert readable, f"agent {pid} still runs 60 s after SIGKILL"
    finally:
        os.close(pidfd)

    async with Node(node_settings, runtimes={"fake": fake_runtime}) as second:
        assert sandbox.id in second.lost
        assert "agent is gone" in second.lost[sandbox.id]
        with pytest.raises(NotFoundError):
            second.get(sandbox.id)
    assert not fake_runtime.created[-1].directory.exists()
