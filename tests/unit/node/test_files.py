"""Files through a node on the fake runtime: the agent's file API inside the sandbox root."""

from __future__ import annotations

import pytest

from corral.api.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from corral.node import Node, NodeSandbox
from tests.fakes.runtime import FakeRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]


@pytest.fixture
async def sandbox(node: Node):  # type: ignore[no-untyped-def]
    async with await node.create("python") as sb:
        yield sb


async def test_write_then_read_lands_inside_the_sandbox_root(
        sandbox: NodeSandbox, fake_runtime: FakeRuntime) -> None:
    payload = bytes(range(256)) * 1000
    assert await sandbox.files.write("/work/deep/data.bin", payload, mode=0o600) == len(payload)
    assert await sandbox.files.read("/work/deep/data.bin") == payload
    assert await sandbox.files.read("deep/data.bin") == payload  # relative to the workdir
    on_host = fake_runtime.created[-1].directory / "rootfs" / "work" / "deep" / "data.bin"
    assert on_host.read_bytes() == payload
    chunks = [chunk async for chunk in sandbox.files.read_stream("/work/deep/data.bin")]
    assert b"".join(chunks) == payload and len(chunks) > 1


async def test_stat_list_and_exists(sandbox: NodeSandbox) -> None:
    await sandbox.files.write("/work/a/one.txt", "1")
    await sandbox.files.write("/work/a/b/two.txt", "22", mode=0o640)
    info = await sandbox.files.stat("/work/a/b/two.txt")
    assert (info.name, info.path, info.type, info.size, info.mode) == (
        "two.txt", "/work/a/b/two.txt", "file", 2, 0o640)
    assert (await sandbox.files.stat("/work/a")).type == "dir"
    top = await sandbox.files.list("/work/a")
    assert [(e.path, e.type) for e in top] == [("/work/a/b", "dir"), ("/work/a/one.txt", "file")]
    deep = await sandbox.files.list("/work/a", depth=2)
    assert [e.path for e in deep] == ["/work/a/b", "/work/a/b/two.txt", "/work/a/one.txt"]
    assert await sandbox.files.exists("/work/a/one.txt")
    assert not await sandbox.files.exists("/work/a/none.txt")


async def test_mkdir_rename_and_remove(sandbox: NodeSandbox) -> None:
    assert await sandbox.files.mkdir("/work/x/y") is True
    assert await sandbox.files.mkdir("/work/x/y") is False
    await sandbox.files.write("/work/x/y/f.txt", "f")
    await sandbox.files.write("/work/g.txt", "g")
    with pytest.raises(AlreadyExistsError):
        await sandbox.files.rename("/work/g.txt", "/work/x/y/f.txt")
    await sandbox.files.rename("/work/g.txt", "/work/x/y/f.txt", overwrite=True)
    assert await sandbox.files.read_text("/work/x/y/f.txt") == "g"
    with pytest.raises(InvalidArgumentError, match="not empty"):
        await sandbox.files.remove("/work/x")
    await sandbox.files.remove("/work/x", recursive=True)
    assert not await sandbox.files.exists("/work/x")


async def test_errors_name_the_sandbox_path(sandbox: NodeSandbox) -> None:
    with pytest.raises(NotFoundError, match="'/work/missing.txt'"):
        await sandbox.files.read("/work/missing.txt")
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        await sandbox.files.read("/work")
    with pytest.raises(PermissionDeniedError, match="/proc"):
        await sandbox.files.read("/proc/self/environ")
    with pytest.raises(InvalidArgumentError, match="refusing to remove /"):
        await sandbox.files.remove("/", recursive=True)


async def test_a_command_sees_what_the_file_api_wrote(sandbox: NodeSandbox) -> None:
    await sandbox.files.write("/work/script.sh", "echo from the script\n", mode=0o755)
    assert (await sandbox.commands.run("sh script.sh")).stdout == "from the script\n"
    await sandbox.commands.run("echo made by a command > made.txt")
    assert await sandbox.files.read_text("/work/made.txt") == "made by a command\n"
