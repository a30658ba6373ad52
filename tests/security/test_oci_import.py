"""Hostile image archives (:mod:`corral.node.oci`): each is refused, or neutralised, and
nothing is ever written outside the layer store.

Every archive aims at a sentinel folder planted beside the store (by absolute path, by
``..``, through symlinks and hard links, with whiteouts), or at an absolute path of its
own; after each import the sentinel must be exactly as planted, the target absent, and
the store must hold no staging leftovers and no layer of the hostile archive. Needs root,
as importing does; no sandbox, no network.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError
from corral.node.layers import LayerStore
from corral.node.oci import ImportLimits, import_archive, layer_key
from tests.fakes.oci_archive import (
    Entry,
    directory,
    docker_archive,
    file,
    hardlink,
    layer_tar,
    oci_archive,
    sha256,
    symlink,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="importing needs root")

SMALL = ImportLimits(archive_bytes=8 << 20, archive_members=20, layers=3, entries=100,
                     unpacked_bytes=4 << 20, ratio=20, ratio_floor_bytes=1 << 20)


class Scene:
    """A store, a sentinel folder beside it, and an absolute target no one may create."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = LayerStore(root / "images")
        self.sentinel = root / "sentinel"
        self.sentinel.mkdir()
        (self.sentinel / "file").write_text("planted")
        self.target = Path(f"/tmp/corral-oci-escape-{uuid.uuid4().hex}")
        self.planted = self.snapshot()

    def snapshot(self) -> dict[str, object]:
        found: dict[str, object] = {}
        for path in [self.sentinel, *self.sentinel.rglob("*")]:
            info = os.lstat(path)
            found[str(path)] = (info.st_mode, info.st_uid, info.st_ino, info.st_mtime_ns,
                                path.read_bytes() if path.is_file() else b"",
                                os.listxattr(path, follow_symlinks=False))
        return found

    def archive(self, *layers: bytes, **kw: object) -> Path:
        return docker_archive(self.root / f"{uuid.uuid4().hex}.tar", list(layers),
                              **kw)  # type: ignore[arg-type]

    def refused(self, archive: Path, match: str, limits: ImportLimits = SMALL) -> None:
        with pytest.raises(InvalidArgumentError, match=match):
            import_archive(self.store, archive, limits=limits)
        self.check_intact()
        if self.store.layers_dir.is_dir():
            left = [n for n in os.listdir(self.store.layers_dir) if n.startswith(".new-")]
            assert left == [], f"staging left behind: {left}"
        assert not self.store.manifests(), "a hostile archive got a manifest"

    def imported(self, *entries: Entry) -> Path:
        """Import a layer made of ``entries`` and return its folder (it was neutralised)."""
        layer = layer_tar(list(entries))
        import_archive(self.store, self.archive(layer), limits=SMALL)
        self.check_intact()
        return self.store.layer_path(layer_key(sha256(layer)))

    def check_intact(self) -> None:
        assert self.snapshot() == self.planted, "the sentinel beside the store changed"
        assert not os.path.lexists(self.target), f"{self.target} was created"


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    made = Scene(tmp_path)
    yield made
    if os.path.lexists(made.target):
        os.unlink(made.target)


# -- paths --------------------------------------------------------------------------------


def test_absolute_member(scene: Scene) -> None:
    scene.refused(scene.archive(layer_tar([file(str(scene.target), b"x")])), "absolute path")


@pytest.mark.parametrize("name", ["../sentinel/file", "a/../../x", "./../x", "a/b/../../.."])
def test_dotdot_member(scene: Scene, name: str) -> None:
    scene.refused(scene.archive(layer_tar([directory("a"), file(name, b"pwned")])), r"'\.\.'")


@pytest.mark.parametrize("how", ["absolute", "relative", "root"])
def test_file_through_a_symlink(scene: Scene, how: str) -> None:
    """``a -> /etc`` then ``a/passwd``, aimed at the sentinel (or, from ``/``, at the
    absolute target) so that a failure cannot harm the host."""
    target = {"absolute": str(scene.sentinel), "root": "/",
              "relative": "../" * 20 + str(scene.sentinel).lstrip("/")}[how]
    inside = str(scene.target).lstrip("/") if how == "root" else "pwned"
    layer = layer_tar([symlink("a", target), file(f"a/{inside}", b"pwned")])
    scene.refused(scene.archive(layer), r"not a directory \(links are never followed\)")


