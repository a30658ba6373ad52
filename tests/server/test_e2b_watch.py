"""envd's directory watches under ``/e2b`` over HTTP, with hand-built Connect envelopes
(docs/research/e2b-protocol.md §5.4): WatchDir's stream (start first, events, keepalives,
its deadline), the polling watchers and their bounds, refusals.

The real SDKs' ``watch_dir`` (sync: polling; async: the stream) runs in test_e2b_sdk.py.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.routing import Mount

from corral.server.e2b import connect, watch

from .conftest import Server
from .test_e2b_control import e2b_client
from .test_e2b_envd import STREAM, box, envd, start

__all__ = ["box"]  # the fixture, imported for these tests
UNARY = {"Connect-Protocol-Version": "1"}


def envelopes(response: httpx.Response) -> Iterator[tuple[int, dict[str, Any]]]:
    """A stream's envelopes as they arrive."""
    buffer = b""
    for chunk in response.iter_raw():
        buffer += chunk
        while len(buffer) >= 5:
            flags, length = struct.unpack(">BI", buffer[:5])
            if len(buffer) < 5 + length:
                break
            yield flags, json.loads(buffer[5:5 + length])
            buffer = buffer[5 + length:]


def call(client: httpx.Client, method: str, message: dict[str, Any]) -> httpx.Response:
    return client.post(f"/filesystem.Filesystem/{method}", json=message, headers=UNARY)


