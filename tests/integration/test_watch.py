"""Directory watches on every runtime: inotify inside the sandbox sees what its code does.

Each test ends its changes with a sentinel file and reads events until the sentinel's
``create``: events come in the order they happened, so everything before it has come too.
"""

from __future__ import annotations

import pytest

from corral import (InvalidArgumentError, NotFoundError, ResourceExhaustedError,
                    SandboxNotRunningError)
from corral.api import agent_protocol as proto
from corral.node import SyncNode, SyncNodeSandbox
from corral.node.sync import SyncNodeWatch


def _until_created(watch: SyncNodeWatch, name: str) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for event in watch:
        seen.append((event.type, event.name))
        if (event.type, event.name) == ("create", name):
            return seen
    raise AssertionError(f"the watch ended before {name!r} was created: {seen}")


def test_a_watch_sees_what_sandbox_code_does(sandbox: SyncNodeSandbox) -> None:
    sandbox.files.mkdir("/work/w")
    sandbox.files.write("/work/w/old", "x")
    with sandbox.files.watch("/work/w") as watch:
        done = sandbox.commands.run(
            "cd /work/w && echo hi > a && echo more >> a && chmod 600 a && mv a b && rm b"
            " && mv old renamed && mkdir d && echo no > d/inner && touch end")
        assert done.exit_code == 0, done.stderr
        seen = _until_created(watch, "end")
    assert {("create", "a"), ("write", "a"), ("chmod", "a"), ("rename", "a"),
            ("create", "b"), ("remove", "b"), ("rename", "old"), ("create", "renamed"),
            ("create", "d")} <= set(seen), seen
    assert not [name for _, name in seen if name.startswith("d/")]  # not recursive


def test_a_watch_sees_the_file_api_too(sandbox: SyncNodeSandbox) -> None:
    sandbox.files.mkdir("/work/w")
    with sandbox.files.watch("/work/w") as watch:
        sandbox.files.write("/work/w/api.txt", "by the file api")
        sandbox.files.rename("/work/w/api.txt", "/work/w/moved.txt")
        sandbox.files.remove("/work/w/moved.txt")
        sandbox.files.write("/work/w/end", "")
        seen = _until_created(watch, "end")
    assert {("create", "api.txt"), ("rename", "api.txt"), ("create", "moved.txt"),
            ("remove", "moved.txt")} <= set(seen), seen


def test_a_recursive_watch_follows_new_directories(sandbox: SyncNodeSandbox) -> None:
    sandbox.files.mkdir("/work/w/old")
    with sandbox.files.watch("/work/w", recursive=True) as watch:
        done = sandbox.commands.run(
            "cd /work/w && echo 1 > old/f && mkdir -p new/deeper && echo 2 > new/deeper/g"
            " && mv new moved && echo 3 > moved/deeper/h && touch end")
        assert done.exit_code == 0, done.stderr
        seen = _until_created(watch, "end")
    assert {("create", "old/f"), ("create", "new"), ("create", "new/deeper/g"),
            ("rename", "new"), ("create", "moved"), ("create", "moved/deeper/h")
            } <= set(seen), seen


def test_a_closed_watch_stops_and_frees_its_place(sandbox: SyncNodeSandbox) -> None:
    sandbox.files.mkdir("/work/w")
    watches = [sandbox.files.watch("/work/w") for _ in range(proto.MAX_WATCHES)]
    try:
        with pytest.raises(ResourceExhaustedError, match=f"{proto.MAX_WATCHES} watches"):
            sandbox.files.watch("/work/w")
        watches[0].close()
        assert list(watches[0]) == []  # closed: nothing more comes
        with sandbox.files.watch("/work/w") as again:
            sandbox.files.write("/work/w/end", "")
            assert _until_created(again, "end")[-1] == ("create", "end")
    finally:
        for watch in watches:
            watch.close()


def test_watching_what_is_not_a_directory_is_refused(sandbox: SyncNodeSandbox) -> None:
    sandbox.files.write("/work/file", "")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        sandbox.files.watch("/work/file")
    with pytest.raises(NotFoundError):
        sandbox.files.watch("/work/none")


def test_a_pause_ends_a_watch_and_watches_work_after(sandbox: SyncNodeSandbox,
                                                    node: SyncNode) -> None:
    """The pause (a checkpoint under gVisor) is taken with a watch open; it ends the watch,
    and a new one works after the resume."""
    sandbox.files.mkdir("/work/w")
    before = sandbox.files.watch("/work/w", recursive=True)
    node.pause(sandbox.id)
    with pytest.raises(SandboxNotRunningError, match="was paused"):
        list(before)
    node.resume(sandbox.id)
    with sandbox.files.watch("/work/w") as after:
        sandbox.commands.run("touch /work/w/end")
        assert _until_created(after, "end") == [("create", "end")]
    before.close()
