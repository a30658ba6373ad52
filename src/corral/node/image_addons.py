"""What an image recipe adds beyond Debian packages: pinned PyPI wheels and npm trees,
fetched on the host without running any of their code, and Jupyter kernelspecs.

Nothing from a registry runs on the host. A wheel is downloaded by ``pip download
--no-deps --only-binary=:all:`` at a pinned version, checked against its pinned sha256,
then unpacked as the zip it is, the way pip lays out its ``data`` scheme under a prefix
(``<name>.data/data/share/...`` to ``/usr/local/share/...``); its Python modules are not
installed. An npm tree is ``npm ci --ignore-scripts`` of a ``package.json`` and
``package-lock.json`` shipped with Corral (:data:`NPM_FILES`), so every package's version
and integrity hash are pinned and no install script runs; the ``node_modules`` it made is
then copied into the image. Kernelspecs (``kernel.json``) are written by this module,
never taken from a package. Every path written resolves inside the image tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from corral.api.errors import InternalError, InvalidArgumentError

#: Where the lockfiles of :class:`NpmTree` live (one folder each).
NPM_FILES = Path(__file__).parent / "image_files"
#: Where kernelspecs go: on every Jupyter's system path.
KERNELS_DIR = "usr/local/share/jupyter/kernels"
#: The largest wheel unpacked, and the most it may unpack to (a pinned hash makes a
#: surprise unlikely; the bound keeps one from filling the disk).
MAX_WHEEL = 256 * 1024 * 1024
MAX_UNPACKED = 1024 * 1024 * 1024

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+!-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ABS_DIR = re.compile(r"/[A-Za-z0-9._/-]{1,200}")

Runner = Callable[[str, list[str], Path | None], None]
"""Runs one build step (name, argv, cwd), streaming its output; InternalError if it fails."""


@dataclass(frozen=True)
class PypiWheel:
    """A wheel from PyPI, pinned by version and sha256; its ``data`` scheme is unpacked
    under ``prefix`` (e.g. a kernel's jars to ``/usr/local/share/jupyter/kernels/``)."""

    name: str
    version: str
    sha256: str
    prefix: str = "/usr/local"

    def __post_init__(self) -> None:
        if not (_NAME.fullmatch(self.name) and _VERSION.fullmatch(self.version)
                and _SHA256.fullmatch(self.sha256) and _ABS_DIR.fullmatch(self.prefix)):
            raise InvalidArgumentError(f"bad pinned wheel {self.name!r:.80}")


@dataclass(frozen=True)
class NpmTree:
    """``npm ci --ignore-scripts`` of the lockfile in ``NPM_FILES/<lock>``, its
    ``node_modules`` placed at ``<target>/node_modules``."""

    lock: str
    target: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.lock) or not _ABS_DIR.fullmatch(self.target):
            raise InvalidArgumentError(f"bad npm tree {self.lock!r:.80}")

    def files(self) -> dict[str, bytes]:
        folder = NPM_FILES / self.lock
        return {name: (folder / name).read_bytes()
                for name in ("package.json", "package-lock.json")}

    def digest(self) -> str:
        """The sha256 of its pinned files: in the recipe's cache key."""
        h = hashlib.sha256()
        for name, data in sorted(self.files().items()):
            h.update(f"{name}:{len(data)}:".encode())
            h.update(data)
        return h.hexdigest()


@dataclass(frozen=True)
class Kernelspec:
    """A Jupyter kernelspec written to :data:`KERNELS_DIR`/``name``/kernel.json."""

    name: str
    display_name: str
    language: str
    argv: tuple[str, ...]
    #: ``signal`` (SIGINT to the kernel) or ``message`` (an ``interrupt_request``).
    interrupt_mode: str = "signal"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or self.interrupt_mode not in ("signal", "message"):
            raise InvalidArgumentError(f"bad kernelspec {self.name!r:.80}")
        if "{connection_file}" not in self.argv:
            raise InvalidArgumentError(f"kernelspec {self.name}: argv lacks {{connection_file}}")

    def document(self) -> dict[str, object]:
        return {"argv": list(self.argv), "display_name": self.display_name,
                "language": self.language, "interrupt_mode": self.interrupt_mode,
                "env": {}, "metadata": {}}