def test_watch_dir_streams_start_then_events(server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client, envd(server, box) as other:
        start(client, "mkdir -p /tmp/ew")
        with client.stream("POST", "/filesystem.Filesystem/WatchDir", headers=STREAM,
                           content=connect.envelope({"path": "/tmp/ew"})) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == connect.STREAM_TYPE
            frames = envelopes(response)
            assert next(frames) == (0, {"start": {}})
            start(other, "touch /tmp/ew/a && chmod 600 /tmp/ew/a && rm /tmp/ew/a")
            seen = []
            for flags, message in frames:
                assert flags == 0, message
                seen.append(message["filesystem"])
                if message["filesystem"]["type"] == "EVENT_TYPE_REMOVE":
                    break
    # (touch sets the new file's times: a chmod of its own, besides chmod's.)
    assert seen[0] == {"name": "a", "type": "EVENT_TYPE_CREATE"}
    assert seen[1] == {"name": "a", "type": "EVENT_TYPE_CHMOD"}
    assert seen[-1] == {"name": "a", "type": "EVENT_TYPE_REMOVE"}


def test_watch_dir_keeps_alive_and_ends_at_its_deadline(server: Server,
                                                        box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        start(client, "mkdir -p /tmp/ek")
        with client.stream("POST", "/filesystem.Filesystem/WatchDir", content=connect.envelope(
                {"path": "/tmp/ek", "recursive": True}),
                headers={**STREAM, "Keepalive-Ping-Interval": "1"}) as response:
            frames = envelopes(response)
            assert next(frames) == (0, {"start": {}})
            assert next(frames) == (0, {"keepalive": {}})
        with client.stream("POST", "/filesystem.Filesystem/WatchDir", content=connect.envelope(
                {"path": "/tmp/ek"}), headers={**STREAM, "Connect-Timeout-Ms": "1000"}
                ) as response:
            last = list(envelopes(response))[-1]
    assert last[0] == connect.END_STREAM
    assert last[1]["error"]["code"] == "deadline_exceeded"


def test_watch_requests_are_checked(server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        start(client, "mkdir -p /tmp/ec && touch /tmp/ec/file")
        for message, status, code in (
                ({"path": "/tmp/ec", "includeEntry": True}, 501, "unimplemented"),
                ({"path": "/tmp/ec", "allowNetworkMounts": True}, 501, "unimplemented"),
                ({"path": "/tmp/ec", "recursive": "yes"}, 400, "invalid_argument"),
                ({}, 400, "invalid_argument"),
                ({"path": "/tmp/ec/file"}, 400, "invalid_argument"),
                ({"path": "/tmp/nowhere"}, 404, "not_found")):
            for answer in (client.post("/filesystem.Filesystem/WatchDir", headers=STREAM,
                                       content=connect.envelope(message)),
                           call(client, "CreateWatcher", message)):
                assert (answer.status_code, answer.json()["code"]) == (status, code), (
                    message, answer.text)
    with envd(server, box, token="wrong") as client:
        assert call(client, "CreateWatcher", {"path": "/tmp"}).status_code == 401


def test_polling_watchers_hold_events_until_polled(server: Server,
                                                   box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        start(client, "mkdir -p /tmp/ep")
        created = call(client, "CreateWatcher", {"path": "/tmp/ep", "recursive": True})
        assert created.status_code == 200, created.text
        watcher = created.json()["watcherId"]
        start(client, "mkdir /tmp/ep/d && touch /tmp/ep/d/f /tmp/ep/end")
        events: list[dict[str, Any]] = []
        while {"name": "end", "type": "EVENT_TYPE_CREATE"} not in events:
            answer = call(client, "GetWatcherEvents", {"watcherId": watcher})
            assert answer.status_code == 200, answer.text
            events += answer.json()["events"]
        assert {"name": "d", "type": "EVENT_TYPE_CREATE"} in events
        assert {"name": "d/f", "type": "EVENT_TYPE_CREATE"} in events
        # Taken once: the next poll has only what came since.
        assert call(client, "GetWatcherEvents", {"watcherId": watcher}).json() == {
            "events": []}
        assert call(client, "RemoveWatcher", {"watcherId": watcher}).json() == {}
        for method in ("GetWatcherEvents", "RemoveWatcher"):
            answer = call(client, method, {"watcherId": watcher})
            assert (answer.status_code, answer.json()["code"]) == (404, "not_found")


def test_watchers_per_sandbox_are_bounded_and_kept_to_it(server: Server,
                                                         box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        start(client, "mkdir -p /tmp/eb")
        ids = []
        for _ in range(watch.MAX_PER_SANDBOX):
            answer = call(client, "CreateWatcher", {"path": "/tmp/eb"})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["watcherId"])
        refused = call(client, "CreateWatcher", {"path": "/tmp/eb"})
        assert (refused.status_code, refused.json()["code"]) == (429, "resource_exhausted")
        assert call(client, "RemoveWatcher", {"watcherId": ids.pop()}).status_code == 200
        answer = call(client, "CreateWatcher", {"path": "/tmp/eb"})
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["watcherId"])
    # Another sandbox (with its own token) cannot read these watchers.
    with e2b_client(server, server.key) as control:
        other = control.post("/v2/sandboxes", json={"templateID": "base"}).json()
        try:
            with envd(server, other) as client:
                answer = call(client, "GetWatcherEvents", {"watcherId": ids[0]})
                assert (answer.status_code, answer.json()["code"]) == (404, "not_found")
        finally:
            control.delete(f"/sandboxes/{other['sandboxID']}")
    with envd(server, box) as client:
        for watcher in ids:
            assert call(client, "RemoveWatcher", {"watcherId": watcher}).status_code == 200


@pytest.mark.parametrize("message", [{"watcherId": ""}, {"watcherId": 7},
                                     {"watcherId": "x" * 65}, {}])
def test_bad_watcher_ids_are_refused(server: Server, box: dict[str, Any],
                                     message: dict[str, Any]) -> None:
    with envd(server, box) as client:
        answer = call(client, "GetWatcherEvents", message)
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid_argument")


def _watchers(server: Server) -> watch.Watchers:
    """The server's table of polling watchers (the server runs in this process)."""
    for route in server.spec_check.app.routes:
        if isinstance(route, Mount) and route.path == "/e2b":
            found: watch.Watchers = route.app.state.watchers  # type: ignore[attr-defined]
            return found
    raise AssertionError("no E2B API mounted")


def test_watchers_go_with_their_sandbox(server: Server) -> None:
    with e2b_client(server, server.key) as control:
        sandbox = control.post("/v2/sandboxes", json={"templateID": "base"}).json()
        with envd(server, sandbox) as client:
            for _ in range(2):
                assert call(client, "CreateWatcher", {"path": "/tmp"}).status_code == 200
        table = _watchers(server)
        assert table.count(sandbox["sandboxID"]) == 2
        assert control.delete(f"/sandboxes/{sandbox['sandboxID']}").status_code == 204
    deadline = time.monotonic() + 60
    while table.count(sandbox["sandboxID"]) and time.monotonic() < deadline:
        time.sleep(0.05)  # the server sees the stop a moment after it answered
    assert table.count(sandbox["sandboxID"]) == 0


def test_watchers_nobody_polls_are_dropped(server: Server, box: dict[str, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with envd(server, box) as client:
        idle = call(client, "CreateWatcher", {"path": "/tmp"}).json()["watcherId"]
        monkeypatch.setattr(watch, "IDLE", 0.0)  # every watcher is idle from now on
        answer = call(client, "GetWatcherEvents", {"watcherId": idle})
        assert (answer.status_code, answer.json()["code"]) == (404, "not_found")
        assert "without a poll" in answer.json()["message"]
        assert _watchers(server).count(box["sandboxID"]) == 0
