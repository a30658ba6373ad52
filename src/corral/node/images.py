"""The image store: Debian root filesystems built with mmdebstrap and cached on disk.

Recipes live in code (:data:`BUILTIN_IMAGES`). A built image is the directory
``root/<name>-<key>/`` holding ``rootfs/`` (the Debian tree, never modified once in place:
sandboxes mount it read-only as the lower layer of an overlay) and ``image.json``. ``key`` is
:meth:`ImageRecipe.cache_key`, so changing a recipe's packages yields a new directory
instead of mutating the old one.

A build runs ``mmdebstrap`` (root mode, explicit mirror, so the host's apt sources are never
read) into ``root/.build-<key>-<random>/rootfs``, then :func:`customize_rootfs` (plain Python
file operations that refuse to leave the tree), then ``os.rename``\\ s the build directory
into place. Builds of one key are serialised by ``flock`` on ``root/<name>-<key>.lock``;
whoever holds it deletes the ``.build-<key>-*`` leftovers of crashed builds. Building needs
root (mmdebstrap's root mode, and ``chown`` of the sandbox user's home).
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT

from corral.api.errors import (
    AlreadyExistsError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
)

from . import image_addons
from .image_addons import Kernelspec, NpmTree, PypiWheel
from .layers import LayerStore, Manifest, is_image_id

RECIPE_FORMAT = 1
"""Bump when the build or :func:`customize_rootfs` changes: every cache key changes with it."""

DEBIAN_MIRROR = "http://deb.debian.org/debian"
SANDBOX_UID = 1000
"""uid and gid of the non-root user ``user`` that every image has."""

Progress = Callable[[str], None]

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_IMAGE_DIR_RE = re.compile(r"(?P<name>[a-z0-9][a-z0-9._-]{0,63})-(?P<key>[0-9a-f]{16})")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_SUITE_RE = re.compile(r"[a-z0-9][a-z0-9.-]*")
_VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BASE_ENV = (("LANG", "C.UTF-8"), ("PATH", _PATH))


@dataclass(frozen=True)
class ImageRecipe:
    """How to build one image. ``env``, ``workdir`` and ``user`` are what sandboxes start with."""

    name: str
    suite: str = "bookworm"
    mirror: str = DEBIAN_MIRROR
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = _BASE_ENV
    workdir: str = "/work"
    user: str = "root"
    #: Beyond Debian's packages (see :mod:`.image_addons`): pinned wheels and npm trees,
    #: fetched without running them, and the kernelspecs written for them.
    wheels: tuple[PypiWheel, ...] = ()
    npm: tuple[NpmTree, ...] = ()
    kernelspecs: tuple[Kernelspec, ...] = ()

    def __post_init__(self) -> None:
        bad = [p for p in self.packages if not _PACKAGE_RE.fullmatch(p)]
        if not _NAME_RE.fullmatch(self.name) or bad or not _SUITE_RE.fullmatch(self.suite):
            raise InvalidArgumentError(f"invalid recipe {self.name!r} (bad name/suite/{bad})")
        if self.variant not in _VARIANTS or not re.fullmatch(r"https?://[^\s,]+", self.mirror):
            raise InvalidArgumentError(f"recipe {self.name!r}: bad variant or mirror")
        workdir = self.workdir
        if workdir == "/" or not workdir.startswith("/") or os.path.normpath(workdir) != workdir:
            raise InvalidArgumentError(f"recipe {self.name!r}: workdir must be a normal abs path")
        if self.user not in ("root", "user"):
            raise InvalidArgumentError(f"recipe {self.name!r}: user must be 'root' or 'user'")

    def cache_key(self) -> str:
        """First 16 hex digits of the sha256 of the fields that shape the root filesystem."""
        doc = {
            "format": RECIPE_FORMAT,
            "suite": self.suite,
            "mirror": self.mirror,
            "variant": self.variant,
            "packages": sorted(set(self.packages)),
            "workdir": self.workdir,
        }
        if self.wheels or self.npm or self.kernelspecs:  # absent: older keys stay the same
            doc["wheels"] = [asdict(w) for w in self.wheels]
            doc["npm"] = [{**asdict(n), "sha256": n.digest()} for n in self.npm]
            doc["kernelspecs"] = [s.document() | {"name": s.name} for s in self.kernelspecs]
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_PYTHON_PACKAGES = """
    python3 python3-pip python3-venv python3-numpy python3-pandas python3-matplotlib
    python3-requests python3-scipy python3-seaborn python3-sympy python3-openpyxl python3-pil
    python3-bs4 python3-lxml python3-yaml python3-ipykernel
    ca-certificates procps less file zip unzip xz-utils git curl sudo python-is-python3
