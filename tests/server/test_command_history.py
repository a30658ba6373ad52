"""``GET /v1/sandboxes/{id}/commands/history`` and ``sb.commands.history()``: commands run,
streamed and in the background, newest first, with their output (cut at 16 KiB) and how
they ended; kept once the sandbox stopped; another tenant's is not found; reading it is
not activity."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from corral import AsyncSandbox, Sandbox
from corral.api.errors import CommandTimeoutError
from corral.api.limits import HISTORY_OUTPUT
from corral.api.models import CommandRecord

from .conftest import Server, assert_error
from .test_sandbox_metrics import wait_for


def history(http: httpx.Client, sandbox_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/sandboxes/{sandbox_id}/commands/history")
    assert response.status_code == 200, response.text
    commands: list[dict[str, Any]] = response.json()["commands"]
    return commands


def test_commands_are_kept_with_their_output_and_end(server: Server, runtime: str) -> None:
    with Sandbox.create("python", runtime=runtime, timeout=300, **server.sdk()) as sb, \
            server.http(server.key) as http:
        assert history(http, sb.id) == []
        sb.commands.run("echo out; echo err >&2; exit 3")
        sb.commands.run(["python3", "-c", f"print('x' * {HISTORY_OUTPUT * 2})"])
        streamed: list[str] = []
        sb.commands.run("echo streamed", on_stdout=streamed.append)
        started = http.post(f"/v1/sandboxes/{sb.id}/commands", json={
            "cmd": "read line; echo got $line", "background": True, "stdin_open": True})
        assert started.status_code == 200, started.text
        background = started.json()["id"]

        shown = history(http, sb.id)
        assert [c["cmd"] for c in shown] == [
            "read line; echo got $line", "echo streamed",
            ["python3", "-c", f"print('x' * {HISTORY_OUTPUT * 2})"],
            "echo out; echo err >&2; exit 3"]
        running, echoed, flood, failed = shown
        assert running["id"] == background and running["ended_at"] is None
        assert running["exit_code"] is None
        assert (echoed["stdout"], echoed["exit_code"]) == ("streamed\n", 0)
        assert flood["truncated"] and flood["stdout"] == "x" * HISTORY_OUTPUT
        assert (failed["stdout"], failed["stderr"], failed["exit_code"]) == ("out\n", "err\n", 3)
        assert not failed["truncated"] and failed["signal"] is None
        for c in shown[1:]:
            assert datetime.fromisoformat(c["ended_at"]) >= datetime.fromisoformat(
                c["started_at"])

        # The background command ends once it has its line: its record follows.
        sent = http.post(f"/v1/sandboxes/{sb.id}/commands/{background}/stdin",
                         content=b"hello\n", params={"eof": "true"})
        assert sent.status_code == 204, sent.text
        ended = wait_for("the background command's end", lambda: [
            c for c in history(http, sb.id) if c["id"] == background and c["ended_at"]])[0]
        assert (ended["stdout"], ended["exit_code"]) == ("got hello\n", 0)

        # A command killed by its timeout says so.
        with pytest.raises(CommandTimeoutError):
            sb.commands.run("sleep 30", timeout=1)
        assert history(http, sb.id)[0]["reason"] == "timeout"


def test_the_sdk_reads_the_history(server: Server, default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    sb.commands.run("echo one")
    sb.commands.run("echo two")
    records = sb.commands.history()
    assert all(isinstance(r, CommandRecord) for r in records)
    assert [r.stdout for r in records[:2]] == ["two\n", "one\n"]

    async def from_async() -> list[CommandRecord]:
        again = await AsyncSandbox.connect(sb.id, **server.sdk())
        try:
            return await again.commands.history()
        finally:
            await again.close()
    assert [r.id for r in asyncio.run(from_async())] == [r.id for r in records]


def test_others_cannot_read_it_and_a_stopped_sandbox_keeps_it(server: Server) -> None:
    idle = 2
    label = {"history": f"idle-{time.monotonic_ns()}"}
    with Sandbox.create("python", timeout=300, idle_timeout=idle, metadata=label,
                        **server.sdk()) as sb, server.http(server.key) as http:
        sb.commands.run("echo kept")
        with server.http(server.other_key) as other:
            assert_error(other.get(f"/v1/sandboxes/{sb.id}/commands/history"), 404,
                         "not_found")
        assert_error(http.get("/v1/sandboxes/sbx-000000000000/commands/history"), 404,
                     "not_found")

        def stopped() -> bool:
            history(http, sb.id)  # reading it, again and again, keeps nothing alive
            return [s.state for s in Sandbox.list(metadata=label, **server.sdk())
                    ] == ["stopped"]
        wait_for("idle stop while the history is read", stopped)
        assert [c["stdout"] for c in history(http, sb.id)] == ["kept\n"]
