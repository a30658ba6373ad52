"""The agent frame format and the node's defences against a hostile agent."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from corral import AgentError, InvalidArgumentError, SandboxNotRunningError
from corral.api import agent_protocol as proto
from corral.api.resources import Resources, parse_size_mib
from corral.node.agent_client import AgentClient
from corral.node.validation import check_env, check_metadata, resolve_path


def test_frames_round_trip_and_bounds() -> None:
    frame = proto.encode({"id": 3, "op": "exec"}, b"data")
    head_len, data_len = proto.parse_prefix(frame[:8])
    assert proto.parse_header(frame[8:8 + head_len]) == {"id": 3, "op": "exec"}
    assert frame[8 + head_len:] == b"data" and data_len == 4
    with pytest.raises(proto.ProtocolError):
        proto.encode({"id": 1}, b"x" * (proto.MAX_DATA + 1))
    with pytest.raises(proto.ProtocolError):
        proto.parse_prefix(proto.HEADER.pack(proto.MAX_HEADER + 1, 0))
    with pytest.raises(proto.ProtocolError):
        proto.parse_prefix(proto.HEADER.pack(10, proto.MAX_DATA + 1))
    for bad in (b"[1]", b"{}", b'{"id": -1}', b'{"id": true}', b"\xff\xfe", b"{"):
        with pytest.raises(proto.ProtocolError):
            proto.parse_header(bad)


def test_sizes_and_resources() -> None:
    assert parse_size_mib("512M", "memory") == 512
    assert parse_size_mib("1.5GiB", "memory") == 1536
    assert parse_size_mib("2g", "disk") == 2048
    assert parse_size_mib("100K", "disk") == 1
    for bad in ("lots", "-5M", "1e9G", "", "5 MB B", "512B"):
        with pytest.raises(InvalidArgumentError):
            parse_size_mib(bad, "memory")
    for kwargs in ({"memory_mib": 16}, {"memory_mib": 10**9}, {"cpus": 0}, {"cpus": float("nan")},
                   {"pids": 1}, {"disk_mib": 0}, {"memory_mib": 64.5}):
        with pytest.raises(InvalidArgumentError):
            Resources(**kwargs)  # type: ignore[arg-type]
    assert Resources.parse(memory="256M", disk="2G").disk_mib == 2048


def test_request_validation() -> None:
    assert resolve_path("a/../../b", "/work") == "/b"
    assert resolve_path("/x//y/.", "/work") == "/x/y"
    with pytest.raises(InvalidArgumentError):
        resolve_path("a\0b", "/work")
    with pytest.raises(InvalidArgumentError):
        resolve_path("a" * 5000, "/work")
    assert check_env({"A_1": "x"}) == {"A_1": "x"}
    many = {f"K{i}": "" for i in range(300)}
    for bad in ({"1A": "x"}, {"A=B": "x"}, {"A": "\0"}, {"A": 1}, many):
        with pytest.raises(InvalidArgumentError):
            check_env(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        check_metadata({"k": "v" * 2000})
    with pytest.raises(InvalidArgumentError):
        check_metadata({"bad key!": "v"})


async def _client_for(script: str) -> tuple[AgentClient, asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stdin is not None
    return AgentClient(process.stdout, process.stdin, "fake agent"), process


HELLO = (
    "import sys, struct, json\n"
    "def send(h, d=b''):\n"
    "    b = json.dumps(h).encode()\n"
    "    sys.stdout.buffer.write(struct.pack('>II', len(b), len(d)) + b + d)\n"
    "    sys.stdout.buffer.flush()\n"
    "send({'id': 0, 'ev': 'hello', 'version': 1, 'pid': 1})\n"
)


def test_hostile_agent_cannot_hang_or_flood_the_node() -> None:
    async def scenario() -> None:
        # An agent that answers a request with a frame longer than the protocol allows.
        client, process = await _client_for(
            HELLO + "sys.stdin.buffer.read(1)\n"
            "sys.stdout.buffer.write(struct.pack('>II', 10, 50_000_000)); sys.stdout.flush()\n"
            "import time; time.sleep(30)\n")
        await client.handshake(10)
        with pytest.raises(SandboxNotRunningError, match="out of protocol"):
            await asyncio.wait_for(client.call(proto.OP_PING), 10)
        process.kill()
        await process.wait()

        # An agent that floods a stream far beyond its flow-control window.
        client, process = await _client_for(
            HELLO + "sys.stdin.buffer.read(1)\n"
            "for _ in range(10_000): send({'id': 1, 'ev': 'data'}, b'x' * 60000)\n")
        await client.handshake(10)
        stream = await client.open(proto.OP_READ, credited=True, path="/x")
        for _ in range(600):
            if client.closed:
                break
            await asyncio.sleep(0.05)
        assert client.closed and "flow-control" in (client.close_reason or "")
        with pytest.raises(SandboxNotRunningError):
            while True:
                await stream.next()
        process._transport.close()  # type: ignore[attr-defined]  # as the runtime does
        await asyncio.wait_for(process.wait(), 10)

        # An agent that never says hello, and one that greets with garbage.
        client, process = await _client_for("import time; time.sleep(30)")
        with pytest.raises(AgentError, match="did not start"):
            await client.handshake(0.5)
        process.kill()
        await process.wait()
        client, process = await _client_for(
            "import sys; sys.stdout.buffer.write(b'\\x00\\x00\\x00\\x05\\x00\\x00\\x00\\x00hello')")
        with pytest.raises(AgentError, match="out of protocol"):
            await client.handshake(10)
        await process.wait()

    asyncio.run(scenario())


def test_sandbox_uid_ranges_start_above_every_subordinate_range(tmp_path: Path) -> None:
    from corral.runtime.namespaces.runtime import uid_base

    assert uid_base(()) == 131072
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\nbob:165536:65536\n# junk\nbad:line\n")
    assert uid_base((subuid,)) == 262144
    assert uid_base((tmp_path / "missing",)) == 131072