"""
_PYTHON_ENV = (("PYTHONUNBUFFERED", "1"), ("MPLBACKEND", "Agg"), ("PIP_BREAK_SYSTEM_PACKAGES", "1"))

#: The Jupyter kernels E2B's code-interpreter template has besides Python: R (Debian's
#: IRkernel), Java (JJava, the maintained IJava), JavaScript and TypeScript (tslab).
_KERNEL_PACKAGES = "r-base-core r-cran-irkernel openjdk-17-jdk-headless nodejs"
_JJAVA = "/usr/local/share/jupyter/kernels/java"
_TSLAB = ("node", "/opt/tslab/node_modules/tslab/bin/tslab", "kernel",
          "--config-path", "{connection_file}")
_KERNELSPECS = (
    Kernelspec("ir", "R", "R", ("R", "--no-echo", "--no-restore", "-e", "IRkernel::main()",
                                "--args", "{connection_file}")),
    Kernelspec("jslab", "JavaScript", "javascript", (*_TSLAB, "--js")),
    Kernelspec("tslab", "TypeScript", "typescript", _TSLAB),
    # What JJava's launcher would run, without the launcher's own JVM (~200 MB); a small
    # collector and C1 alone: a notebook's JVM starts faster and in less memory. The JVM
    # ends on SIGINT: JJava is interrupted by a message.
    Kernelspec("java", "Java", "java", ("java", "--add-opens", "jdk.jshell/jdk.jshell=ALL-UNNAMED",
                                        "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                                        "-jar", f"{_JJAVA}/jjava.jar", "{connection_file}"),
               interrupt_mode="message"),
)

BUILTIN_IMAGES: dict[str, ImageRecipe] = {
    "python": ImageRecipe(
        name="python", packages=tuple(_PYTHON_PACKAGES.split()), env=(*_BASE_ENV, *_PYTHON_ENV)
    ),
    "minimal": ImageRecipe(name="minimal", packages=("procps",)),
    "code-interpreter": ImageRecipe(
        name="code-interpreter",
        packages=(*_PYTHON_PACKAGES.split(), *_KERNEL_PACKAGES.split()),
        env=(*_BASE_ENV, *_PYTHON_ENV),
        wheels=(PypiWheel("jjava", "1.0a8",
                          "b86ddf2eee6037a33a0adc2ac2f318a94638f42eefaeeeb13db381587e5f2a69"),),
        npm=(NpmTree("tslab", "/opt/tslab"),),
        kernelspecs=_KERNELSPECS,
    ),
}
"""The images ``corral image build`` knows, by name."""


@dataclass(frozen=True)
class Image:
    """A built image, ready to be mounted read-only."""

    name: str
    key: str
    rootfs: Path
    env: tuple[tuple[str, str], ...]
    workdir: str
    user: str
    size_bytes: int
    #: Built images only: their layers' folders, top first, stacked above ``rootfs``.
    layers: tuple[Path, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None


class ImageStore:
    """Builds, caches, lists and removes images under ``root`` (e.g. /var/lib/corral/images)."""

    def __init__(self, root: Path, recipes: Mapping[str, ImageRecipe] | None = None,
                 built: Path | None = None) -> None:
        """``built``: where built images' layers and manifests live (default: ``root``)."""
        self.root = Path(root)
        self.recipes = dict(BUILTIN_IMAGES if recipes is None else recipes)
        self.built = LayerStore(Path(built) if built is not None else self.root)

    def get(self, name: str) -> Image:
        """Return the image ``name`` (a recipe's name, or a built image's ``sha256:`` id);
        never builds. Raises NotFoundError if it is not built."""
        if is_image_id(name):
            return self.from_manifest(self.built.manifest(name))
        image = self._load(self._recipe(name))
        if image is None:
            raise NotFoundError(f"image {name!r} is not built; build it: corral image build {name}")
        return image

    def from_manifest(self, manifest: Manifest) -> Image:
        """The image a manifest describes: its layers on its base recipe's current build,
        or, with no base (an imported archive), on its own first layer."""
        paths = [self.built.layer_path(k) for k in manifest.layers]
        if manifest.base:
            base = self.get(manifest.base)
            if base.key != manifest.base_key:
                raise NotFoundError(f"image {manifest.id[:19]} was built on image "
                                    f"{manifest.base} {manifest.base_key}, which is gone "
                                    f"(now {base.key}); build it again")
            rootfs, size = base.rootfs, base.size_bytes + manifest.size_bytes
        elif paths:
            rootfs, size, paths = paths[0], manifest.size_bytes, paths[1:]
        else:
            raise InternalError(f"image {manifest.id[:19]} has neither a base nor a layer")
        return Image(manifest.id, manifest.id[7:23], rootfs, manifest.env, manifest.workdir,
                     manifest.user, size, layers=tuple(reversed(paths)),
                     entrypoint=manifest.entrypoint, cmd=manifest.cmd)

    def ensure(self, name: str, progress: Progress | None = None) -> Image:
        """Return image ``name``, building it first if needed (output lines go to ``progress``)."""
        recipe = self._recipe(name)
        image = self._load(recipe)
        if image is not None:
            return image
        key = recipe.cache_key()
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        with self._locked(name, key, progress):
            image = self._load(recipe)  # another process may have built it while we waited
            if image is None:
                for stale in [*self.root.glob(f".build-{key}-*"), self.root / f"{name}-{key}"]:
                    _remove_tree(stale)
                self._build(recipe, progress or (lambda line: None))
                image = self._load(recipe)
        if image is None:
            raise InternalError(f"image {name!r} was built but cannot be loaded")
        return image

    def list(self) -> builtins.list[Image]:
        """The built images of the known recipes (builds of outdated recipes are not listed)."""
        images = (self._load(recipe) for recipe in self.recipes.values())
        return [image for image in images if image is not None]

    def remove(self, name: str) -> None:
        """Delete every build of ``name`` (current and outdated); NotFoundError if there is none."""
        _check_name(name)
        entries = sorted(os.listdir(self.root)) if self.root.is_dir() else []
        found = [m for m in map(_IMAGE_DIR_RE.fullmatch, entries) if m and m["name"] == name]
        if not found:
            raise NotFoundError(f"image {name!r} is not built")
        for match in found:
            users = _mounts_using(self.root / match.string / "rootfs")
            if users:
                raise AlreadyExistsError(
                    f"image {name!r} is in use by {users} mounts of running sandboxes; "
                    "kill them first")
        for match in found:
            with self._locked(name, match["key"], None):
                trash = self.root / f".build-{match['key']}-removed-{secrets.token_hex(4)}"
                os.rename(self.root / match.string, trash)  # get() stops seeing it at once
                _remove_tree(trash)

    def _recipe(self, name: str) -> ImageRecipe:
        _check_name(name)
        if name not in self.recipes:
            known = ", ".join(self.recipes)
            raise NotFoundError(f"unknown image {name!r}; known images: {known}")
        return self.recipes[name]

    def _load(self, recipe: ImageRecipe) -> Image | None:
        key = recipe.cache_key()
        directory = self.root / f"{recipe.name}-{key}"
        try:
            meta = json.loads((directory / "image.json").read_text())
            size = int(meta["size_bytes"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InternalError(f"corrupt image {directory}: {e}; remove it and rebuild") from e
        rootfs = directory / "rootfs"
        return Image(recipe.name, key, rootfs, recipe.env, recipe.workdir, recipe.user, size)

    @contextlib.contextmanager
    def _locked(self, name: str, key: str, progress: Progress | None) -> Iterator[None]:
        fd = os.open(self.root / f"{name}-{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress is not None:
                    progress(f"I: waiting for another process building image {name}...")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _build(self, recipe: ImageRecipe, progress: Progress) -> None:
        if shutil.which("mmdebstrap") is None:
            raise InternalError("mmdebstrap is missing; install it: apt-get install mmdebstrap")
        if os.geteuid() != 0:
            raise InternalError("building images needs root (mmdebstrap --mode=root)")
        key = recipe.cache_key()
        build = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=self.root))
        try:
            build.chmod(0o755)
            rootfs = build / "rootfs"
            _run_step(recipe.name, "mmdebstrap", mmdebstrap_argv(recipe, rootfs), progress)
            _add_extras(rootfs, recipe, progress)
            progress("I: customizing the root filesystem...")
            try:
                customize_rootfs(rootfs, recipe)
            except OSError as e:
                msg = f"building image {recipe.name!r} failed in step customize: {e}"
                raise InternalError(msg) from e
            meta = {
                "name": recipe.name,
                "key": key,
                "recipe": asdict(recipe),
                "recipe_format": RECIPE_FORMAT,
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "size_bytes": _tree_size(rootfs),
            }
            (build / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
            os.sync()  # the tree must be on disk before the rename publishes it
            os.rename(build, self.root / f"{recipe.name}-{key}")
        except BaseException:
            _remove_tree(build)
            raise
        progress(f"I: image {recipe.name} ({key}) is ready")


def _add_extras(rootfs: Path, recipe: ImageRecipe, progress: Progress) -> None:
    """The recipe's wheels, npm trees and kernelspecs (:mod:`.image_addons`)."""
    tree = os.path.realpath(rootfs)

    def run(step: str, argv: list[str], cwd: Path | None) -> None:
        _run_step(recipe.name, step, argv, progress, cwd)

    try:
        for wheel in recipe.wheels:
            progress(f"I: adding {wheel.name} {wheel.version} (PyPI, sha256 checked)...")
            image_addons.add_wheel(tree, wheel, run)
        for npm in recipe.npm:
            progress(f"I: adding the npm packages of {npm.lock} (locked, no scripts run)...")
            image_addons.add_npm_tree(tree, npm, run)
        for spec in recipe.kernelspecs:
            image_addons.add_kernelspec(tree, spec)
    except OSError as e:
        raise InternalError(f"building image {recipe.name!r} failed adding packages: {e}") from e


def mmdebstrap_argv(recipe: ImageRecipe, target: Path) -> list[str]:
    """The mmdebstrap command line for ``recipe``; the explicit mirror keeps host sources out."""
    argv = ["mmdebstrap", "--mode=root", "--format=directory", f"--variant={recipe.variant}"]
    if recipe.packages:
        argv.append("--include=" + ",".join(recipe.packages))
    return [*argv, recipe.suite, str(target), recipe.mirror]


def customize_rootfs(tree: Path, recipe: ImageRecipe) -> None:
    """Turn a fresh mmdebstrap tree into a sandbox image (pure file operations, as root).

    Creates ``/.corral`` (0755, the agent's mount point) and the workdir (01777, so root and
    ``user`` can both write), adds ``user`` (uid/gid 1000, home ``/home/user`` 0750, password
    locked; passwordless sudo where sudo is installed, as in E2B's templates), writes a
    regular empty ``etc/resolv.conf``, ``etc/hostname`` and ``etc/hosts`` (mmdebstrap's
    root mode leaves copies of the host's), and drops apt lists and caches.
    Every path is resolved first: symlinks inside the tree (``/bin -> usr/bin``) are followed
    only while they stay inside it, otherwise :class:`InternalError`.
    """
    base = os.path.realpath(tree)
    _mkdir(base, ".corral", 0o755)
    _mkdir(base, recipe.workdir, 0o1777)
    _mkdir(base, "work", 0o1777)
    passwd = _read(base, "etc/passwd")
    if re.search(rf"^(user:|[^:\n]*:[^:\n]*:{SANDBOX_UID}:)", passwd, re.MULTILINE):
        raise InternalError("the image already has a user named 'user' or with uid 1000")
    u = SANDBOX_UID
    _append(base, "etc/passwd", passwd, f"user:x:{u}:{u}:sandbox user:/home/user:/bin/bash\n")
    _append(base, "etc/group", _read(base, "etc/group"), f"user:x:{u}:\n")
    days = int(time.time() // 86400)
    _append(base, "etc/shadow", _read(base, "etc/shadow"), f"user:!:{days}:0:99999:7:::\n")
    if os.path.lexists(_inside(base, "etc/gshadow")):
        _append(base, "etc/gshadow", _read(base, "etc/gshadow"), "user:!::\n")
    home = _mkdir(base, "home/user", 0o750)
    skel = _inside(base, "etc/skel")
    for entry in os.scandir(skel) if os.path.isdir(skel) else ():
        if entry.is_file(follow_symlinks=False):
            _write(base, f"home/user/{entry.name}", _read(base, f"etc/skel/{entry.name}"), 0o644)
            os.chown(_inside(base, f"home/user/{entry.name}"), u, u, follow_symlinks=False)
    os.chown(home, u, u, follow_symlinks=False)
    if os.path.isdir(_inside(base, "etc/sudoers.d")):
        # As E2B's templates: ``user`` may become root, which any caller can be anyway
        # (commands take ``user: root``); the sandbox, not the account, is the boundary.
        _write(base, "etc/sudoers.d/user", "user ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
    _write(base, "etc/resolv.conf", "", 0o644)
    _write(base, "etc/hostname", "sandbox\n", 0o644)
    _write(base, "etc/hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n", 0o644)
    lists = _inside(base, "var/lib/apt/lists")
    for entry in os.scandir(lists) if os.path.isdir(lists) else ():
        if entry.name not in ("lock", "partial"):
            _remove_tree(Path(entry.path))
    cache = _inside(base, "var/cache/apt")
    for entry in os.scandir(cache) if os.path.isdir(cache) else ():
        if entry.name.endswith(".bin") and not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)


def _mounts_using(rootfs: Path) -> int:
    """How many host mounts use ``rootfs`` (a sandbox's overlay lower, or its idmapped bind)."""
    needle = str(rootfs)
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f
                   if any(field == needle or field.startswith(needle + "/")
                          for field in line.replace(",", " ").replace("=", " ").split()))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid image name {name!r}: use 1-64 of a-z 0-9 . _ -, starting with a-z or 0-9"
        )


_inside = image_addons.inside  # the one check of a path in a tree being built


def _mkdir(base: str, rel: str, mode: int) -> str:
    path = image_addons.makedirs(base, rel)
    os.chmod(path, mode)
    return path


def _read(base: str, rel: str) -> str:
    fd = os.open(_inside(base, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _append(base: str, rel: str, current: str, text: str) -> None:
    """Append ``text`` to a file whose contents are ``current`` (keeps owner and mode)."""
    if current and not current.endswith("\n"):
        text = "\n" + text
    fd = os.open(_inside(base, rel), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "a", encoding="utf-8") as f:
        f.write(text)


def _write(base: str, rel: str, text: str, mode: int) -> None:
    """Replace ``rel`` (a symlink there is removed, not followed) with a regular file."""
    path = _inside(base, rel)
    if os.path.islink(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with open(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text)


def _run_step(name: str, step: str, argv: list[str], progress: Progress,
              cwd: Path | None = None) -> None:
    """Run ``argv`` streaming its output lines to ``progress``; InternalError if it fails."""
    env = {"PATH": os.environ.get("PATH", _PATH), "LC_ALL": "C.UTF-8", "HOME": "/root"}
    env.update({k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")})
    env.update({k: v for k, v in os.environ.items() if k == "TMPDIR"})
    tail: collections.deque[str] = collections.deque(maxlen=15)
    proc = subprocess.Popen(
        argv, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT, env=env, text=True, errors="replace",
        cwd=cwd)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            progress(line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: let mmdebstrap undo its mounts before we rm
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if rc != 0:
        output = "\n".join(tail)
        raise InternalError(
            f"building image {name!r} failed in step {step} (exit status {rc}):\n{output}"
        )


def _mount_points() -> builtins.list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        fields = [line.split()[4] for line in f]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in fields]


def _remove_tree(path: Path) -> None:
    """``rm -rf path``, but never into a mount (a failed build may leave /proc or /dev)."""
    if not os.path.lexists(path):
        return
    real = os.path.realpath(path)
    mounted = [m for m in _mount_points() if m == real or m.startswith(real + "/")]
    if mounted:
        raise InternalError(f"refusing to delete {path}: {mounted[0]} is still mounted")
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _tree_size(path: Path) -> int:
    """Disk usage of a tree in bytes, hard links counted once (like ``du -s``)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _dirs, files in os.walk(path):
        for entry in (directory, *(os.path.join(directory, f) for f in files)):
            st = os.lstat(entry)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total