def test_file_through_a_symlink_chain(scene: Scene) -> None:
    layer = layer_tar([symlink("b", str(scene.sentinel)), symlink("a", "b"),
                       directory("c"), symlink("c/d", "../a"), file("c/d/pwned", b"x")])
    scene.refused(scene.archive(layer), "never followed")


def test_symlink_then_a_directory_of_its_name_replaces_it(scene: Scene) -> None:
    folder = scene.imported(symlink("a", str(scene.sentinel)), directory("a"),
                            file("a/file", b"inside"))
    assert not (folder / "a").is_symlink() and (folder / "a/file").read_text() == "inside"


def test_symlinks_pointing_out_are_kept_inert(scene: Scene) -> None:
    folder = scene.imported(symlink("abs", str(scene.sentinel / "file")),
                            symlink("rel", "../../../../../../.." + str(scene.sentinel)))
    assert os.readlink(folder / "abs") == str(scene.sentinel / "file")  # resolved in-sandbox


def test_path_too_deep(scene: Scene) -> None:
    scene.refused(scene.archive(layer_tar([file("d/" * 200 + "f", b"")])), "deeper than 128")


def test_name_too_long(scene: Scene) -> None:
    scene.refused(scene.archive(layer_tar([file("x" * 300, b"")])), "longer than 255")


# -- hard links ---------------------------------------------------------------------------


@pytest.mark.parametrize("target, match", [
    ("SENTINEL/file", "absolute path"),
    ("../sentinel/file", r"'\.\.'"),
    ("missing", "earlier file of the same layer"),
    ("d", "earlier file of the same layer"),
    ("l/file", "never followed"),
    ("h", "links to itself"),
])
def test_hard_link_out_or_to_nothing(scene: Scene, target: str, match: str) -> None:
    target = target.replace("SENTINEL", str(scene.sentinel))
    layer = layer_tar([directory("d"), symlink("l", str(scene.sentinel)), hardlink("h", target)])
    scene.refused(scene.archive(layer), match)
    assert os.stat(scene.sentinel / "file").st_nlink == 1


def test_hard_link_through_a_folder_replaced_by_a_symlink(scene: Scene) -> None:
    layer = layer_tar([directory("d"), file("d/file", b"mine"), symlink("d", str(scene.sentinel)),
                       hardlink("h", "d/file")])
    scene.refused(scene.archive(layer), "never followed")
    assert os.stat(scene.sentinel / "file").st_nlink == 1


def test_folder_replaced_by_a_symlink_then_written_through(scene: Scene) -> None:
    """The folder's descriptor kept for later members must not outlive the folder."""
    layer = layer_tar([directory("d"), file("d/a", b"a"), symlink("d", str(scene.sentinel)),
                       file("d/pwned", b"x")])
    scene.refused(scene.archive(layer), "never followed")


def test_hard_link_to_a_symlink_links_the_symlink(scene: Scene) -> None:
    folder = scene.imported(symlink("s", str(scene.sentinel / "file")), hardlink("h", "s"))
    assert os.readlink(folder / "h") == str(scene.sentinel / "file")
    assert os.stat(scene.sentinel / "file").st_nlink == 1


# -- special files, privileges, attributes ------------------------------------------------


def test_devices_and_fifos_are_dropped(scene: Scene) -> None:
    folder = scene.imported(Entry("mem", "chr"), Entry("disk", "blk"), Entry("pipe", "fifo"),
                            file("ok", b"ok"))
    assert sorted(os.listdir(folder)) == ["ok"]


def test_setuid_setgid_and_foreign_owners(scene: Scene) -> None:
    folder = scene.imported(file("suid", b"x", 0o4755), file("sgid", b"x", 0o2755),
                            directory("shared", 0o7777), file("far", b"x", uid=70000, gid=1 << 31))
    assert os.stat(folder / "suid").st_mode & 0o7777 == 0o755
    assert os.stat(folder / "sgid").st_mode & 0o7777 == 0o755
    assert os.stat(folder / "shared").st_mode & 0o7777 == 0o3777  # setgid dir, sticky kept
    assert (os.stat(folder / "far").st_uid, os.stat(folder / "far").st_gid) == (0, 0)


