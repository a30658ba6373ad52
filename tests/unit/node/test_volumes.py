"""Volumes without mounting one: the checks a create's mounts go through, the record that
keeps them, and the file API's confinement, on a plain folder full of hostile links (the
file API needs a descriptor of a root, not a mount). Real volumes: tests/integration and
tests/security, test_volumes.py."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.errors import (AlreadyExistsError, InvalidArgumentError, NotFoundError,
                               SandboxError)
from corral.api.resources import Resources
from corral.node import records, volume_files
from corral.node.volumes import (MAX_SANDBOX_VOLUMES, MAX_SIZE_MIB, MIN_SIZE_MIB, VolumeMount,
                                 check_mount_point, check_mounts, check_size)

pytestmark = pytest.mark.rootless
ID = "vol-0123456789abcdef"


@pytest.mark.parametrize("path", ["/data", "/mnt/a b", "/work/x/y", "/devices", "/tmp",
                                  "/.corralx", "/proc2"])
def test_good_mount_points(path: str) -> None:
    assert check_mount_point(path) == path


@pytest.mark.parametrize("path", ["", "/", "data", "./data", "/a/", "//a", "/a//b", "/a/./b",
                                  "/a/../b", "/proc", "/proc/sys", "/dev/shm", "/sys",
                                  "/.corral", "/.corral/bin", "/.corral-run", "/a\nb",
                                  "/a\0b", "/" + "x" * 256, None, 5, b"/data"])
def test_bad_mount_points(path: object) -> None:
    with pytest.raises(InvalidArgumentError):
        check_mount_point(path)


def test_mounts_are_checked_together() -> None:
    assert check_mounts(None) == () and check_mounts([]) == ()
    ok = [VolumeMount(ID, "/a"), VolumeMount(ID, "/ab", read_only=True)]
    assert check_mounts(ok) == tuple(ok)  # the same volume twice, at two places: fine
    for bad in ([VolumeMount(ID, "/a"), VolumeMount(ID, "/a")],
                [VolumeMount(ID, "/a/b"), VolumeMount(ID, "/a")],
                [VolumeMount(ID, f"/m{i}") for i in range(MAX_SANDBOX_VOLUMES + 1)],
                [VolumeMount("vol-xyz", "/a")], [VolumeMount(ID, "/a", "yes")],  # type: ignore[arg-type]
                [("vol", "/a")], "vol-0123456789abcdef:/a"):
        with pytest.raises(InvalidArgumentError):
            check_mounts(bad)  # type: ignore[arg-type]


def test_sizes() -> None:
    assert check_size(MIN_SIZE_MIB) == MIN_SIZE_MIB and check_size(MAX_SIZE_MIB) == MAX_SIZE_MIB
    for bad in (MIN_SIZE_MIB - 1, MAX_SIZE_MIB + 1, 0, -1, True, 1.5, "16", None):
        with pytest.raises(InvalidArgumentError):
            check_size(bad)


def test_a_record_keeps_the_volumes(tmp_path: Path) -> None:
    folder = tmp_path / "sbx-0123456789abcdef"
    folder.mkdir()
    mounts = (VolumeMount(ID, "/data"), VolumeMount(ID, "/ro", read_only=True))
    record = records.SandboxRecord(
        id=folder.name, image="python", runtime="gvisor", resources=Resources(), env={},
        workdir="/work", metadata={}, created_at=1.0, expires_at=2.0, extra={},
        volumes=mounts)
    records.write(folder, record)
    assert records.read(folder).volumes == mounts
    body = (folder / records.RECORD_NAME).read_text()
    (folder / records.RECORD_NAME).write_text(body.replace('"/ro"', '"/proc/x"'))
    with pytest.raises(ValueError, match="malformed"):
        records.read(folder)
    (folder / records.RECORD_NAME).write_text(body.replace('"volumes": [', '"volumes": [1, '))
    with pytest.raises(ValueError, match="malformed"):
        records.read(folder)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """(a descriptor of a volume-like root, that root, a folder outside it with a secret)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    root = tmp_path / "volume"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "secret").write_text("inside")
    (root / "deep" / "er").mkdir(parents=True)
    for name, target in {"abs": str(outside), "up": "../outside", "slash": "/",
                         "deep/er/climb": "../../../../../../../../../..",
                         "chain": "chain2", "chain2": str(outside / "secret"),
                         "etcabs": "/etc", "loop": "loop", "magic": "/proc/self/root",
                         "fifo-link": "fifo"}.items():
        os.symlink(target, root / name)
    os.mkfifo(root / "fifo")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        yield fd, root, outside
    finally:
        os.close(fd)


