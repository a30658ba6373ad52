"""Commands through a node on the fake runtime: run, stream, stdin, signals, timeouts."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from corral.api.errors import AgentError, CommandTimeoutError, NotFoundError
from corral.node import Node, NodeSandbox, Output, SandboxState
from corral.node import commands as node_commands
from tests.fakes.runtime import FakeRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]


@pytest.fixture
async def sandbox(node: Node):  # type: ignore[no-untyped-def]
    async with await node.create("python", env={"FROM_CREATE": "yes"}) as sb:
        yield sb


async def test_run_captures_output_and_exit_code(sandbox: NodeSandbox) -> None:
    result = await sandbox.commands.run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.signal is None and result.reason is None
    argv = await sandbox.commands.run(["printf", "%s|", "a b", "c"])
    assert argv.stdout == "a b|c|"


async def test_env_and_cwd_reach_the_command(sandbox: NodeSandbox) -> None:
    result = await sandbox.commands.run("echo $FROM_CREATE $EXTRA", env={"EXTRA": "x"})
    assert result.stdout == "yes x\n"
    await sandbox.files.write("/work/here.txt", "in the workdir")
    await sandbox.files.write("/tmp/there.txt", "in /tmp")
    assert (await sandbox.commands.run("cat here.txt")).stdout == "in the workdir"
    assert (await sandbox.commands.run("cat there.txt", cwd="/tmp")).stdout == "in /tmp"


async def test_stdin_is_fed_and_closed(sandbox: NodeSandbox) -> None:
    assert (await sandbox.commands.run(["cat"], stdin="given whole")).stdout == "given whole"
    handle = await sandbox.commands.start(["cat"], stdin=True)
    await handle.send_stdin("one ")
    await handle.send_stdin(b"two", eof=True)
    result = await handle.wait()
    assert (result.exit_code, result.stdout) == (0, "one two")


async def test_output_streams_while_the_command_runs(sandbox: NodeSandbox) -> None:
    handle = await sandbox.commands.start(["sh", "-c", "echo first; read x; echo $x"],
                                          stdin=True)
    events = aiter(handle)
    first: Output = await anext(events)
    assert (first.stream, first.data) == ("stdout", b"first\n")
    await handle.send_stdin("second\n", eof=True)
    rest = [event.data async for event in events]
    assert b"".join(rest) == b"second\n"


async def test_a_signal_ends_the_command_with_its_number(sandbox: NodeSandbox) -> None:
    handle = await sandbox.commands.start(["sleep", "600"])
    assert [p.id for p in await sandbox.commands.list()] == [handle.id]
    await handle.signal(signal.SIGTERM)
    result = await handle.wait()
    assert (result.signal, result.exit_code, result.reason) == (signal.SIGTERM, 143, None)
    assert await sandbox.commands.list() == []


async def test_kill_ends_the_whole_tree(sandbox: NodeSandbox) -> None:
    handle = await sandbox.commands.start("sleep 600 & echo $!; wait")
    child = int((await anext(aiter(handle))).data)
    await handle.kill()
    result = await handle.wait()
    assert (result.signal, result.reason) == (signal.SIGKILL, "killed")
    await _ended(child)


async def test_a_timeout_kills_the_command_and_says_so(sandbox: NodeSandbox) -> None:
    with pytest.raises(CommandTimeoutError) as caught:
        await sandbox.commands.run("echo started; sleep 600", timeout=1)
    result = caught.value.result
    assert result is not None
    assert (result.reason, result.signal, result.stdout) == ("timeout", signal.SIGKILL,
                                                             "started\n")


async def test_missing_programs_and_folders_are_not_found(sandbox: NodeSandbox) -> None:
    with pytest.raises(NotFoundError, match="no-such-program"):
        await sandbox.commands.run(["no-such-program"])
    with pytest.raises(NotFoundError, match="does not exist"):
        await sandbox.commands.run("true", cwd="/no/such/dir")


async def test_killing_the_sandbox_ends_what_its_commands_left(
        node: Node, fake_runtime: FakeRuntime) -> None:
    sandbox = await node.create("python")
    # A daemon: its parent exits, so only the agent (a subreaper, as PID 1) still holds it.
    result = await sandbox.commands.run("setsid sleep 600 > /dev/null 2>&1 & echo $!")
    orphan = int(result.stdout)
    assert not _gone(orphan)
    await sandbox.kill()
    await _ended(orphan)


async def _ended(pid: int) -> None:
    """Wait for ``pid`` to end (SIGKILL takes effect a moment after it is sent); the test's
    timeout bounds the wait, so a process that survives fails the test."""
    while not _gone(pid):
        await asyncio.sleep(0.02)


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return True
    return raw[raw.rfind(b")") + 2:].split()[0] == b"Z"


async def test_a_stopped_agent_cannot_hold_a_start_forever(
        sandbox: NodeSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent owes the command's pid; past the start deadline it is not trusted and the
    sandbox ends, saying why (a sandbox's code can SIGSTOP a gVisor agent)."""
    monkeypatch.setattr(node_commands, "START_DEADLINE", 0.5)
    pid = sandbox.handle.extra["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(AgentError, match="did not answer a command's start within 0.5 s"):
        await sandbox.commands.start(["true"])
    while sandbox.state is not SandboxState.STOPPED:
        await asyncio.sleep(0.05)
    assert "did not answer a command's start" in (sandbox.stop_reason or "")
