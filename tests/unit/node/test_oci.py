"""Importing OCI archives (:mod:`corral.node.oci`): small ``docker save`` tarballs and OCI
layouts made here with tarfile, imported into a layer store under ``tmp_path``.

Needs root (whiteouts are device nodes, opaque directories ``trusted.*`` attributes), as
the import itself does; no runtime, no network.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from corral.api.errors import InternalError, InvalidArgumentError
from corral.node import oci
from corral.node.images import ImageStore
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

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="importing needs root (whiteouts "
                                "are device nodes)")

BASE = layer_tar([
    directory("etc"), file("etc/os-release", b"ID=test\n"),
    directory("bin"), file("bin/tool", b"#!/bin/sh\n", 0o6755),
    symlink("lib", "usr/lib"), symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
    directory("usr"), directory("usr/lib"), file("usr/lib/a", b"a"), file("usr/lib/b", b"b"),
    hardlink("usr/lib/a-again", "usr/lib/a"),
    directory("home"), directory("home/app", 0o700, uid=1000, gid=1000),
    Entry("dev/null", "chr"), Entry("run-fifo", "fifo"),
])
TOP = layer_tar([
    directory("etc"), file("etc/.wh.os-release"),
    directory("usr"), directory("usr/lib"), file("usr/lib/.wh..wh..opq"),
    file("usr/lib/c", b"c"),
])
SETTINGS: dict[str, object] = {
    "Env": ["PATH=/usr/bin:/bin", "GREETING=hello=world", "BROKEN"],
    "WorkingDir": "/home/app/src", "User": "1000:1000", "Entrypoint": ["/bin/tool"],
    "Cmd": ["--help"], "Labels": {"b": "2", "a": "1"},
}


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "images")


def tree(root: Path) -> dict[str, str]:
    """Every path below ``root`` with its type, mode, owner and contents or target."""
    found = {}
    for directory_, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory_, name)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            what = (os.readlink(path) if stat.S_ISLNK(kind) else path.read_bytes().decode()
                    if stat.S_ISREG(kind) else f"{os.major(info.st_rdev)},"
                    f"{os.minor(info.st_rdev)}" if stat.S_ISCHR(kind) else "")
            found[str(path.relative_to(root))] = (
                f"{stat.filemode(info.st_mode)} {info.st_uid}:{info.st_gid} {what}")
    return found


def opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def test_docker_archive_becomes_layers_and_a_manifest(store: LayerStore,
                                                       tmp_path: Path) -> None:
    manifest = import_archive(store, docker_archive(tmp_path / "a.tar", [BASE, TOP], SETTINGS))

    assert manifest.id.startswith("sha256:") and store.manifest(manifest.id) == manifest
    assert (manifest.base, manifest.base_key) == ("", "")
    assert manifest.env == (("PATH", "/usr/bin:/bin"), ("GREETING", "hello=world"))
    assert (manifest.workdir, manifest.user) == ("/home/app/src", "1000:1000")
    assert (manifest.entrypoint, manifest.cmd) == (("/bin/tool",), ("--help",))
    assert manifest.labels == (("a", "1"), ("b", "2"))
    base_key, top_key, corral_key = manifest.layers
    assert (base_key, top_key) == (layer_key(sha256(BASE)), layer_key(sha256(TOP)))

    base = tree(store.layer_path(base_key))
    assert base["etc/os-release"] == "-rw-r--r-- 0:0 ID=test\n"
    assert base["bin/tool"] == "-rwxr-xr-x 0:0 #!/bin/sh\n"  # setuid and setgid dropped
    assert base["lib"] == "lrwxrwxrwx 0:0 usr/lib"
    assert base["etc/localtime"] == "lrwxrwxrwx 0:0 /usr/share/zoneinfo/UTC"  # kept as is
    assert base["home/app"] == "drwx------ 1000:1000 "
    assert "dev/null" not in base and "run-fifo" not in base  # special files dropped
    a, again = (os.lstat(store.layer_path(base_key) / "usr/lib" / n) for n in ("a", "a-again"))
    assert (a.st_ino, a.st_nlink) == (again.st_ino, 2)
    assert a.st_mtime == 1_700_000_000
    assert os.lstat(store.layer_path(base_key) / "usr").st_mtime == 1_700_000_000

    top = tree(store.layer_path(top_key))
    assert top["etc/os-release"].startswith("c") and top["etc/os-release"].endswith(" 0,0")
    assert opaque(store.layer_path(top_key) / "usr/lib")
    assert not opaque(store.layer_path(top_key) / "usr")
    assert top["usr/lib/c"] == "-rw-r--r-- 0:0 c"

    corral = store.layer_path(corral_key)
    for mount_point in (".corral", ".corral-run", "proc", "dev", "sys"):
        assert (corral / mount_point).is_dir() and opaque(corral / mount_point)
        assert tree(corral)[mount_point] == "drwxr-xr-x 0:0 "
    # The workdir was missing: made, under /home and /home/app as the image has them.
    assert tree(corral)["home/app"] == "drwx------ 1000:1000 "
    assert tree(corral)["home/app/src"] == "drwxr-xr-x 0:0 "
    assert not opaque(corral / "home/app")


def test_an_imported_image_stands_on_its_first_layer(store: LayerStore,
                                                     tmp_path: Path) -> None:
    manifest = import_archive(store, docker_archive(tmp_path / "a.tar", [BASE, TOP], SETTINGS))
    image = ImageStore(tmp_path / "recipes", built=store.root).get(manifest.id)
    paths = [store.layer_path(k) for k in manifest.layers]
    assert image.rootfs == paths[0]
    assert image.layers == (paths[2], paths[1])  # top first
    assert dict(image.env)["GREETING"] == "hello=world"
    assert (image.workdir, image.cmd) == ("/home/app/src", ("--help",))


def test_oci_layout_with_gzip_layers_gives_the_same_image(store: LayerStore,
                                                          tmp_path: Path) -> None:
    docker = import_archive(store, docker_archive(tmp_path / "a.tar", [BASE, TOP], SETTINGS))
    before = {k: os.lstat(store.layer_path(k)).st_ino for k in docker.layers}
    layout = import_archive(store, oci_archive(tmp_path / "b.tar", [BASE, TOP], SETTINGS,
                                               multi_platform=True))
    assert layout.id == docker.id
    assert {k: os.lstat(store.layer_path(k)).st_ino for k in layout.layers} == before


def test_oci_layout_uncompressed_and_by_tag(store: LayerStore, tmp_path: Path) -> None:
    archive = oci_archive(tmp_path / "b.tar", [BASE], SETTINGS, gzip_layers=False, ref="v1")
    manifest = import_archive(store, archive, tag="v1")
    assert manifest.layers[0] == layer_key(sha256(BASE))
    with pytest.raises(InvalidArgumentError, match="no image tagged 'v2'"):
        import_archive(store, archive, tag="v2")


def test_reimport_reuses_layers_without_reading_them(store: LayerStore,
                                                     tmp_path: Path) -> None:
    first = import_archive(store, docker_archive(tmp_path / "a.tar", [BASE, TOP], SETTINGS))
    made = {k: os.lstat(store.layer_path(k)).st_ino for k in first.layers}
    again = import_archive(store, docker_archive(tmp_path / "a.tar", [BASE, TOP], SETTINGS))
    assert again == first
    assert {k: os.lstat(store.layer_path(k)).st_ino for k in again.layers} == made
    # Blobs whose diff_id names a layer already on disk are not even read.
    garbled = docker_archive(tmp_path / "c.tar", [b"not a tar", b"nor this"], SETTINGS,
                             diff_ids=[sha256(BASE), sha256(TOP)])
    assert import_archive(store, garbled).id == first.id
    # Another image on the same base layer shares it.
    other = import_archive(store, docker_archive(tmp_path / "d.tar", [BASE], {"Cmd": ["x"]}))
    assert other.layers[0] == first.layers[0] and other.id != first.id
    assert sorted(os.listdir(store.layers_dir)) == sorted({*first.layers, *other.layers})


def test_a_repeated_layer_gets_a_folder_per_copy(store: LayerStore, tmp_path: Path) -> None:
    """overlayfs refuses one folder twice in a stack; images repeat the empty layer."""
    empty = layer_tar([])
    manifest = import_archive(store, docker_archive(tmp_path / "a.tar", [empty, BASE, empty]))
    first, base, second = manifest.layers[:3]
    assert len({first, base, second}) == 3
    assert (first, second) == (layer_key(sha256(empty)), layer_key(sha256(empty), 1))
    assert os.listdir(store.layer_path(second)) == []


def test_gzip_compressed_archive_and_layers(store: LayerStore, tmp_path: Path) -> None:
    plain = docker_archive(tmp_path / "a.tar", [BASE, TOP], SETTINGS, gzip_layers=True)
    packed = tmp_path / "a.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    manifest = import_archive(store, packed)
    assert manifest.layers[:2] == (layer_key(sha256(BASE)), layer_key(sha256(TOP)))
    assert not [p for p in store.root.iterdir() if p.name not in ("layers", "manifests",
                                                                  "layers.lock")]


def test_workdir_is_normalised_and_checked(store: LayerStore, tmp_path: Path) -> None:
    manifest = import_archive(store, docker_archive(tmp_path / "a.tar", [BASE],
                                                    {"WorkingDir": "srv//x/../app/"}))
    assert manifest.workdir == "/srv/app"
    with pytest.raises(InvalidArgumentError, match="WorkingDir .* longer than 255"):
        import_archive(store, docker_archive(tmp_path / "b.tar", [BASE],
                                             {"WorkingDir": "/" + "x" * 300}))


def test_defaults_and_an_existing_workdir(store: LayerStore, tmp_path: Path) -> None:
    manifest = import_archive(store, docker_archive(tmp_path / "a.tar", [BASE], {}))
    assert (manifest.env, manifest.workdir, manifest.user) == ((), "/", "root")
    assert (manifest.entrypoint, manifest.cmd, manifest.labels) == (None, None, ())
    existing = import_archive(store, docker_archive(tmp_path / "b.tar", [BASE],
                                                    {"WorkingDir": "/home/app"}))
    assert existing.layers[-1] == manifest.layers[-1]  # nothing to make: the same layer
    assert sorted(os.listdir(store.layer_path(manifest.layers[-1]))) == [
        ".corral", ".corral-run", "dev", "proc", "sys"]


def test_workdir_behind_a_link_or_whiteout(store: LayerStore, tmp_path: Path) -> None:
    linked = import_archive(store, docker_archive(tmp_path / "a.tar", [BASE],
                                                  {"WorkingDir": "/lib/work"}))
    assert not (store.layer_path(linked.layers[-1]) / "lib").exists()  # the image's business
    gone = layer_tar([directory("home"), file("home/.wh.app")])
    deleted = import_archive(store, docker_archive(tmp_path / "b.tar", [BASE, gone],
                                                   {"WorkingDir": "/home/app"}))
    assert tree(store.layer_path(deleted.layers[-1]))["home/app"] == "drwxr-xr-x 0:0 "


def test_same_layer_whiteout_and_entries(store: LayerStore, tmp_path: Path) -> None:
    layer = layer_tar([
        file("kept", b"1"), file(".wh.kept"),  # a layer's own entry outlives its whiteout
        file(".wh.redone"), directory("redone"),  # deleted below, then a fresh directory
        file(".wh.file-again"), file("file-again", b"2"),
        directory("aufs"), file("aufs/.wh..wh.plnk"), file(".wh..wh.plnk/123", b"x"),
    ])
    key = import_archive(store, docker_archive(tmp_path / "a.tar", [layer])).layers[0]
    found = tree(store.layer_path(key))
    assert found["kept"].endswith(" 1") and found["file-again"].endswith(" 2")
    assert found["redone"].startswith("d") and opaque(store.layer_path(key) / "redone")
    assert "aufs/.wh..wh.plnk" not in found and ".wh..wh.plnk" not in found


def test_later_members_replace_earlier_ones(store: LayerStore, tmp_path: Path) -> None:
    layer = layer_tar([directory("d"), file("d/x", b"x"), file("d", b"now a file"),
                       symlink("s", "/etc"), directory("s"), file("s/y", b"y"),
                       directory("t"), directory("t/sub"), symlink("t", "s"),
                       directory("u", 0o700), directory("u", 0o750)])
    key = import_archive(store, docker_archive(tmp_path / "a.tar", [layer])).layers[0]
    found = tree(store.layer_path(key))
    assert found["d"].endswith("now a file") and "d/x" not in found
    assert found["s"].startswith("d") and found["s/y"].endswith(" y")
    assert found["t"] == "lrwxrwxrwx 0:0 s" and "t/sub" not in found
    assert found["u"].startswith("drwxr-x---")
    assert os.lstat(store.layer_path(key) / "d").st_mtime == 1_700_000_000


def test_config_checks(store: LayerStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="Entrypoint is not a list"):
        import_archive(store, docker_archive(tmp_path / "a.tar", [BASE],
                                             {"Entrypoint": "/bin/sh"}))
    layer = BASE
    archive = docker_archive(tmp_path / "b.tar", [layer])
    doc = {"architecture": "s390x", "os": "linux",
           "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}
    rewritten = _with_config(archive, tmp_path / "c.tar", doc)
    with pytest.raises(InvalidArgumentError, match="linux/s390x"):
        import_archive(store, rewritten)
    with pytest.raises(InvalidArgumentError, match="lists 2 layers, its manifest 1"):
        import_archive(store, docker_archive(tmp_path / "d.tar", [layer],
                                             diff_ids=[sha256(layer)] * 2))


def test_tags_match_whole(store: LayerStore, tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "a.tar", [BASE], tags=("web:latest",))
    with pytest.raises(InvalidArgumentError, match=r"0 match; name one by tag \(web:latest\)"):
        import_archive(store, archive, tag="web:late")
    assert import_archive(store, archive, tag="web:latest").layers[0] == layer_key(sha256(BASE))
    layout = oci_archive(tmp_path / "b.tar", [BASE], ref="latest")
    with pytest.raises(InvalidArgumentError, match="no image tagged 'late'"):
        import_archive(store, layout, tag="late")


def test_malformed_metadata_is_an_invalid_argument(store: LayerStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="Env is not a list"):
        import_archive(store, docker_archive(tmp_path / "a.tar", [BASE], {"Env": "A=1"}))
    doc = {"os": "linux", "config": ["x"], "rootfs": {"diff_ids": [sha256(BASE)]}}
    with pytest.raises(InvalidArgumentError, match="config is not an object"):
        import_archive(store, _with_config(docker_archive(tmp_path / "b.tar", [BASE]),
                                           tmp_path / "c.tar", doc))
    other: dict[str, object] = {"os": "linux", "rootfs": {"diff_ids": [sha256(BASE)]},
                                "architecture": ["x", 1]}
    with pytest.raises(InvalidArgumentError, match="malformed image metadata|linux/"):
        import_archive(store, _with_config(docker_archive(tmp_path / "d.tar", [BASE]),
                                           tmp_path / "e.tar", other))


def test_layout_tarred_from_its_folder(store: LayerStore, tmp_path: Path) -> None:
    """``tar -C layout -cf x .``: names start with ./, folders are members too."""
    layer = layer_tar([directory("."), directory("./etc"), file("./etc/x", b"x"),
                       file("./.wh.gone")])
    archive = oci_archive(tmp_path / "a.tar", [layer])
    out = tmp_path / "b.tar"
    with tarfile.open(archive) as source, tarfile.open(out, "w") as tar:
        for name in (".", "./blobs", "./blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for member in source:
            data = source.extractfile(member)
            member.name = "./" + member.name
            tar.addfile(member, data)
    key = import_archive(store, out).layers[0]
    assert tree(store.layer_path(key))["etc/x"].endswith(" x")
    assert tree(store.layer_path(key))["gone"].endswith(" 0,0")


def test_not_an_archive(store: LayerStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello" * 1000)
    with pytest.raises(InvalidArgumentError, match="not a tar"):
        import_archive(store, junk)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(InvalidArgumentError, match="neither a docker save tarball"):
        import_archive(store, empty)
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        import_archive(store, tmp_path / "missing.tar")


def test_a_failed_layer_leaves_nothing_half_made(store: LayerStore, tmp_path: Path) -> None:
    bad = layer_tar([file("x", b"x"), file("/abs", b"y")])
    with pytest.raises(InvalidArgumentError, match="absolute path"):
        import_archive(store, docker_archive(tmp_path / "a.tar", [BASE, bad]))
    # the complete layer before it is kept; no staging folder, no manifest
    assert os.listdir(store.layers_dir) == [layer_key(sha256(BASE))]
    assert os.listdir(store.manifests_dir) == []


def test_needs_root(store: LayerStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(InternalError, match="needs root"):
        import_archive(store, docker_archive(tmp_path / "a.tar", [BASE]))


def test_limits_are_the_documented_constants() -> None:
    limits = ImportLimits()
    assert (limits.archive_bytes, limits.layers, limits.entries, limits.unpacked_bytes) == (
        oci.MAX_ARCHIVE_BYTES, oci.MAX_LAYERS, oci.MAX_ENTRIES, oci.MAX_UNPACKED_BYTES)


def _with_config(archive: Path, out: Path, doc: Mapping[str, object]) -> Path:
    """A copy of a docker save tarball with its config replaced by ``doc``."""
    with tarfile.open(archive) as source:
        manifest = json.loads(source.extractfile("manifest.json").read())  # type: ignore[union-attr]
        layers = {n: source.extractfile(n).read() for n in manifest[0]["Layers"]}  # type: ignore[union-attr]
    with tarfile.open(out, "w") as tar:
        for name, data in [*layers.items(), ("config.json", json.dumps(doc).encode()),
                           ("manifest.json", json.dumps([{**manifest[0],
                                                          "Config": "config.json"}]).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out
