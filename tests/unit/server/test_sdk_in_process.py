"""The server's routes through the SDK, in process, on the fake runtime."""

from __future__ import annotations

import signal

import pytest

from corral import (
    AsyncSandbox,
    AuthenticationError,
    CommandTimeoutError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from corral.api.errors import AlreadyExistsError, SandboxError
from corral.sdk._http import ApiClient
from tests.fakes.runtime import FakeRuntime

from .conftest import Server

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]


async def test_create_run_and_kill(server: Server, fake_runtime: FakeRuntime) -> None:
    sb = await AsyncSandbox.create(timeout=600, metadata={"suite": "unit"}, env={"A": "1"},
                                   **server.sdk())
    try:
        assert sb.info.runtime == "fake" and sb.info.state == "running"
        assert sb.info.metadata == {"suite": "unit"}
        result = await sb.commands.run("echo $A; echo err >&2; exit 4")
        assert (result.exit_code, result.stdout, result.stderr) == (4, "1\n", "err\n")
        listed = await AsyncSandbox.list(metadata={"suite": "unit"}, **server.sdk())
        assert [info.id for info in listed] == [sb.id]
    finally:
        await sb.kill()
    assert not fake_runtime.created[-1].directory.exists()
    with pytest.raises(SandboxError):
        await sb.commands.run("true")
    await sb.close()


async def test_output_streams_and_stdin_is_forwarded(server: Server) -> None:
    async with await AsyncSandbox.create(**server.sdk()) as sb:
        seen: list[str] = []
        result = await sb.commands.run("echo one; echo two", on_stdout=seen.append)
        assert "".join(seen) == result.stdout == "one\ntwo\n"
        handle = await sb.commands.start(["sh", "-c", "echo ready; read x; echo got $x"],
                                         stdin=True)
        async with handle:
            chunks = aiter(handle)
            assert (await anext(chunks)).data == b"ready\n"  # before any stdin was sent
            await handle.send_stdin("it\n", eof=True)
            assert b"".join([chunk.data async for chunk in chunks]) == b"got it\n"


async def test_signals_and_timeouts(server: Server) -> None:
    async with await AsyncSandbox.create(**server.sdk()) as sb:
        handle = await sb.commands.start(["sleep", "600"])
        async with handle:
            assert [p.id for p in await sb.commands.list()] == [handle.id]
            await handle.signal(signal.SIGTERM)
            result = await handle.wait()
        assert (result.signal, result.exit_code) == (signal.SIGTERM, 143)
        with pytest.raises(CommandTimeoutError) as caught:
            await sb.commands.run("echo partial; sleep 600", timeout=1)
        assert caught.value.result is not None
        assert (caught.value.result.reason, caught.value.result.stdout) == ("timeout",
                                                                            "partial\n")


async def test_files_round_trip(server: Server, fake_runtime: FakeRuntime) -> None:
    async with await AsyncSandbox.create(**server.sdk()) as sb:
        payload = bytes(range(256)) * 4096  # 1 MiB: more than one chunk each way
        await sb.files.write("/work/in/data.bin", payload)
        assert await sb.files.read("/work/in/data.bin") == payload
        root = fake_runtime.created[-1].directory / "rootfs"
        assert (root / "work" / "in" / "data.bin").read_bytes() == payload
        assert [(e.path, e.type, e.size) for e in await sb.files.list("/work/in")] == [
            ("/work/in/data.bin", "file", len(payload))]
        assert (await sb.files.stat("/work/in")).type == "dir"
        assert await sb.files.exists("/work/in/data.bin")
        await sb.files.rename("/work/in/data.bin", "/work/moved.bin")
        assert (await sb.commands.run("wc -c < moved.bin")).stdout.strip() == str(len(payload))
        await sb.files.remove("/work/in", recursive=True)
        assert not await sb.files.exists("/work/in")


async def test_errors_arrive_as_their_sdk_classes(server: Server) -> None:
    async with await AsyncSandbox.create(**server.sdk()) as sb:
        with pytest.raises(NotFoundError, match="missing.txt"):
            await sb.files.read("/work/missing.txt")
        with pytest.raises(PermissionDeniedError):
            await sb.files.read("/proc/self/environ")
        await sb.files.write("/work/a.txt", "a")
        with pytest.raises(AlreadyExistsError):
            await sb.files.rename("/work/a.txt", "/work/a.txt")
        with pytest.raises(NotFoundError):
            await sb.commands.run(["no-such-program"])
    with pytest.raises(InvalidArgumentError):
        await AsyncSandbox.create(timeout=0, **server.sdk())
    with pytest.raises(NotFoundError, match="not built"):
        await AsyncSandbox.create("minimal", **server.sdk())
    with pytest.raises(AuthenticationError):
        await AsyncSandbox.create(url=server.url, api_key="crl_not_a_key")
    with pytest.raises(NotFoundError):
        await AsyncSandbox.connect("sbx-0123456789abcdef", **server.sdk())


async def test_another_tenant_sees_nothing(server: Server) -> None:
    async with await AsyncSandbox.create(**server.sdk()) as sb:
        await sb.files.write("/work/mine.txt", "alpha's")
        with pytest.raises(NotFoundError, match=sb.id):
            await AsyncSandbox.connect(sb.id, **server.sdk(server.other_key))
        assert await AsyncSandbox.list(**server.sdk(server.other_key)) == []
        theirs = ApiClient(server.url, server.other_key)
        try:
            for method, path in (("GET", f"/v1/sandboxes/{sb.id}"),
                                 ("DELETE", f"/v1/sandboxes/{sb.id}"),
                                 ("GET", f"/v1/sandboxes/{sb.id}/files?path=/work/mine.txt"),
                                 ("GET", f"/v1/sandboxes/{sb.id}/commands")):
                with pytest.raises(NotFoundError, match=sb.id):
                    await theirs.call(method, path)
        finally:
            await theirs.aclose()
        assert await sb.files.read_text("/work/mine.txt") == "alpha's"
