"""Tests for corral.node.layers: neutralising a copied layer, manifest ids, the store's
manifests and its prune.

The neutralise tests build a hostile tree by hand and need root (device nodes, ownership,
``trusted.*`` attributes); the rest run as anyone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.errors import InternalError, InvalidArgumentError, NotFoundError
from corral.node.layers import LayerStore, Manifest, is_image_id, neutralise

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: device nodes, "
                                "ownership and trusted.* attributes")

BASE = 100_000  # a namespaces sandbox's host uid range: 100000 .. 165535
#: A valid (revision 2) file capability: cap_net_raw, effective.
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def _manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = dict(base="python", base_key="0123456789abcdef",
                                     layers=("a" * 64, "b" * 64),
                                     env=(("PATH", "/usr/bin"), ("A", "1")), workdir="/work",
                                     user="root", entrypoint=None, cmd=("python3",),
                                     labels=(("k", "v"),))
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


# -- neutralise --------------------------------------------------------------------------------

@dataclasses.dataclass
class Outside:
    """What the tree's links point at, outside it: must come out untouched."""

    file: Path
    folder: Path
    device: Path


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    folder = tmp_path / "outside"
    folder.mkdir()
    target = folder / "secret"
    target.write_text("host file\n")
    os.chown(target, BASE + 7, BASE + 7)
    os.chmod(target, 0o4755)
    os.setxattr(target, "trusted.foo", b"host")
    device = folder / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return Outside(target, folder, device)