def read(fd: int, path: str) -> bytes:
    return b"".join(volume_files.read_stream(fd, "volume", path))


def test_links_resolve_inside_the_root(tree: tuple[int, Path, Path]) -> None:
    fd, root, outside = tree
    assert read(fd, "/etcabs/secret") == b"inside"  # /etc of the volume
    assert read(fd, "/slash/etc/secret") == b"inside"
    assert read(fd, "deep/er/climb/etc/secret") == b"inside"
    assert read(fd, "/../../../etc/secret") == b"inside"
    for escaping in ("/abs/secret", "/up/secret", "/chain", "/magic/etc/passwd"):
        with pytest.raises(NotFoundError):
            read(fd, escaping)
    with pytest.raises(InvalidArgumentError, match="links"):
        read(fd, "/loop")
    for not_regular in ("/fifo", "/fifo-link", "/etc", "/"):
        with pytest.raises(InvalidArgumentError):
            read(fd, not_regular)
    for bad in ("", "a\0b", "/" + "x" * 300, 7):
        with pytest.raises(InvalidArgumentError):
            volume_files.read_stream(fd, "volume", bad)  # type: ignore[arg-type]
    listed = {e.path: e for e in volume_files.list_dir(fd, "volume", "/slash", depth=2)}
    assert "/slash/etc/secret" in listed and listed["/slash/abs"].type == "symlink"
    assert listed["/slash/abs"].target == str(outside)
    assert all(not p.startswith("/slash/abs/") for p in listed)  # links not followed below
    with pytest.raises(NotFoundError):
        volume_files.list_dir(fd, "volume", "/abs")
    with pytest.raises(InvalidArgumentError, match="depth"):
        volume_files.list_dir(fd, "volume", "/", depth=17)
    assert volume_files.stat_path(fd, "volume", "/chain").type == "symlink"
    assert volume_files.stat_path(fd, "volume", "/").name == "/"


def test_writes_and_removals_stay_inside(tree: tuple[int, Path, Path]) -> None:
    fd, root, outside = tree
    for through in ("/abs/planted", "/up/planted"):  # links to a folder outside: dangling
        with pytest.raises(NotFoundError):
            volume_files.write(fd, "volume", through, [b"x"], 0o644)
    assert volume_files.write(fd, "volume", "/slash/etc/planted", [b"ab", b"c"], 0o640) == 3
    assert (root / "etc" / "planted").read_bytes() == b"abc"
    assert stat.S_IMODE((root / "etc" / "planted").stat().st_mode) == 0o640
    # Writing over a link replaces the link; what it named is untouched.
    volume_files.write(fd, "volume", "/chain2", [b"replaced"], 0o644)
    assert not (root / "chain2").is_symlink() and (outside / "secret").read_text() == "host secret"
    assert volume_files.mkdir(fd, "volume", "/etcabs/made/deeper") is True
    assert (root / "etc" / "made" / "deeper").is_dir()
    assert volume_files.mkdir(fd, "volume", "/etc/made") is False
    with pytest.raises(AlreadyExistsError):
        volume_files.mkdir(fd, "volume", "/etc/secret")
    with pytest.raises(SandboxError):
        volume_files.mkdir(fd, "volume", "/abs/made")
    volume_files.remove(fd, "volume", "/slash", recursive=True)  # the link, not the tree
    assert not os.path.lexists(root / "slash") and (root / "etc" / "secret").exists()
    volume_files.remove(fd, "volume", "/abs")
    assert (outside / "secret").exists()
    with pytest.raises(InvalidArgumentError, match="not empty"):
        volume_files.remove(fd, "volume", "/etc")
    volume_files.remove(fd, "volume", "/etcabs/made", recursive=True)
    assert not (root / "etc" / "made").exists()
    with pytest.raises(InvalidArgumentError, match="root"):
        volume_files.remove(fd, "volume", "/", recursive=True)

    # A write that fails midway leaves the old file, and no temporary file.
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise InvalidArgumentError("the client went away")
    with pytest.raises(InvalidArgumentError):
        volume_files.write(fd, "volume", "/etc/secret", broken(), 0o644)
    assert (root / "etc" / "secret").read_text() == "inside"
    assert sorted(os.listdir(root / "etc")) == ["planted", "secret"]
    with pytest.raises(InvalidArgumentError, match="mode"):
        volume_files.write(fd, "volume", "/x", [b""], 0o10000)
    with pytest.raises(InvalidArgumentError, match="bytes"):
        volume_files.write(fd, "volume", "/x", ["text"], 0o644)  # type: ignore[list-item]
    assert (outside / "secret").read_text() == "host secret" and os.listdir(outside) == ["secret"]
