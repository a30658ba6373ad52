"""Idle timeouts: a sandbox nobody touches is stopped with why; calls and running commands
keep it alive; a sandbox without one is left alone.

The tests watch with ``GET /v1/sandboxes`` (listing is not activity), never with a get of
the sandbox itself, which would keep it alive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from corral import Sandbox
from corral.api.errors import InvalidArgumentError

from .conftest import Server

IDLE = 2
DEADLINE = 30.0


def _state(server: Server, sandbox: Sandbox) -> tuple[str, str | None]:
    found = [s for s in Sandbox.list(metadata=sandbox.info.metadata, **server.sdk())
             if s.id == sandbox.id]
    assert len(found) == 1
    return found[0].state, found[0].stop_reason


def _wait_stopped(server: Server, sandbox: Sandbox) -> str | None:
    deadline = time.monotonic() + DEADLINE
    while (state := _state(server, sandbox))[0] != "stopped":
        assert time.monotonic() < deadline, f"{sandbox.id} is still {state[0]}"
        time.sleep(0.2)
    return state[1]


def test_idle_sandbox_is_stopped_and_others_are_not(server: Server) -> None:
    label = {"idle": f"idle-{time.monotonic_ns()}"}
    with Sandbox.create("python", timeout=300, idle_timeout=IDLE, metadata=label,
                        **server.sdk()) as idle, \
            Sandbox.create("python", timeout=300, metadata=label, **server.sdk()) as plain:
        assert idle.info.idle_timeout == IDLE and plain.info.idle_timeout is None
        # Calls keep it alive well past its idle timeout.
        busy_until = time.monotonic() + 3 * IDLE
        while time.monotonic() < busy_until:
            assert idle.commands.run("true").exit_code == 0
            assert idle.files.exists("/work")
            time.sleep(IDLE / 4)
        assert _state(server, idle) == ("running", None)

        # So does a command running in the background while nobody calls.
        with server.http(server.key) as http:
            started = http.post(f"/v1/sandboxes/{idle.id}/commands",
                                json={"cmd": f"sleep {2 * IDLE}", "background": True})
            assert started.status_code == 200, started.text
        quiet_since = time.monotonic()

        assert _wait_stopped(server, idle) == f"idle timeout: no activity for {IDLE} s"
        # It outlived the background command: never stopped while it ran.
        assert time.monotonic() - quiet_since >= 2 * IDLE
        assert _state(server, plain) == ("running", None)


def test_idle_timeout_is_bounded(server: Server) -> None:
    for bad in (0, -1, 10**9):
        with pytest.raises(InvalidArgumentError, match="idle timeout"):
            Sandbox.create("python", idle_timeout=bad, **server.sdk())


def test_a_long_upload_is_activity(server: Server) -> None:
    label = {"idle": f"upload-{time.monotonic_ns()}"}
    pieces = 4 * IDLE  # one every half second: the upload lasts twice the idle timeout

    def slow() -> Iterator[bytes]:
        for _ in range(pieces):
            time.sleep(0.5)
            yield b"x" * 65536

    with Sandbox.create("python", timeout=300, idle_timeout=IDLE, metadata=label,
                        **server.sdk()) as sb:
        assert sb.files.write("/work/slow.bin", slow()) == pieces * 65536
        assert _state(server, sb) == ("running", None)
        assert _wait_stopped(server, sb) == f"idle timeout: no activity for {IDLE} s"