def _hostile_tree(root: Path, outside: Outside, uid_base: int) -> None:
    """A copied upper layer as a hostile step could leave it, owned from ``uid_base``."""
    root.mkdir()
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))
    os.mknod(root / "dev" / "sda", stat.S_IFBLK | 0o666, os.makedev(8, 0))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(root / "dev" / "sock"))
    os.mknod(root / "deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a whiteout
    for name, mode in (("suid", 0o4755), ("sgid", 0o2755), ("both", 0o6711)):
        (root / name).write_bytes(b"#!/bin/sh\n")
        os.chmod(root / name, mode)
    (root / "capped").write_bytes(b"\x7fELF")
    os.setxattr(root / "capped", "security.capability", CAPABILITY)
    os.setxattr(root / "capped", "trusted.foo", b"1")
    os.setxattr(root / "capped", "user.note", b"kept")
    (root / "opaque").mkdir()
    os.setxattr(root / "opaque", "trusted.overlay.opaque", b"y")
    (root / "opaque" / "inside").write_text("x")
    (root / "shared").mkdir(mode=0o2775)  # setgid on a folder: group inheritance, kept
    os.chmod(root / "shared", 0o2775)
    os.symlink(outside.file, root / "escape")
    os.symlink(outside.folder, root / "escape-dir")
    os.setxattr(root / "escape", "trusted.overlay.redirect", b"/x", follow_symlinks=False)
    (root / "home" / "user").mkdir(parents=True)
    (root / "home" / "user" / "mine").write_text("mine")
    (root / "high").write_text("top of the range")
    (root / "stranger").write_text("outside the range")
    (root / "beyond").write_text("just past the range")
    (root / "linked").write_text("a hard link, counted once")
    os.link(root / "linked", root / "home" / "linked")
    owners = {"": 0, "dev": 0, "deleted": 0, "suid": 0, "sgid": 0, "both": 0, "capped": 0,
              "opaque": 0, "opaque/inside": 0, "shared": 0, "escape": 1000, "escape-dir": 0,
              "home": 0, "home/user": 1000, "home/user/mine": 1000, "high": 65535,
              "linked": 0}
    for name, uid in owners.items():
        os.lchown(root / name, uid_base + uid, uid_base + uid)
    os.lchown(root / "stranger", 5 if uid_base else 70_000, 5 if uid_base else 70_000)
    os.lchown(root / "beyond", uid_base + 65536, uid_base + 65536)


@needs_root
@pytest.mark.parametrize("uid_base", [BASE, 0], ids=["namespaces", "gvisor"])
def test_neutralise_a_hostile_tree(tmp_path: Path, outside: Outside, uid_base: int) -> None:
    tree = tmp_path / "diff"
    _hostile_tree(tree, outside, uid_base)
    before_outside = [os.lstat(p) for p in (outside.file, outside.folder, outside.device)]

    size = neutralise(tree, uid_base)

    # Devices and sockets are gone; a whiteout (char 0/0) stays, or deletions would be lost.
    assert sorted(os.listdir(tree / "dev")) == []
    deleted = os.lstat(tree / "deleted")
    assert stat.S_ISCHR(deleted.st_mode) and deleted.st_rdev == 0
    # No setuid or setgid file; the permission bits stay; a setgid folder stays one.
    for name, mode in (("suid", 0o755), ("sgid", 0o755), ("both", 0o711)):
        assert stat.S_IMODE(os.lstat(tree / name).st_mode) == mode, name
    assert stat.S_IMODE(os.lstat(tree / "shared").st_mode) == 0o2775
    # Capabilities and trusted.* go, but an opaque folder's marker and user.* attributes.
    assert os.listxattr(tree / "capped") == ["user.note"]
    assert os.getxattr(tree / "opaque", "trusted.overlay.opaque") == b"y"
    assert os.listxattr(tree / "escape", follow_symlinks=False) == []
    # Ownership: shifted back into 0..65535; anything from outside the range is root's.
    expected = {"": 0, "home/user": 1000, "home/user/mine": 1000, "high": 65535,
                "escape": 1000, "stranger": 0, "beyond": 0, "opaque/inside": 0,
                "deleted": 0}
    for name, uid in expected.items():
        info = os.lstat(tree / name)
        assert (info.st_uid, info.st_gid) == (uid, uid), name
    # Links stay links and were never followed: what they point at is as it was.
    assert os.readlink(tree / "escape") == str(outside.file)
    assert os.readlink(tree / "escape-dir") == str(outside.folder)
    after_outside = [os.lstat(p) for p in (outside.file, outside.folder, outside.device)]
    for before, after in zip(before_outside, after_outside, strict=True):
        assert (after.st_mode, after.st_uid, after.st_gid) == (
            before.st_mode, before.st_uid, before.st_gid)
    assert os.getxattr(outside.file, "trusted.foo") == b"host"
    assert outside.device.exists()
    # The size counts what is left, a hard link once.
    assert size > 0
    assert os.lstat(tree / "linked").st_nlink == 2


@needs_root
def test_neutralise_counts_what_is_left(tmp_path: Path) -> None:
    tree = tmp_path / "diff"
    tree.mkdir()
    (tree / "big").write_bytes(b"x" * 1_000_000)
    os.link(tree / "big", tree / "again")
    os.mknod(tree / "mem", stat.S_IFCHR | 0o600, os.makedev(1, 1))
    size = neutralise(tree, 0)
    assert 1_000_000 <= size < 1_100_000  # the file once, its link not again


# -- manifests ---------------------------------------------------------------------------------

def test_manifest_id_is_its_content() -> None:
    one = _manifest()
    assert is_image_id(one.id)
    assert _manifest().id == one.id
    # What only describes the image does not name it.
    described = _manifest(steps=("RUN x",), created_at="2026-01-01T00:00:00+00:00",
                          size_bytes=12345)
    assert described.id == one.id
    # What shapes its sandboxes does.
    for change in ({"env": (("PATH", "/usr/bin"), ("A", "2"))}, {"workdir": "/app"},
                   {"user": "user"}, {"cmd": None}, {"entrypoint": ("sh",)},
                   {"layers": ("a" * 64,)}, {"layers": ("b" * 64, "a" * 64)},
                   {"base_key": "f" * 16}, {"labels": ()}):
        assert _manifest(**change).id != one.id, change


def test_manifest_round_trips_through_json() -> None:
    one = _manifest(steps=("RUN x",), created_at="now", size_bytes=3)
    doc = json.loads(json.dumps(one.to_json()))
    assert doc["id"] == one.id
    again = Manifest.from_json(doc)
    assert again == one and again.id == one.id
    assert (again.steps, again.created_at, again.size_bytes) == (("RUN x",), "now", 3)


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "built")


def _layer(store: LayerStore, key: str, content: str = "x") -> Path:
    with store.new_layer(key, {"step": "RUN test"}, 0) as where:
        diff = where()
        diff.mkdir()
        (diff / "file").write_text(content)
    return store.layer_path(key)


def test_manifest_of_a_bad_or_unknown_id(store: LayerStore) -> None:
    for bad in ("python", "sha256:", "sha256:" + "A" * 64, "sha256:" + "0" * 63,
                "sha256:../../etc/passwd" + "0" * 41, "0" * 64):
        with pytest.raises(InvalidArgumentError):
            store.manifest(bad)
    with pytest.raises(NotFoundError):
        store.manifest("sha256:" + "0" * 64)


def test_a_corrupt_manifest_is_an_internal_error(store: LayerStore) -> None:
    _layer(store, "a" * 64)
    good = store.save(_manifest(layers=("a" * 64,)))
    path = store.manifests_dir / f"{good.id[7:]}.json"
    doc = json.loads(path.read_text())
    for content in ("{not json", "[]", json.dumps({**doc, "layers": ["../../x"]}),
                    json.dumps({k: v for k, v in doc.items() if k != "env"})):
        path.write_text(content)
        with pytest.raises(InternalError):
            store.manifest(good.id)
        assert store.manifests() == []