def add_wheel(tree: str, wheel: PypiWheel, run: Runner) -> None:
    """Download ``wheel`` (no dependencies, no sdist: nothing of it runs), check its hash,
    unpack its ``data`` scheme into ``tree`` under its prefix."""
    with tempfile.TemporaryDirectory(prefix="corral-wheel-") as tmp:
        run(f"pip download {wheel.name}",
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--no-cache-dir", "--disable-pip-version-check", "--dest", tmp,
             f"{wheel.name}=={wheel.version}"], None)
        found = [p for p in Path(tmp).iterdir() if p.name.endswith(".whl")]
        if len(found) != 1:
            raise InternalError(f"pip download {wheel.name}=={wheel.version} gave {found}")
        path = found[0]
        if path.stat().st_size > MAX_WHEEL:
            raise InternalError(f"{path.name} is over {MAX_WHEEL} bytes")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != wheel.sha256:
            raise InternalError(f"{path.name} has sha256 {digest}, not the pinned "
                                f"{wheel.sha256}: refusing it")
        _unpack_data(tree, path, wheel)


def _unpack_data(tree: str, path: Path, wheel: PypiWheel) -> None:
    data = f"{wheel.name.replace('-', '_')}-{wheel.version}.data/data/"
    total = 0
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if not member.filename.startswith(data) or member.is_dir():
                continue
            rel = PurePosixPath(member.filename[len(data):])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise InternalError(f"{path.name}: unsafe member {member.filename!r:.200}")
            total += member.file_size
            if total > MAX_UNPACKED:
                raise InternalError(f"{path.name} unpacks to over {MAX_UNPACKED} bytes")
            makedirs(tree, f"{wheel.prefix}/{rel.parent}")
            dest = inside(tree, f"{wheel.prefix}/{rel}")
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out, archive.open(member) as src:
                shutil.copyfileobj(src, out)


def add_npm_tree(tree: str, npm: NpmTree, run: Runner) -> None:
    """``npm ci --ignore-scripts`` in a folder of the host, then its ``node_modules``
    copied (symlinks as symlinks) to ``npm.target`` in ``tree``."""
    if shutil.which("npm") is None:
        raise InternalError("npm is missing on this host; it fetches the image's JavaScript "
                            "kernels (nothing of them runs here): apt-get install npm")
    with tempfile.TemporaryDirectory(prefix="corral-npm-") as tmp:
        for name, data in npm.files().items():
            Path(tmp, name).write_bytes(data)
        run(f"npm ci {npm.lock}",
            ["npm", "ci", "--ignore-scripts", "--omit=dev", "--no-audit", "--no-fund",
             "--no-update-notifier", "--cache", f"{tmp}/.cache"], Path(tmp))
        target = inside(tree, npm.target)
        if os.path.lexists(target):
            raise InternalError(f"{npm.target} already exists in the image tree")
        makedirs(tree, npm.target)
        shutil.copytree(Path(tmp, "node_modules"), os.path.join(target, "node_modules"),
                        symlinks=True)
        shutil.copy2(Path(tmp, "package.json"), os.path.join(target, "package.json"))
        shutil.copy2(Path(tmp, "package-lock.json"), os.path.join(target, "package-lock.json"))


def add_kernelspec(tree: str, spec: Kernelspec) -> None:
    makedirs(tree, f"{KERNELS_DIR}/{spec.name}")
    path = inside(tree, f"{KERNELS_DIR}/{spec.name}/kernel.json")
    if os.path.islink(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as out:
        json.dump(spec.document(), out, indent=1)
        out.write("\n")


def makedirs(base: str, rel: str) -> str:
    """``mkdir -p base/rel`` (0755), one level at a time, each checked to stay in ``base``
    and to be a real folder, not a symlink; returns the folder's path."""
    parts, path = [p for p in rel.split("/") if p], base
    for i in range(len(parts)):
        path = inside(base, "/".join(parts[: i + 1]))
        if os.path.islink(path):
            raise InternalError(f"refusing to use symlink {path!r} as a folder")
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
    return path


def inside(base: str, rel: str) -> str:
    """``base/rel`` with its parent resolved; InternalError if that leaves ``base``."""
    path = os.path.join(base, rel.lstrip("/"))
    parent = os.path.realpath(os.path.dirname(path))
    if parent != base and not parent.startswith(base + os.sep):
        raise InternalError(f"refusing to write {rel!r}: it resolves outside the image tree")
    return os.path.join(parent, os.path.basename(path))