def test_xattrs_from_the_archive_are_not_restored(scene: Scene) -> None:
    pax = {"SCHILY.xattr.trusted.overlay.opaque": "y",
           "SCHILY.xattr.security.capability": "\x01\x00\x00\x02" + "\xff" * 16}
    folder = scene.imported(Entry("d", "dir", mode=0o755, pax=pax),
                            Entry("cap", "file", b"x", pax=pax))
    assert os.listxattr(folder / "d") == [] and os.listxattr(folder / "cap") == []


# -- whiteouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, match", [
    (".wh...", "names no file"),
    (".wh..", "names no file"),
    (".wh.", "names no file"),
    ("d/.wh.x/y", "whiteout as a directory"),
    (".wh..wh..opq", "layer's root opaque"),
])
def test_abused_whiteout_names(scene: Scene, name: str, match: str) -> None:
    scene.refused(scene.archive(layer_tar([directory("d"), file(name)])), match)


def test_whiteouts_must_be_empty_files(scene: Scene) -> None:
    scene.refused(scene.archive(layer_tar([file(".wh.x", b"data")])), "not an empty file")
    scene.refused(scene.archive(layer_tar([symlink(".wh.x", str(scene.sentinel))])),
                  "not an empty file")
    scene.refused(scene.archive(layer_tar([directory("d/.wh..wh..opq")])), "not an empty")


def test_whiteout_through_a_symlink(scene: Scene) -> None:
    for name in ("a/.wh.file", "a/.wh..wh..opq"):
        layer = layer_tar([symlink("a", str(scene.sentinel)), file(name)])
        scene.refused(scene.archive(layer), "never followed")
    assert (scene.sentinel / "file").read_text() == "planted"


def test_whiteouts_outside_the_layer(scene: Scene) -> None:
    scene.refused(scene.archive(layer_tar([file("../.wh.sentinel")])), r"'\.\.'")
    scene.refused(scene.archive(layer_tar([file(f"{scene.sentinel}/.wh.file")])), "absolute")


# -- sizes and counts ---------------------------------------------------------------------


def test_too_many_entries(scene: Scene) -> None:
    layer = layer_tar([file(f"f{n}", b"") for n in range(SMALL.entries + 1)])
    scene.refused(scene.archive(layer), "more than 100 members")


def test_too_many_entries_across_layers(scene: Scene) -> None:
    layers = [layer_tar([file(f"l{k}-{n}", b"") for n in range(60)]) for k in range(2)]
    scene.refused(scene.archive(*layers), "more than 100 members")


def test_too_many_layers(scene: Scene) -> None:
    layers = [layer_tar([file(f"f{n}", b"")]) for n in range(SMALL.layers + 1)]
    scene.refused(scene.archive(*layers), "4 layers; at most 3")


def test_member_cut_short(scene: Scene) -> None:
    layer = layer_tar([Entry("big", "file", b"x" * 100, size=4096)])
    scene.refused(scene.archive(layer[:1024]), "unexpected end of data|cut short")


def test_member_longer_than_its_header(scene: Scene) -> None:
    layer = layer_tar([Entry("small", "file", b"A" * 2048, size=10), file("next", b"n")])
    scene.refused(scene.archive(layer), "bad tar header|not a valid")


def test_member_declaring_a_huge_size(scene: Scene) -> None:
    layer = layer_tar([Entry("huge", "file", b"", pax={"size": str(1 << 40)})])
    scene.refused(scene.archive(layer), "declares 1099511627776 bytes")


def test_huge_extension_header(scene: Scene) -> None:
    layer = layer_tar([Entry("p", "file", b"", pax={"comment": "x" * (2 << 20)})])
    scene.refused(scene.archive(layer), "extension header", ImportLimits())


def test_unpacked_bytes_bound(scene: Scene) -> None:
    layer = layer_tar([file("a", os.urandom(3 << 20)), file("b", os.urandom(2 << 20))])
    scene.refused(scene.archive(layer), "unpack to more than 4194304 bytes",
                  ImportLimits(unpacked_bytes=4 << 20))


def test_decompression_bomb(scene: Scene) -> None:
    layer = layer_tar([file("zeros", bytes(3 << 20))])
    scene.refused(scene.archive(layer, gzip_layers=True), "decompression bomb")


