"""The agent's directory watches (``watch``), driven frame by frame: events and their
names, recursion into new directories, cancel, credits, and the bounds at their edge.

The agent runs on the host here (``--root``), so these prove the inotify logic; the
integration tests run the same watches inside gVisor and the namespaces runtime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from corral.api import agent_protocol as proto
from tests.fakes.agent import AgentProcess

pytestmark = pytest.mark.rootless


def _watch(agent: AgentProcess, path: str, **fields: Any) -> int:
    req_id = agent.send({"op": "watch", "path": path, **fields})
    reply, _ = agent.read()
    assert (reply["id"], reply["ev"]) == (req_id, "ok"), reply
    return req_id


def _until(agent: AgentProcess, watch_id: int, wanted: set[tuple[str, str]]
           ) -> list[tuple[str, str]]:
    """Events of ``watch_id`` as (type, name), read (and credited) until all of ``wanted``
    came; a frame of another request fails."""
    seen: list[tuple[str, str]] = []
    while not wanted <= set(seen):
        header, data = agent.read()
        assert (header["id"], header["ev"]) == (watch_id, "data"), (header, seen)
        seen += [(e["type"], e["name"]) for e in json.loads(data)]
        agent.send({"op": "credit", "target": watch_id, "n": 1})
    return seen


def test_a_watch_reports_each_kind_of_change_by_relative_name(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "old").write_text("x")
    with AgentProcess(tmp_path) as agent:
        watch = _watch(agent, "/w")
        (work / "a.txt").write_text("hello")
        os.chmod(work / "a.txt", 0o600)
        os.rename(work / "old", work / "new")
        (work / "new").unlink()
        (work / "d").mkdir()
        (work / "d" / "inner").write_text("not followed without recursion")
        (work / "z").write_text("")
        seen = _until(agent, watch, {("create", "a.txt"), ("write", "a.txt"),
                                     ("chmod", "a.txt"), ("rename", "old"),
                                     ("create", "new"), ("remove", "new"), ("create", "d"),
                                     ("create", "z")})
        assert not [name for _, name in seen if name.startswith("d/")]
        # Ordered as they happened.
        assert seen.index(("create", "a.txt")) < seen.index(("write", "a.txt"))
        assert seen.index(("rename", "old")) < seen.index(("remove", "new"))


def test_a_recursive_watch_follows_directories_made_later(tmp_path: Path) -> None:
    (tmp_path / "w" / "old").mkdir(parents=True)
    with AgentProcess(tmp_path) as agent:
        watch = agent.send({"op": "watch", "path": "/w", "recursive": True})
        reply, _ = agent.read()
        assert (reply["ev"], reply["dirs"]) == ("ok", 2)
        (tmp_path / "w" / "old" / "f").write_text("1")
        (tmp_path / "w" / "new" / "deeper").mkdir(parents=True)
        (tmp_path / "w" / "new" / "deeper" / "g").write_text("2")
        seen = _until(agent, watch, {("create", "old/f"), ("create", "new"),
                                     ("create", "new/deeper/g")})
        assert ("create", "new/deeper") in seen


def test_cancel_stops_a_watch_and_frees_its_place(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    with AgentProcess(tmp_path) as agent:
        first = _watch(agent, "/w")
        (tmp_path / "w" / "one").write_text("")
        _until(agent, first, {("create", "one")})
        agent.send({"op": "cancel", "target": first})
        second = _watch(agent, "/w")
        (tmp_path / "w" / "two").write_text("")
        # Every frame until the second watch's event is the second watch's: the first
        # sends nothing after its cancel.
        _until(agent, second, {("create", "two")})


def test_the_end_of_the_watched_directory_ends_the_watch(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    with AgentProcess(tmp_path) as agent:
        watch = _watch(agent, "/w")
        (tmp_path / "w").rmdir()
        header, _ = agent.read()
        assert (header["id"], header["ev"]) == (watch, "end")


def test_watches_are_refused_where_they_cannot_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with AgentProcess(tmp_path) as agent:
        for path, code in (("/file", "invalid_argument"), ("/none", "not_found"),
                           ("relative", "invalid_argument"), ("/proc", "permission_denied"),
                           ("/" + "n" * 256, "invalid_argument")):
            reply, _ = agent.call({"op": "watch", "path": path})
            assert (reply["ev"], reply["code"]) == ("error", code), (path, reply)


def test_watches_per_sandbox_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    with AgentProcess(tmp_path) as agent:
        ids = [_watch(agent, "/w") for _ in range(proto.MAX_WATCHES)]
        reply, _ = agent.call({"op": "watch", "path": "/w"})
        assert (reply["ev"], reply["code"]) == ("error", "resource_exhausted"), reply
        assert f"{proto.MAX_WATCHES} watches" in reply["message"]
        assert len(set(ids)) == proto.MAX_WATCHES
        agent.send({"op": "cancel", "target": ids[0]})
        _watch(agent, "/w")  # a cancelled watch's place is free at once


def test_a_tree_past_the_directory_bound_is_refused(tmp_path: Path) -> None:
    for i in range(proto.MAX_WATCH_DIRS - 1):
        (tmp_path / "w" / f"d{i}").mkdir(parents=True)
    with AgentProcess(tmp_path) as agent:
        reply, _ = agent.call({"op": "watch", "path": "/w", "recursive": True})
        assert (reply["ev"], reply["dirs"]) == ("ok", proto.MAX_WATCH_DIRS), reply
        # One more, made later, is reported but not watched: an overflow says so.
        (tmp_path / "w" / "one-more").mkdir()
        (tmp_path / "w" / "one-more" / "unseen").mkdir()
        seen = _until(agent, reply["id"], {("create", "one-more"), ("overflow", "")})
        assert ("create", "one-more/unseen") not in seen
        agent.send({"op": "cancel", "target": reply["id"]})
        reply, _ = agent.call({"op": "watch", "path": "/w", "recursive": True})
        assert (reply["ev"], reply["code"]) == ("error", "resource_exhausted"), reply
        assert str(proto.MAX_WATCH_DIRS) in reply["message"]


def test_events_past_the_buffer_leave_an_overflow_marker(tmp_path: Path) -> None:
    """Without credits the agent holds at most MAX_WATCH_EVENTS events; the rest are
    dropped behind an ``overflow`` event (or the kernel's own queue overflows first)."""
    work = tmp_path / "w"
    work.mkdir()
    count = 4 * proto.MAX_WATCH_EVENTS + 32 * 256
    with AgentProcess(tmp_path) as agent:
        watch = _watch(agent, "/w")
        for i in range(count):
            (work / f"{i:06d}-{'x' * 200}").touch()
        (work / "last").touch()
        seen = _until(agent, watch, {("overflow", "")})
        (work / "after").touch()
        seen += _until(agent, watch, {("create", "after")})
        created = [name for kind, name in seen if kind == "create"]
        assert len(created) < count
