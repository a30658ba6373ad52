"""Files over HTTP: round trips, listing and management, and a 64 MiB streamed transfer."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx

import pytest

from corral import InvalidArgumentError, NotFoundError, Sandbox
from corral.server.file_urls import FileUrls

from .conftest import Server

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


def test_signed_urls_download_and_upload_without_a_key(
        server: Server, server_dir: Path, default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    sb.files.write("/work/s.txt", "shared")
    down = sb.files.download_url("/work/s.txt", expires_in=120)
    up = sb.files.upload_url("/work/up/new.txt", user="user")
    with httpx.Client(timeout=60) as anyone:
        assert anyone.get(down).content == b"shared"
        answer = anyone.put(up, content=b"uploaded")
        assert answer.status_code == 200, answer.text
        assert sb.files.read("/work/up/new.txt") == b"uploaded"
        assert sb.files.stat("/work/up/new.txt").uid == 1000
        # a URL is for its operation, path and user only, and names nothing else
        assert anyone.put(down, content=b"x").status_code == 401
        assert anyone.get(up).status_code == 401
        for tampered in (down.replace("s.txt", "t.txt"), down + "&mode=4095",
                         up.replace("user=user", "user=root"),
                         down.replace(sb.id, "sbx-0000000000000000")):
            assert anyone.get(tampered).status_code == 401, tampered
        assert anyone.put(up + "&mode=2541", content=b"x").status_code == 401
        # expired: signed as the server signs, a second in the past
        urls = FileUrls(server_dir / "file-url-secret")
        past = int(time.time()) - 1
        query = urlencode({"path": "/work/s.txt", "corral_expires": past,
                           "corral_signature": urls.sign(sb.id, "read", "/work/s.txt", "",
                                                         past)})
        expired = anyone.get(f"{server.url}/v1/sandboxes/{sb.id}/files?{query}")
        assert expired.status_code == 401 and "expired" in expired.text
    assert sb.files.read("/work/up/new.txt") == b"uploaded"  # the refused PUTs wrote nothing
    with pytest.raises(InvalidArgumentError):
        sb.files.download_url("/work/s.txt", expires_in=2 * 24 * 3600)


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
