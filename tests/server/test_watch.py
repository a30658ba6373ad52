"""Directory watches over HTTP (``GET .../files/watch``, NDJSON) and the SDK's
``files.watch``: events, stopping from another thread, the lifetime bound, refusals."""

from __future__ import annotations

import json
import threading

import pytest

from corral import InvalidArgumentError, NotFoundError, Sandbox
from corral.api.limits import MAX_WATCH_LIFETIME
from corral.sdk import WatchEvent

from .conftest import Server, assert_error


def test_the_sdk_streams_a_directorys_changes(default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    sb.files.mkdir("/work/w")
    with sb.files.watch("/work/w", recursive=True) as watch:
        sb.commands.run("mkdir /work/w/sub && touch /work/w/ready")
        seen: list[WatchEvent] = []
        for event in watch:
            seen.append(event)
            if event.name == "ready":  # sub's event came before: sub is watched now
                sb.commands.run("cd /work/w && echo x > sub/f && rm sub/f && touch end")
            if event.name == "end":
                break
    kinds = {(e.type, e.name, e.is_dir) for e in seen}
    assert {("create", "sub", True), ("create", "sub/f", False), ("write", "sub/f", False),
            ("remove", "sub/f", False), ("create", "end", False)} <= kinds, seen


def test_stop_from_another_thread_ends_the_iteration(default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    sb.files.mkdir("/work/w2")
    watch = sb.files.watch("/work/w2")
    first = threading.Event()
    seen: list[WatchEvent] = []

    def follow() -> None:
        for event in watch:
            seen.append(event)
            first.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    sb.commands.run("touch /work/w2/one")
    assert first.wait(60)
    watch.stop()
    reader.join(60)
    assert not reader.is_alive()
    assert ("create", "one") in [(e.type, e.name) for e in seen]


def test_a_watch_ends_with_its_lifetime(default_sandbox: Sandbox) -> None:
    default_sandbox.files.mkdir("/work/w3")
    with default_sandbox.files.watch("/work/w3", timeout=0.5) as watch:
        assert list(watch) == []


def test_watches_are_refused_where_they_cannot_be(server: Server,
                                                  default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    sb.files.write("/work/plain", "")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        sb.files.watch("/work/plain")
    with pytest.raises(NotFoundError):
        sb.files.watch("/work/nowhere")
    base = f"/v1/sandboxes/{sb.id}/files/watch"
    with server.http(server.key) as http:
        for timeout in (0, MAX_WATCH_LIFETIME + 1):
            assert_error(http.get(base, params={"path": "/work", "timeout": timeout}),
                         400, "invalid_argument")
        # At the edge: the longest lifetime is accepted (and the stream left at once).
        with http.stream("GET", base, params={"path": "/work",
                                              "timeout": MAX_WATCH_LIFETIME}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
    with server.http(server.other_key) as http:
        assert_error(http.get(base, params={"path": "/work"}), 404, "not_found")


def test_the_stream_is_ndjson_events(server: Server, default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    sb.files.mkdir("/work/w4")
    base = f"/v1/sandboxes/{sb.id}/files/watch"
    with server.http(server.key) as http, http.stream(
            "GET", base, params={"path": "/work/w4", "timeout": 60}) as response:
        sb.commands.run("touch /work/w4/a")
        lines = response.iter_lines()
        event = json.loads(next(line for line in lines if line.strip()))
    assert event == {"type": "create", "name": "a", "is_dir": False}
