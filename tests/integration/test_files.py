"""Files on every runtime: round trips, streaming, and paths that try to get out."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest

from corral import InvalidArgumentError, NotFoundError, PermissionDeniedError
from corral.node import SyncNodeSandbox


def test_write_read_list_stat_rename_remove(sandbox: SyncNodeSandbox) -> None:
    assert sandbox.files.write("/work/dir/a.txt", "hello") == 5  # parents are created
    assert sandbox.files.read("/work/dir/a.txt") == b"hello"
    assert sandbox.files.read_text("dir/a.txt") == "hello"  # relative to /work
    entries = sandbox.files.list("/work/dir")
    assert [(e.name, e.type, e.size) for e in entries] == [("a.txt", "file", 5)]
    assert sandbox.files.stat("/work/dir").type == "dir"
    sandbox.files.rename("/work/dir/a.txt", "/work/dir/b.txt")
    assert not sandbox.files.exists("/work/dir/a.txt") and sandbox.files.exists("/work/dir/b.txt")
    assert sandbox.files.mkdir("/work/dir/sub/deeper") is True
    assert sandbox.files.mkdir("/work/dir/sub/deeper") is False
    assert len(sandbox.files.list("/work/dir", depth=3)) == 3
    with pytest.raises(InvalidArgumentError, match="not empty"):
        sandbox.files.remove("/work/dir")
    sandbox.files.remove("/work/dir", recursive=True)
    assert not sandbox.files.exists("/work/dir")
    with pytest.raises(NotFoundError):
        sandbox.files.read("/work/dir/b.txt")


def test_files_and_commands_see_the_same_tree(sandbox: SyncNodeSandbox) -> None:
    sandbox.files.write("/tmp/x.sh", "echo from-file\n", mode=0o755)
    assert sandbox.commands.run("/tmp/x.sh").stdout == "from-file\n"
    sandbox.commands.run("echo from-cmd > /tmp/y")
    assert sandbox.files.read("/tmp/y") == b"from-cmd\n"
    sandbox.files.write("/work/owned", "x")
    assert sandbox.files.stat("/work/owned").mode == 0o644


def test_large_file_streams_both_ways(sandbox: SyncNodeSandbox) -> None:
    size, block = 96 * 1024 * 1024, os.urandom(1024 * 1024)
    expected = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            expected.update(block)
            yield block

    assert sandbox.files.write("/work/big.bin", chunks()) == size
    inside = sandbox.commands.run(["sha256sum", "/work/big.bin"]).stdout.split()[0]
    assert inside == expected.hexdigest()
    got, total = hashlib.sha256(), 0
    for chunk in sandbox.files.read_stream("/work/big.bin"):
        assert len(chunk) <= 1024 * 1024
        got.update(chunk)
        total += len(chunk)
    assert (total, got.hexdigest()) == (size, expected.hexdigest())


def test_dot_dot_and_absolute_paths_stay_inside(sandbox: SyncNodeSandbox) -> None:
    marker = f"/tmp/corral-host-{uuid.uuid4().hex}"
    with open(marker, "w") as f:
        f.write("host secret")
    try:
        with pytest.raises(NotFoundError):
            sandbox.files.read(marker)
        with pytest.raises(NotFoundError):
            sandbox.files.read("/work/../../../../.." + marker)
        passwd = sandbox.files.read_text("/work/../../../etc/passwd")
        assert "user:x:1000:1000" in passwd  # the image's file, not the host's
        sandbox.files.write("/work/../../../../tmp/escaped", "x")
        assert sandbox.files.exists("/tmp/escaped")
    finally:
        os.unlink(marker)
    assert not os.path.exists("/tmp/escaped")


def test_symlinks_resolve_inside_the_sandbox(sandbox: SyncNodeSandbox) -> None:
    host_hostname = open("/etc/hostname").read()
    sandbox.commands.run("ln -s /etc/hostname /work/link; ln -s ../../../../../ /work/up")
    assert sandbox.files.read_text("/work/link") == "sandbox\n" != host_hostname
    assert sandbox.files.stat("/work/link").type == "symlink"
    assert sandbox.files.read_text("/work/up/etc/hostname") == "sandbox\n"
    sandbox.files.write("/work/link", "replaced")  # replaces the link, not its target
    assert sandbox.commands.run("cat /etc/hostname").stdout == "sandbox\n"
    assert sandbox.files.read_text("/work/link") == "replaced"


def test_hostile_paths_get_clear_errors(sandbox: SyncNodeSandbox) -> None:
    with pytest.raises(InvalidArgumentError, match="NUL"):
        sandbox.files.read("/work/a\0b")
    with pytest.raises(InvalidArgumentError, match="longer"):
        sandbox.files.write("/work/" + "a" * 300, "x")
    with pytest.raises(InvalidArgumentError, match="longer"):
        sandbox.files.read("/" + "a/" * 5000)
    with pytest.raises(InvalidArgumentError):
        sandbox.files.read("")
    with pytest.raises(PermissionDeniedError, match="/proc"):
        sandbox.files.read("/proc/self/fd/1")
    with pytest.raises(PermissionDeniedError, match="/proc"):
        sandbox.files.read("/proc/1/environ")
    sandbox.commands.run("ln -s /proc/self/fd /work/fds; mkfifo /work/fifo")
    with pytest.raises(PermissionDeniedError):
        sandbox.files.read("/work/fds/0")
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        sandbox.files.read("/work/fifo")  # would block forever if opened for reading
    with pytest.raises(InvalidArgumentError, match="directory"):
        sandbox.files.read("/work")
    with pytest.raises(InvalidArgumentError):
        sandbox.files.write("/work/x", "data", mode=0o777777)
    assert sandbox.commands.run("true").exit_code == 0  # the agent survived all of it


def test_failed_upload_keeps_the_old_file(sandbox: SyncNodeSandbox) -> None:
    sandbox.files.write("/work/keep.txt", "old")

    def broken() -> Iterator[bytes]:
        yield b"new" * 100_000
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        sandbox.files.write("/work/keep.txt", broken())
    assert sandbox.files.read("/work/keep.txt") == b"old"
    assert [e.name for e in sandbox.files.list("/work")] == ["keep.txt"]  # no temp file left
