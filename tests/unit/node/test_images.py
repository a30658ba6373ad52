"""Tests for corral.node.images: names, cache keys, customization, and real mmdebstrap builds.

The build tests run mmdebstrap for real (root, network to deb.debian.org): one successful
``minimal`` build shared by the module, and one build that fails on a missing package.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.errors import InternalError, InvalidArgumentError, NotFoundError
from corral.node.images import (
    BUILTIN_IMAGES,
    Image,
    ImageRecipe,
    ImageStore,
    customize_rootfs,
    mmdebstrap_argv,
)

BAD_NAMES = ["", "Python", "../etc", "a/b", "-x", ".x", "_x", "a" * 65, "py thon", "x\n", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_rejected(tmp_path: Path, name: str) -> None:
    store = ImageStore(tmp_path)
    for call in (store.get, store.ensure, store.remove):
        with pytest.raises(InvalidArgumentError):
            call(name)
    assert list(tmp_path.iterdir()) == []


def test_unknown_image(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        ImageStore(tmp_path).get("nope")
    assert info.value.message == ("unknown image 'nope'; known images: python, minimal, "
                                  "code-interpreter")
    with pytest.raises(NotFoundError):
        ImageStore(tmp_path).ensure("nope")


def test_get_never_builds(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(NotFoundError, match="corral image build python"):
        store.get("python")
    assert not (tmp_path / "images").exists()
    assert store.list() == []
    with pytest.raises(NotFoundError):
        store.remove("python")


def test_builtin_recipes() -> None:
    python = BUILTIN_IMAGES["python"]
    # What E2B's ``base`` template offers, besides Python's own.
    assert {"python3", "python3-numpy", "python3-ipykernel", "git", "curl", "sudo",
            "python-is-python3"} <= set(python.packages)
    assert len(python.packages) == 27
    assert python.mirror == "http://deb.debian.org/debian"
    assert (python.suite, python.variant, python.workdir) == ("bookworm", "minbase", "/work")
    assert ("LANG", "C.UTF-8") in python.env
    assert BUILTIN_IMAGES["minimal"].variant == "minbase"


def test_cache_key_is_stable() -> None:
    recipe = ImageRecipe(name="t", packages=("procps", "less"))
    key = recipe.cache_key()
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == ImageRecipe(name="t", packages=("procps", "less")).cache_key()
    # Order, duplicates and runtime-only fields (name, env, user) do not change the rootfs.
    same = dataclasses.replace(
        recipe, name="u", packages=("less", "procps", "less"), env=(("A", "b"),), user="user"
    )
    assert same.cache_key() == key
    # Golden value: if this changes, existing caches are invalidated (bump RECIPE_FORMAT).
    assert ImageRecipe(name="minimal", packages=("procps",)).cache_key() == "c8e0e94917e687cc"


@pytest.mark.parametrize(
    "change",
    [
        {"packages": ("procps", "git")},
        {"packages": ("procps-ng",)},
        {"suite": "trixie"},
        {"mirror": "http://ftp.de.debian.org/debian"},
        {"variant": "apt"},
        {"workdir": "/home/user/work"},
    ],
)
def test_cache_key_changes_with_rootfs_fields(change: dict[str, object]) -> None:
    recipe = ImageRecipe(name="t", packages=("procps",))
    assert dataclasses.replace(recipe, **change).cache_key() != recipe.cache_key()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"packages": ("--foo",)},
        {"packages": ("a,b",)},
        {"mirror": "file:///etc"},
        {"mirror": "-http://x"},
        {"suite": "--x"},
        {"variant": "huge"},
        {"workdir": "work"},
        {"workdir": "/"},
        {"workdir": "/a/../b"},
        {"user": "nobody"},
        {"name": "A"},
    ],
)
def test_recipe_validation(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        ImageRecipe(**{"name": "t", **bad})  # type: ignore[arg-type]


def test_mmdebstrap_argv_has_explicit_mirror(tmp_path: Path) -> None:
    argv = mmdebstrap_argv(BUILTIN_IMAGES["python"], tmp_path / "rootfs")
    assert argv[:4] == ["mmdebstrap", "--mode=root", "--format=directory", "--variant=minbase"]
    assert argv[4].startswith("--include=python3,python3-pip,")
    assert argv[4].endswith(",git,curl,sudo,python-is-python3")
    assert argv[-3:] == ["bookworm", str(tmp_path / "rootfs"), "http://deb.debian.org/debian"]
    assert not any(a.startswith("--include") for a in mmdebstrap_argv(ImageRecipe("t"), tmp_path))


def _fake_tree(tree: Path) -> None:
    """The handful of files customize_rootfs touches, laid out like a merged-/usr Debian."""
    for d in ("etc/skel", "usr/bin", "home", "var/lib/apt/lists/partial", "var/cache/apt"):
        (tree / d).mkdir(parents=True)
    (tree / "bin").symlink_to("usr/bin")
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tree / "etc/group").write_text("root:x:0:")  # no final newline
    (tree / "etc/shadow").write_text("root:*:20000:0:99999:7:::\n")
    (tree / "etc/skel/.bashrc").write_text("# bashrc\n")
    (tree / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    (tree / "etc/hostname").write_text("buildhost\n")
    (tree / "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease").write_text("x")
    (tree / "var/lib/apt/lists/lock").write_text("")
    (tree / "var/cache/apt/pkgcache.bin").write_text("x")


@pytest.mark.skipif(os.geteuid() != 0, reason="hands the home to uid 1000: needs root")
def test_customize_rootfs_on_fake_tree(tmp_path: Path) -> None:
    tree = tmp_path / "rootfs"
    _fake_tree(tree)
    customize_rootfs(tree, ImageRecipe(name="t"))
    assert (tree / "etc/passwd").read_text().splitlines()[-1] == (
        "user:x:1000:1000:sandbox user:/home/user:/bin/bash"
    )
    assert (tree / "etc/group").read_text() == "root:x:0:\nuser:x:1000:\n"
    assert (tree / "etc/shadow").read_text().splitlines()[-1].startswith("user:!:")
    assert not (tree / "etc/gshadow").exists()
    assert not (tree / "etc/resolv.conf").is_symlink()
    assert (tree / "etc/resolv.conf").read_text() == ""
    assert (tree / "etc/hostname").read_text() == "sandbox\n"
    assert "127.0.0.1 localhost sandbox" in (tree / "etc/hosts").read_text()
    home = (tree / "home/user").lstat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o750)
    assert (tree / "home/user/.bashrc").read_text() == "# bashrc\n"
    assert stat.S_IMODE((tree / "work").stat().st_mode) == 0o1777
    assert stat.S_IMODE((tree / ".corral").stat().st_mode) == 0o755
    assert sorted(os.listdir(tree / "var/lib/apt/lists")) == ["lock", "partial"]
    assert os.listdir(tree / "var/cache/apt") == []
    assert not (tree / "etc/sudoers.d/user").exists()  # no sudo in this tree


def test_customize_rootfs_lets_user_sudo_where_sudo_is(tmp_path: Path) -> None:
    tree = tmp_path / "rootfs"
    _fake_tree(tree)
    (tree / "etc/sudoers.d").mkdir()
    customize_rootfs(tree, ImageRecipe(name="t"))
    rule = tree / "etc/sudoers.d/user"
    assert rule.read_text() == "user ALL=(ALL:ALL) NOPASSWD: ALL\n"
    assert stat.S_IMODE(rule.stat().st_mode) == 0o440


def test_customize_rootfs_refuses_to_leave_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "host-etc"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    tree = tmp_path / "rootfs"
    tree.mkdir()
    (tree / "etc").symlink_to(outside)
    with pytest.raises(InternalError, match="outside the image tree"):
        customize_rootfs(tree, ImageRecipe(name="t"))
    assert os.listdir(outside) == ["passwd"]
    assert (outside / "passwd").read_text() == "root:x:0:0:root:/root:/bin/bash\n"

    tree2 = tmp_path / "rootfs2"
    _fake_tree(tree2)
    (tree2 / "work").symlink_to(outside)  # a symlinked workdir would be chmod-ed through
    with pytest.raises(InternalError, match="symlink"):
        customize_rootfs(tree2, ImageRecipe(name="t"))
    assert stat.S_IMODE(outside.stat().st_mode) != 0o1777


def test_corrupt_image_json(tmp_path: Path) -> None:
    key = BUILTIN_IMAGES["minimal"].cache_key()
    (tmp_path / f"minimal-{key}").mkdir()
    (tmp_path / f"minimal-{key}/image.json").write_text("{not json")
    with pytest.raises(InternalError, match="corrupt image"):
        ImageStore(tmp_path).get("minimal")


def test_missing_mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("corral.node.images.shutil.which", lambda name: None)
    with pytest.raises(InternalError, match="apt-get install mmdebstrap"):
        ImageStore(tmp_path).ensure("minimal")
    assert [p.name for p in tmp_path.iterdir()] == [
        f"minimal-{BUILTIN_IMAGES['minimal'].cache_key()}.lock"
    ]


# -- real builds -------------------------------------------------------------------------


@dataclasses.dataclass
class Built:
    store: ImageStore
    image: Image
    lines: list[str]
    seconds: float
    stale: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if os.geteuid() != 0:
        pytest.skip("building an image (mmdebstrap --mode=root) needs root")
    root = tmp_path_factory.mktemp("store") / "images"
    root.mkdir()
    key = BUILTIN_IMAGES["minimal"].cache_key()
    stale = root / f".build-{key}-crashed"  # left behind by a build that died
    (stale / "rootfs/etc").mkdir(parents=True)
    store = ImageStore(root)
    lines: list[str] = []
    start = time.monotonic()
    image = store.ensure("minimal", progress=lines.append)
    yield Built(store, image, lines, time.monotonic() - start, stale)


def test_build_minimal(built: Built) -> None:
    image, root = built.image, built.store.root
    print(f"minimal build took {built.seconds:.1f} s")
    key = BUILTIN_IMAGES["minimal"].cache_key()
    assert (image.name, image.key, image.workdir, image.user) == ("minimal", key, "/work", "root")
    assert image.rootfs == root / f"minimal-{key}" / "rootfs"
    assert any(line.startswith("I: ") for line in built.lines)
    assert built.lines[-1] == f"I: image minimal ({key}) is ready"
    assert not built.stale.exists()
    assert sorted(p.name for p in root.iterdir()) == [f"minimal-{key}", f"minimal-{key}.lock"]

    rootfs = image.rootfs
    assert os.access(rootfs / "bin/sh", os.X_OK)
    assert (rootfs / "usr/bin/ps").exists()  # procps
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert "user:x:1000:1000:sandbox user:/home/user:/bin/bash" in passwd
    assert "user:x:1000:" in (rootfs / "etc/group").read_text().splitlines()
    assert any(line.startswith("user:!:") for line in (rootfs / "etc/shadow").read_text().split())
    assert "user:!::" in (rootfs / "etc/gshadow").read_text().splitlines()
    corral = (rootfs / ".corral").lstat()
    assert stat.S_ISDIR(corral.st_mode) and stat.S_IMODE(corral.st_mode) == 0o755
    assert os.listdir(rootfs / ".corral") == []
    work = (rootfs / "work").lstat()
    assert stat.S_ISDIR(work.st_mode) and stat.S_IMODE(work.st_mode) == 0o1777
    assert (work.st_uid, work.st_gid) == (0, 0)
    home = (rootfs / "home/user").lstat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o750)
    resolv = rootfs / "etc/resolv.conf"
    assert not resolv.is_symlink() and resolv.read_text() == ""
    assert (rootfs / "etc/hostname").read_text() == "sandbox\n"
    assert (rootfs / "etc/hosts").read_text() == "127.0.0.1 localhost sandbox\n::1 localhost\n"
    assert sorted(os.listdir(rootfs / "var/lib/apt/lists")) == ["lock", "partial"]
    assert not list((rootfs / "var/cache/apt").glob("*.bin"))
    assert "deb.debian.org" in (rootfs / "etc/apt/sources.list").read_text()
    assert os.listdir(rootfs / "etc/apt/sources.list.d") == []  # nothing from the host

    meta = json.loads((rootfs.parent / "image.json").read_text())
    assert (meta["name"], meta["key"], meta["recipe_format"]) == ("minimal", key, 1)
    assert meta["recipe"]["packages"] == ["procps"]
    assert meta["recipe"]["mirror"] == "http://deb.debian.org/debian"
    assert meta["size_bytes"] == image.size_bytes
    assert 50_000_000 < image.size_bytes < 500_000_000
    assert meta["built_at"].endswith("+00:00")


def test_second_ensure_does_not_rebuild(built: Built) -> None:
    json_path = built.image.rootfs.parent / "image.json"
    before = json_path.stat().st_mtime_ns
    lines: list[str] = []
    assert built.store.ensure("minimal", progress=lines.append) == built.image
    assert lines == []
    assert json_path.stat().st_mtime_ns == before
    assert ImageStore(built.store.root).get("minimal") == built.image  # a fresh store sees it
    assert built.store.list() == [built.image]


def test_remove(built: Built) -> None:  # last: it deletes the shared build
    built.store.remove("minimal")
    with pytest.raises(NotFoundError, match="corral image build minimal"):
        built.store.get("minimal")
    assert [p.name for p in built.store.root.iterdir() if not p.name.endswith(".lock")] == []
    assert built.store.list() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap --mode=root needs root")
def test_failed_build_cleans_up_and_waits_for_the_lock(tmp_path: Path) -> None:
    recipe = ImageRecipe(name="broken", packages=("corral-no-such-package",))
    store = ImageStore(tmp_path, recipes={"broken": recipe})
    lock = tmp_path / f"broken-{recipe.cache_key()}.lock"
    lines: list[str] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            store.ensure("broken", progress=lines.append)
        except BaseException as e:  # noqa: B036 -- handed to the main thread
            errors.append(e)

    with open(lock, "w") as held:  # another "process" is building the same image
        fcntl.flock(held, fcntl.LOCK_EX)
        thread = threading.Thread(target=build)
        thread.start()
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines == ["I: waiting for another process building image broken..."]
    thread.join(timeout=240)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], InternalError)
    message = errors[0].message
    assert "failed in step mmdebstrap" in message
    assert "corral-no-such-package" in message
    assert [p.name for p in tmp_path.iterdir()] == [lock.name]  # no .build-* left behind
    with pytest.raises(NotFoundError):
        store.get("broken")