def test_save_is_idempotent_and_checks_its_layers(store: LayerStore) -> None:
    with pytest.raises(InternalError):
        store.save(_manifest(layers=("c" * 64,)))
    _layer(store, "a" * 64, "content")
    first = store.save(_manifest(layers=("a" * 64,), steps=("RUN a",)))
    assert first.size_bytes == store.layer_size("a" * 64) > 0
    assert first.created_at
    again = store.save(_manifest(layers=("a" * 64,)))
    assert again == first and again.created_at == first.created_at
    assert [m.id for m in store.manifests()] == [first.id]


# -- layers and prune --------------------------------------------------------------------------

def test_new_layer_publishes_once(store: LayerStore) -> None:
    key = "d" * 64
    _layer(store, key, "first")
    _layer(store, key, "second")  # a second build of the same key: the first one won
    assert store.has_layer(key)
    assert (store.layer_path(key) / "file").read_text() == "first"
    assert os.listdir(store.layers_dir) == [key]
    meta = json.loads((store.layers_dir / key / "layer.json").read_text())
    assert meta["key"] == key and meta["step"] == "RUN test"


def test_a_failed_layer_leaves_nothing(store: LayerStore) -> None:
    with pytest.raises(RuntimeError), store.new_layer("e" * 64, {}, 0) as where:
        where().mkdir()
        raise RuntimeError("the copy failed")
    assert not store.has_layer("e" * 64)
    assert os.listdir(store.layers_dir) == []


def test_layer_keys_are_checked(store: LayerStore) -> None:
    for bad in ("", "../x", "a" * 63, "A" * 64, "a" * 64 + "/.."):
        with pytest.raises(InvalidArgumentError):
            store.layer_path(bad)
        with pytest.raises(InvalidArgumentError), store.new_layer(bad, {}, 0):
            pass


def test_prune_keeps_what_it_is_told_and_removes_leftovers(store: LayerStore) -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    for key in (a, b, c):
        _layer(store, key)
    kept = store.save(_manifest(layers=(a, b)))
    dropped = store.save(_manifest(layers=(a, c), workdir="/other"))
    # A crashed build's staging folder, a crashed save's temporary file, a stray file.
    leftover = store.layers_dir / f".new-{'f' * 64}-0badc0de"
    (leftover / "diff" / "deep").mkdir(parents=True)
    (leftover / "diff" / "deep" / "file").write_text("half copied")
    (store.manifests_dir / f"{'9' * 64}.tmp-1234").write_text("{")
    (store.manifests_dir / "stray.json").write_text("{}")

    result = store.prune({kept.id})

    assert result.images == 1 and result.layers == 1 and result.bytes_freed > 0
    assert sorted(os.listdir(store.layers_dir)) == [a, b]
    assert os.listdir(store.manifests_dir) == [f"{kept.id[7:]}.json"]
    assert store.manifest(kept.id) == kept
    with pytest.raises(NotFoundError):
        store.manifest(dropped.id)

    result = store.prune(set())
    assert (result.images, result.layers) == (1, 2)
    assert os.listdir(store.layers_dir) == os.listdir(store.manifests_dir) == []


def test_prune_removes_a_corrupt_manifest(store: LayerStore) -> None:
    _layer(store, "a" * 64)
    image = store.save(_manifest(layers=("a" * 64,)))
    path = store.manifests_dir / f"{image.id[7:]}.json"
    path.write_text(json.dumps({"layers": ["not a key"]}))
    assert store.prune(set()).images == 1
    assert not path.exists() and not store.has_layer("a" * 64)


def test_prune_of_an_empty_store(store: LayerStore) -> None:
    result = store.prune({"sha256:" + "0" * 64})
    assert (result.images, result.layers, result.bytes_freed) == (0, 0, 0)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own: a data dir that is not on the host's root filesystem."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@needs_root
@pytest.mark.parametrize("on_tmpfs", [False, True], ids=["root-fs", "own-fs"])
def test_prune_keeps_a_mounted_layer(tmp_path: Path, tmpfs: Path, on_tmpfs: bool) -> None:
    """A layer bound somewhere (as the namespaces runtime binds each lower) is in use,
    wherever the store lives: mountinfo names a bind by its path inside its filesystem."""
    store = LayerStore((tmpfs if on_tmpfs else tmp_path) / "built")
    used, unused = "a" * 64, "b" * 64
    _layer(store, used)
    _layer(store, unused)
    target = tmp_path / "lower"
    target.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(store.layer_path(used)), str(target)],
                   check=True)
    try:
        result = store.prune(set())
        assert result.layers == 1
        assert store.has_layer(used) and not store.has_layer(unused)
        assert (target / "file").read_text() == "x"
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert store.prune(set()).layers == 1
    assert os.listdir(store.layers_dir) == []
