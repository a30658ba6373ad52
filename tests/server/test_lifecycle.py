"""Sandbox lifecycle over HTTP, with the SDK: create, get, list and filter, timeout, kill."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from corral import AsyncSandbox, NotFoundError, Sandbox, SandboxNotRunningError
from corral.api.errors import InvalidArgumentError

from .conftest import Server


def test_create_get_list_and_kill(server: Server, runtime: str) -> None:
    label = f"lifecycle-{runtime}-{time.monotonic_ns()}"
    sb = Sandbox.create("python", runtime=runtime, timeout=120, metadata={"run": label},
                        env={"GREETING": "hi"}, resources={"memory": "256M", "pids": 128},
                        **server.sdk())
    try:
        assert sb.info.state == "running" and sb.info.runtime == runtime
        assert sb.info.resources.memory == 256 and sb.info.resources.pids == 128
        assert 119 <= (sb.info.expires_at - sb.info.created_at).total_seconds() <= 121
        assert sb.commands.run("echo $GREETING").stdout == "hi\n"

        same = Sandbox.connect(sb.id, **server.sdk())
        assert same.info.id == sb.id and same.info.metadata == {"run": label}
        same.close()

        listed = Sandbox.list(metadata={"run": label}, **server.sdk())
        assert [s.id for s in listed] == [sb.id]
        assert Sandbox.list(metadata={"run": label + "-other"}, **server.sdk()) == []
        assert sb.id in [s.id for s in Sandbox.list(state="running", **server.sdk())]
    finally:
        sb.kill()
    stopped = sb.refresh()
    assert stopped.state == "stopped" and stopped.stop_reason == "killed by request"
    assert Sandbox.list(metadata={"run": label}, state="running", **server.sdk()) == []
    assert [s.state for s in Sandbox.list(metadata={"run": label}, **server.sdk())] == [
        "stopped"]
    sb.kill()  # killing a stopped sandbox is not an error
    with pytest.raises(SandboxNotRunningError, match="killed by request"):
        sb.commands.run("true")
    sb.close()


def test_lifetime_timeout_is_recorded(server: Server) -> None:
    with Sandbox.create("python", timeout=1, **server.sdk()) as sb:
        deadline = time.monotonic() + 15
        while sb.refresh().state != "stopped":
            assert time.monotonic() < deadline, "the sandbox outlived its timeout"
            time.sleep(0.2)
        assert sb.info.stop_reason is not None and "timeout" in sb.info.stop_reason


def test_set_timeout_moves_the_expiry(default_sandbox: Sandbox) -> None:
    before = default_sandbox.info.expires_at
    default_sandbox.set_timeout(3600)
    assert (default_sandbox.info.expires_at - before).total_seconds() > 2000
    with pytest.raises(InvalidArgumentError):
        default_sandbox.set_timeout(10**9)


def test_unknown_ids_and_bad_arguments(server: Server) -> None:
    with pytest.raises(NotFoundError):
        Sandbox.connect("sbx-0000000000000000", **server.sdk())
    with pytest.raises(NotFoundError):
        Sandbox.connect("../../etc", **server.sdk())
    with pytest.raises(NotFoundError):
        Sandbox.create("no-such-image", **server.sdk())
    with pytest.raises(InvalidArgumentError):
        Sandbox.create("python", runtime="docker", **server.sdk())
    with pytest.raises(InvalidArgumentError):
        Sandbox.create("python", env={"1BAD": "x"}, **server.sdk())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_core(server: Server) -> None:
    async with await AsyncSandbox.create("python", timeout=120, **server.sdk()) as sb:
        r = await sb.commands.run(["python3", "-c", "print(6 * 7)"])
        assert (r.exit_code, r.stdout) == (0, "42\n")
        assert (await sb.refresh()).state == "running"
    again = await AsyncSandbox.connect(sb.id, **server.sdk())
    assert again.info.state == "stopped"
    await again.close()


def test_list_refuses_unknown_filters(server: Server) -> None:
    with server.http(server.key) as http:
        response = http.get("/v1/sandboxes", params={"owner": "x"})
        assert response.status_code == 400 and "metadata.KEY" in response.text
        assert http.get("/v1/sandboxes", params={"state": "exploded"}).status_code == 400


def test_records_left_open_by_a_dead_server_are_closed(tmp_path: Path) -> None:
    """What a restarted server does first: its node swept the old sandboxes, so their
    records say stopped, with why."""
    from datetime import UTC, datetime

    from corral.server.services.sandboxes import RESTART_REASON
    from corral.server.store import KeyStore, SandboxRecord, SandboxStore, open_engine

    engine = open_engine(f"sqlite:///{tmp_path / 'corral.db'}")
    KeyStore(engine).create("alpha")
    store = SandboxStore(engine)
    now = datetime.now(UTC)
    for sandbox_id, state in (("sbx-0000000000000001", "running"),
                              ("sbx-0000000000000002", "stopped")):
        store.add(SandboxRecord(id=sandbox_id, tenant="alpha", image="python",
                                runtime="gvisor", state=state, resources={},
                                metadata={"k": "v"}, created_at=now, expires_at=now,
                                stop_reason=None if state == "running" else "killed"))
    assert store.stop_all_active(RESTART_REASON) == 1
    assert {(r.id[-1], r.state, r.stop_reason) for r in store.list("alpha", {"k": "v"})} == {
        ("1", "stopped", RESTART_REASON), ("2", "stopped", "killed")}
    assert store.list("beta") == [] and store.list("alpha", {"k": "w"}) == []