def test_compressed_archive_bomb(scene: Scene) -> None:
    plain = scene.archive(layer_tar([file("zeros", bytes(9 << 20))]))
    packed = scene.root / "bomb.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    scene.refused(packed, "decompresses to more than", ImportLimits(archive_bytes=8 << 20))


def test_archive_too_large(scene: Scene) -> None:
    archive = scene.archive(layer_tar([file("x", os.urandom(1 << 20))]))
    scene.refused(archive, "at most 65536 bytes", ImportLimits(archive_bytes=1 << 16))


# -- the archive around the layers --------------------------------------------------------


def test_lying_diff_id(scene: Scene) -> None:
    honest = layer_tar([file("x", b"honest")])
    forged = layer_tar([file("x", b"forged")])
    scene.refused(scene.archive(forged, diff_ids=[sha256(honest)]), "does not match its diff_id")
    assert not scene.store.has_layer(layer_key(sha256(honest)))


def test_lying_blob_digest(scene: Scene) -> None:
    archive = oci_archive(scene.root / "a.tar", [layer_tar([file("x", b"x")])])
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    out = scene.root / "b.tar"
    with tarfile.open(out, "w") as tar:
        for member, data in members:
            if member.name.startswith("blobs/") and data[:2] == b"\x1f\x8b":
                data = gzip.compress(gzip.decompress(data), compresslevel=1, mtime=1)
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    scene.refused(out, "has .* bytes, its descriptor says|does not match its digest")


def _outer(scene: Scene, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    path = scene.root / f"{uuid.uuid4().hex}.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _docker_members(layer_name: str, layer: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    config = {"os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}
    manifest = [{"Config": "c.json", "Layers": [layer_name]}]
    return [(tarfile.TarInfo("c.json"), json.dumps(config).encode()),
            (tarfile.TarInfo("manifest.json"), json.dumps(manifest).encode())]


def test_archive_layer_paths_leaving_the_archive(scene: Scene) -> None:
    layer = layer_tar([file("x", b"x")])
    for name in ("../layer.tar", str(scene.sentinel / "file")):
        scene.refused(_outer(scene, _docker_members(name, layer)), r"'\.\.'|absolute path")


def test_archive_symlink_members(scene: Scene) -> None:
    layer = layer_tar([file("x", b"x")])
    outside = tarfile.TarInfo("l.tar")
    outside.type, outside.linkname = tarfile.SYMTYPE, str(scene.sentinel / "file")
    scene.refused(_outer(scene, [(outside, b""), *_docker_members("l.tar", layer)]),
                  "absolute symlink")
    up = tarfile.TarInfo("d/l.tar")
    up.type, up.linkname = tarfile.SYMTYPE, "../../x.tar"
    scene.refused(_outer(scene, [(up, b""), *_docker_members("d/l.tar", layer)]), r"'\.\.'")
    loop = tarfile.TarInfo("loop.tar")
    loop.type, loop.linkname = tarfile.SYMTYPE, "loop.tar"
    scene.refused(_outer(scene, [(loop, b""), *_docker_members("loop.tar", layer)]),
                  "too many symlinks")


def test_archive_absolute_and_duplicate_members(scene: Scene) -> None:
    layer = layer_tar([file("x", b"x")])
    real = tarfile.TarInfo("layer.tar")
    scene.refused(_outer(scene, [(tarfile.TarInfo(str(scene.target)), b"x"), (real, layer),
                                 *_docker_members("layer.tar", layer)]), "absolute path")
    scene.refused(_outer(scene, [(real, layer), (tarfile.TarInfo("layer.tar"), b"other"),
                                 *_docker_members("layer.tar", layer)]), "appears twice")


def test_archive_with_too_many_members(scene: Scene) -> None:
    layer = layer_tar([file("x", b"x")])
    junk = [(tarfile.TarInfo(f"junk{n}"), b"") for n in range(SMALL.archive_members)]
    scene.refused(_outer(scene, [*junk, (tarfile.TarInfo("layer.tar"), layer),
                                 *_docker_members("layer.tar", layer)]), "more than 20 members")


def test_huge_json(scene: Scene) -> None:
    members = _docker_members("layer.tar", layer_tar([]))
    members[0] = (tarfile.TarInfo("c.json"), b" " * (5 << 20))
    scene.refused(_outer(scene, members), "expected at most")
