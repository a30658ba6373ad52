"""Files over HTTP: round trips, listing and management, and a 64 MiB streamed transfer."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from corral import InvalidArgumentError, NotFoundError, Sandbox

BIG = 64 * 1024 * 1024


def test_round_trip_and_management(sandbox: Sandbox) -> None:
    payload = bytes(range(256)) * 100
    assert sandbox.files.write("/work/a/b/data.bin", payload) == len(payload)
    assert sandbox.files.read("/work/a/b/data.bin") == payload
    assert sandbox.files.write("notes.txt", "héllo") == len("héllo".encode())
    assert sandbox.files.read_text("/work/notes.txt") == "héllo"
    assert sandbox.commands.run("cat /work/notes.txt").stdout == "héllo"

    entry = sandbox.files.stat("/work/a/b/data.bin")
    assert (entry.type, entry.size, entry.name) == ("file", len(payload), "data.bin")
    names = {e.path for e in sandbox.files.list("/work", depth=3)}
    assert {"/work/a", "/work/a/b", "/work/a/b/data.bin", "/work/notes.txt"} <= names

    assert sandbox.files.mkdir("/work/d") is True
    assert sandbox.files.mkdir("/work/d") is False
    sandbox.files.rename("/work/notes.txt", "/work/d/notes.txt")
    assert not sandbox.files.exists("/work/notes.txt")
    assert sandbox.files.exists("/work/d/notes.txt")
    sandbox.files.remove("/work/d", recursive=True)
    assert not sandbox.files.exists("/work/d")

    with pytest.raises(NotFoundError):
        sandbox.files.read("/work/missing")
    with pytest.raises(NotFoundError):
        sandbox.files.stat("/work/missing")


def test_a_named_user_owns_what_a_write_or_mkdir_creates(sandbox: Sandbox) -> None:
    sandbox.files.write("/work/u/v/w.txt", "x", user="user")
    sandbox.files.write("/work/r.txt", "x")
    assert sandbox.files.mkdir("/work/m/n", user=1000) is True
    for path in ("/work/u", "/work/u/v", "/work/u/v/w.txt", "/work/m", "/work/m/n"):
        entry = sandbox.files.stat(path)
        assert (path, entry.uid, entry.gid) == (path, 1000, 1000)
    assert sandbox.files.stat("/work/r.txt").uid == 0
    assert sandbox.files.stat("/work").uid == 0  # an existing parent keeps its owner
    with pytest.raises(NotFoundError, match="does not exist"):
        sandbox.files.write("/work/x.txt", "x", user="nobody-here")
    with pytest.raises(InvalidArgumentError):
        sandbox.files.mkdir("/work/y", user="a:b")


def _chunks(seed: bytes, total: int) -> Iterator[bytes]:
    block = hashlib.sha256(seed).digest() * (1024 * 1024 // 32)  # 1 MiB, not all zeros
    for _ in range(total // len(block)):
        yield block


def test_64_mib_streamed_upload_and_download(sandbox: Sandbox) -> None:
    expected = hashlib.sha256()
    for chunk in _chunks(b"corral", BIG):
        expected.update(chunk)
    assert sandbox.files.write("/work/big.bin", _chunks(b"corral", BIG)) == BIG
    r = sandbox.commands.run(["sha256sum", "/work/big.bin"])
    assert r.stdout.split()[0] == expected.hexdigest()

    got, size = hashlib.sha256(), 0
    for chunk in sandbox.files.read_stream("/work/big.bin"):
        got.update(chunk)
        size += len(chunk)
    assert (size, got.hexdigest()) == (BIG, expected.hexdigest())


def test_a_download_left_early_does_not_wedge_the_sandbox(default_sandbox: Sandbox) -> None:
    default_sandbox.files.write("/work/rand.bin", os.urandom(8 * 1024 * 1024))
    stream = default_sandbox.files.read_stream("/work/rand.bin")
    next(stream)
    stream.close()
    assert default_sandbox.commands.run("echo alive").stdout == "alive\n"
    assert len(default_sandbox.files.read("/work/rand.bin")) == 8 * 1024 * 1024
