"""The README's uses of the SDK and the node, as a user's type checker sees them.

Never run and never collected (its name is not ``test_*``): ``test_typing.py`` checks it
with ``mypy --strict --disallow-any-expr``, so every expression here must have a real
type, and ``assert_type`` pins the ones a user reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import assert_type

from corral import AsyncSandbox, Sandbox
from corral.api.models import (CodeEvent, CodeContext, CommandResult, CommandStarted,
                               EntryInfo, Execution, ProcessInfo, SandboxInfo)
from corral.node import SandboxState, SyncNode, SyncNodeSandbox
from corral.sdk import CommandHandle, Output


def blocking_sdk() -> None:
    with Sandbox.create(image="python", timeout=600) as sb:
        assert_type(sb, Sandbox)
        assert_type(sb.files.write("/work/data.csv", b"a,b\n1,2\n3,4\n"), int)
        r = sb.commands.run("python3 -c 'print(2 + 2)'")
        assert_type(r, CommandResult)
        assert_type(r.exit_code, int)
        assert_type(r.stdout, str)
        sb.commands.run("for i in 1 2 3; do echo $i; done",
                        on_stdout=lambda text: print(text, end=""))
        assert_type(sb.run_code("1 + 1"), Execution)
        assert_type(sb.run_code("1 + 1").text, str | None)
        with sb.commands.start(["sleep", "1"]) as handle:
            assert_type(handle, CommandHandle)
            assert_type(handle.pid, int)
            for chunk in handle:
                assert_type(chunk, Output)
                assert_type(chunk.data, bytes)
            assert_type(handle.wait(), CommandResult)
        assert_type(sb.commands.run_background("sleep 9"), CommandStarted)
        assert_type(sb.commands.list(), list[ProcessInfo])
        assert_type(sb.files.read_stream("/work/data.csv"), Iterator[bytes])
        assert_type(sb.files.list("/work"), list[EntryInfo])
        assert_type(sb.code.create_context(cwd="/tmp"), CodeContext)
        assert_type(sb.info, SandboxInfo)
        assert_type(sb.id, str)
    again = Sandbox.connect("sbx-0123abcd4567", url="http://127.0.0.1:8470")
    assert_type(again, Sandbox)
    assert_type(Sandbox.list(metadata={"job": "etl"}), list[SandboxInfo])


async def async_sdk() -> None:
    async with await AsyncSandbox.create(image="python", timeout=600) as sb:
        assert_type(sb, AsyncSandbox)
        r = await sb.commands.run("python3 -c 'print(2 + 2)'")
        assert_type(r, CommandResult)
        assert_type(await sb.files.write("/work/hello.py", "print('hello')"), int)
        assert_type((await sb.run_code("1 + 1")).text, str | None)
        async with await sb.commands.start("echo hi") as handle:
            async for chunk in handle:
                assert_type(chunk, Output)


def blocking_node() -> None:
    with SyncNode() as node, node.create("python", timeout=600) as sb:
        assert_type(sb, SyncNodeSandbox)
        assert_type(sb.files.write("/work/data.csv", b"a,b\n1,2\n"), int)
        r = sb.commands.run("python3 -c 'print(2 + 2)'")
        assert_type(r, CommandResult)
        assert_type(r.exit_code, int)
        for event in sb.commands.start("echo hi"):
            assert_type(event, Output)
        assert_type(sb.code.run("1 + 1").text, str | None)
        assert_type(sb.code.stream("1 + 1"), Iterator[CodeEvent])
        assert_type(sb.info, SandboxInfo)
        assert_type(sb.state, SandboxState)
        assert_type(sb.run_code("1 + 1", context="default"), Execution)
        assert_type(node.list(metadata={"job": "etl"}), list[SyncNodeSandbox])
        assert_type(node.get(sb.id), SyncNodeSandbox)
