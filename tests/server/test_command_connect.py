"""``POST .../commands/{cid}/connect``: follow a running command again over HTTP. A
background command's output (drained by the server until then) is streamed from the
connect on; a command streamed to its starter is refused; leaving early only stops the
output; another tenant gets not_found; a paused sandbox is resumed first."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest

from corral import InvalidArgumentError, NotFoundError, Sandbox, SandboxNotRunningError

from .conftest import Server, assert_error

TICKER = "n=0; while :; do n=$((n+1)); echo tick-$n; sleep 0.05; done"


def _events(lines: Iterator[str], wanted: int) -> list[dict[str, object]]:
    """The next ``wanted`` NDJSON events of a streamed response's lines."""
    seen: list[dict[str, object]] = []
    for line in lines:
        if line:
            seen.append(json.loads(line))
        if len(seen) >= wanted:
            break
    return seen


def _running(http: object, sandbox_id: str) -> list[int]:
    listed = http.get(f"/v1/sandboxes/{sandbox_id}/commands")  # type: ignore[attr-defined]
    return [p["id"] for p in listed.json()["processes"]]


def test_connect_follows_a_running_command_again(server: Server, runtime: str) -> None:
    with Sandbox.create(runtime=runtime, **server.sdk()) as sb, server.http(server.key) as http:
        base = f"/v1/sandboxes/{sb.id}/commands"
        started = http.post(base, json={"cmd": TICKER, "background": True}).json()
        cid = started["id"]
        with http.stream("POST", f"{base}/{cid}/connect") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = response.iter_lines()
            events = _events(lines, 4)
        assert events[0] == {"type": "started", "id": cid, "pid": started["pid"]}
        output = b"".join(base64.b64decode(str(e["data"])) for e in events[1:])
        assert b"tick-" in output
        assert _running(http, sb.id) == [cid]  # leaving early did not kill it
        # Another tenant: as if it did not exist.
        with server.http(server.other_key) as other:
            assert_error(other.post(f"{base}/{cid}/connect"), 404, "not_found")
        assert_error(http.post(f"{base}/{cid + 1000}/connect"), 404, "not_found")
        # After a pause, a connect resumes the sandbox and follows it on.
        sb.pause()
        with http.stream("POST", f"{base}/{cid}/connect") as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert _events(lines, 2)[1]["type"] == "stdout"
            assert http.post(f"{base}/{cid}/signal", json={"signal": 9}).status_code == 204
            rest = [json.loads(line) for line in lines if line]
        assert rest[-1]["type"] == "exit" and rest[-1]["signal"] == 9
        deadline = time.monotonic() + 60
        while _running(http, sb.id):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_command_streamed_to_its_starter_is_not_taken(server: Server) -> None:
    with Sandbox.create(**server.sdk()) as sb, server.http(server.key) as http:
        base = f"/v1/sandboxes/{sb.id}/commands"
        with http.stream("POST", base, json={"cmd": TICKER, "stream": True}) as starter:
            lines = starter.iter_lines()  # kept: a dropped iterator closes the response
            first = _events(lines, 1)[0]
            refused = http.post(f"{base}/{first['id']}/connect")
            message = assert_error(refused, 400, "invalid_argument")
            assert "already streamed" in message


def test_the_sdk_follows_a_command_across_a_pause(server: Server, runtime: str) -> None:
    with Sandbox.create(runtime=runtime, **server.sdk()) as sb:
        handle = sb.commands.start(TICKER)
        first = next(iter(handle))
        assert b"tick-" in first.data
        sb.pause()
        with pytest.raises(SandboxNotRunningError, match="paused"):
            handle.wait()
        sb.resume()
        again = sb.commands.connect(handle.id)
        assert again.pid == handle.pid
        seen = next(iter(again))
        assert b"tick-" in seen.data
        again.kill()
        result = again.wait()
        assert result.signal == 9
        with pytest.raises(NotFoundError):
            sb.commands.connect(handle.id)
        with pytest.raises(InvalidArgumentError, match="whole number"):
            sb.commands.connect(-1)
