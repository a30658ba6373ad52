"""Starts and stops that overlap: a sandbox is nobody's while it starts, a closing node
waits for its starts, and a sandbox handed to the next node cannot be stopped through the
old one. Nothing is left behind (the fake runtime's fixture checks)."""

from __future__ import annotations

import asyncio

import pytest

from corral.api.errors import NotFoundError, SandboxNotRunningError, UnavailableError
from corral.node import Node, NodeSettings, SandboxState
from tests.fakes.runtime import FakeRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]


async def _started_creating(fake_runtime: FakeRuntime, count: int = 1) -> None:
    """Wait (bounded) until the runtime has made ``count`` sandboxes' host side."""
    for _ in range(5000):
        if len(fake_runtime.created) >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("no start was seen under way")


async def test_a_sandbox_is_nobodys_to_see_or_stop_while_it_starts(
        node: Node, fake_runtime: FakeRuntime) -> None:
    create = asyncio.get_running_loop().create_task(node.create("python"))
    await _started_creating(fake_runtime)
    sandbox_id = fake_runtime.created[-1].sandbox_id
    assert node.list() == []
    with pytest.raises(NotFoundError):
        node.get(sandbox_id)
    sandbox = await create
    assert node.get(sandbox_id) is sandbox and sandbox.state is SandboxState.RUNNING
    await sandbox.kill()


async def test_closing_the_node_waits_for_starts_and_refuses_new_ones(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    node = Node(node_settings, runtimes={"fake": fake_runtime})
    await node.start()
    create = asyncio.get_running_loop().create_task(node.create("python"))
    await _started_creating(fake_runtime)
    await node.close()
    made = await create  # the start finished before the node closed; then it was stopped
    assert made.state is SandboxState.STOPPED
    assert made.stop_reason == "node shutting down"
    with pytest.raises(UnavailableError, match="shutting down"):
        await node.create("python")


async def test_a_released_sandbox_cannot_be_stopped_through_its_old_node(
        node_settings: NodeSettings, fake_runtime: FakeRuntime) -> None:
    first = Node(node_settings, runtimes={"fake": fake_runtime})
    await first.start()
    sandbox = await first.create("python")
    await first.close(detach=True)
    with pytest.raises(SandboxNotRunningError, match="handed over running"):
        await sandbox.kill()
    async with Node(node_settings, runtimes={"fake": fake_runtime}) as second:
        again = second.get(sandbox.id)
        assert (await again.commands.run("echo adopted")).stdout == "adopted\n"
        await again.kill()
