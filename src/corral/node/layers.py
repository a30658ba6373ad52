"""Built images: content-addressed layers, and the manifests that stack them on a base.

A layer is what one build step changed in its image: the upper directory of the overlay
the step's sandbox ran on, copied out once the step ended (whiteouts and opaque
directories as overlayfs writes them), so that it can be stacked read-only under a later
sandbox as it is. It lives in ``<image dir>/layers/<key>/`` (``diff/`` and ``layer.json``),
``key`` being the step's cache key (:func:`corral.api.image_spec.step_keys`): the same
steps on the same base give the same key, whoever builds them, so two tenants' builds
share a layer on disk, and a rebuild finds every unchanged step's layer in place.

A manifest (``<image dir>/manifests/<hex>.json``) names a built image: its base (one of
the node's recipes), its layers bottom first, and what its sandboxes start with (env,
working directory, user, entrypoint and command, labels). Its id, ``sha256:<hex>``, is the
digest of that content, so it says nothing about who built it; the tenants' names for
images live in the control plane, never here.

A layer holds a hostile program's output. Before it is published it is neutralised
(:func:`neutralise`): device nodes other than whiteouts and sockets are deleted, setuid and
setgid bits and file capabilities are dropped, ``trusted.*`` attributes other than an
opaque directory's are removed, and ownership is shifted back from the sandbox's host uid
range (namespaces runtime) to the image's own uids.

Builds hold ``layers.lock`` shared, and :meth:`LayerStore.prune` exclusive, so that a prune
never removes a layer a build has just made and not yet named in a manifest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from corral.api.errors import InternalError, InvalidArgumentError, NotFoundError
from corral.runtime.host import mounts_under

#: A manifest or layer id as the API writes it.
IMAGE_ID_PREFIX = "sha256:"
_HEX64 = frozenset("0123456789abcdef")
_UID_RANGE = 65536
_KEEP_XATTRS = frozenset({"trusted.overlay.opaque"})


def is_image_id(ref: str) -> bool:
    """Whether ``ref`` is a built image's id (``sha256:`` and 64 hex digits)."""
    return (ref.startswith(IMAGE_ID_PREFIX) and len(ref) == len(IMAGE_ID_PREFIX) + 64
            and set(ref[len(IMAGE_ID_PREFIX):]) <= _HEX64)


def _check_key(key: str) -> str:
    if len(key) != 64 or not set(key) <= _HEX64:
        raise InvalidArgumentError(f"{key[:80]!r} is not a layer key (64 hex digits)")
    return key


@dataclass(frozen=True)
class Manifest:
    """A built image: a base recipe, layers stacked on it (bottom first), its defaults."""

    base: str
    base_key: str
    layers: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str
    user: str
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    labels: tuple[tuple[str, str], ...] = ()
    #: One line per step, for ``inspect``; not part of the id.
    steps: tuple[str, ...] = field(default=(), compare=False)
    created_at: str = field(default="", compare=False)
    size_bytes: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        """``sha256:`` and the digest of everything that shapes the image's sandboxes."""
        doc = {"base": self.base, "base_key": self.base_key, "layers": list(self.layers),
               "env": [list(p) for p in self.env], "workdir": self.workdir,
               "user": self.user, "entrypoint": self.entrypoint, "cmd": self.cmd,
               "labels": [list(p) for p in self.labels]}
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return IMAGE_ID_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Manifest:
        def pairs(value: object) -> tuple[tuple[str, str], ...]:
            assert isinstance(value, list)
            return tuple((str(k), str(v)) for k, v in value)

        def argv(value: object) -> tuple[str, ...] | None:
            return None if value is None else tuple(map(str, value))  # type: ignore[call-overload]

        layers = doc["layers"]
        assert isinstance(layers, list)
        return cls(base=str(doc["base"]), base_key=str(doc["base_key"]),
                   layers=tuple(_check_key(str(k)) for k in layers), env=pairs(doc["env"]),
                   workdir=str(doc["workdir"]), user=str(doc["user"]),
                   entrypoint=argv(doc.get("entrypoint")), cmd=argv(doc.get("cmd")),
                   labels=pairs(doc.get("labels", [])),
                   steps=tuple(map(str, doc.get("steps", []))),  # type: ignore[call-overload]
                   created_at=str(doc.get("created_at", "")),
                   size_bytes=int(doc.get("size_bytes", 0)))  # type: ignore[call-overload]


@dataclass(frozen=True)
class PruneResult:
    images: int
    layers: int
    bytes_freed: int


class LayerStore:
    """The layers and manifests under ``root`` (the node's image dir)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.layers_dir = self.root / "layers"
        self.manifests_dir = self.root / "manifests"

    # -- layers ----------------------------------------------------------------------------

    def layer_path(self, key: str) -> Path:
        """The ``diff`` folder of layer ``key`` (which may not exist)."""
        return self.layers_dir / _check_key(key) / "diff"

    def has_layer(self, key: str) -> bool:
        return (self.layers_dir / _check_key(key) / "layer.json").is_file()

    def layer_size(self, key: str) -> int:
        try:
            meta = json.loads((self.layers_dir / _check_key(key) / "layer.json").read_text())
            return int(meta["size_bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    @contextlib.contextmanager
    def new_layer(self, key: str, meta: Mapping[str, object], uid_base: int
                  ) -> Iterator[Callable[[], Path]]:
        """Make layer ``key``: the body calls the yielded function for the (not yet
        existing) folder to copy the step's changes into; on a clean exit the copy is
        neutralised and published. Another build that published ``key`` first wins."""
        self._ensure_dirs()
        staging = self.layers_dir / f".new-{_check_key(key)}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            yield lambda: staging / "diff"
            size = neutralise(staging / "diff", uid_base)
            doc = {**meta, "key": key, "size_bytes": size,
                   "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
            (staging / "layer.json").write_text(json.dumps(doc, indent=2) + "\n")
            try:
                os.rename(staging, self.layers_dir / key)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            if staging.exists():
                _remove(staging)

    # -- manifests -------------------------------------------------------------------------

    def save(self, manifest: Manifest) -> Manifest:
        """Write ``manifest`` (with its size filled in) and return it; idempotent."""
        self._ensure_dirs()
        for key in manifest.layers:
            if not self.has_layer(key):
                raise InternalError(f"layer {key[:12]} of a new image is missing")
        size = sum(self.layer_size(k) for k in manifest.layers)
        manifest = Manifest(**{**asdict(manifest), "size_bytes": size,
                               "created_at": manifest.created_at
                               or datetime.now(UTC).isoformat(timespec="seconds")})
        target = self.manifests_dir / f"{manifest.id[len(IMAGE_ID_PREFIX):]}.json"
        if not target.exists():
            temp = target.with_suffix(f".tmp-{secrets.token_hex(4)}")
            temp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
            os.rename(temp, target)
        return self.manifest(manifest.id)

    def manifest(self, image_id: str) -> Manifest:
        """The manifest of ``image_id``; NotFoundError if there is none."""
        if not is_image_id(image_id):
            raise InvalidArgumentError(f"{image_id[:80]!r} is not an image id (sha256:...)")
        path = self.manifests_dir / f"{image_id[len(IMAGE_ID_PREFIX):]}.json"
        try:
            return Manifest.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise NotFoundError(f"image {image_id} does not exist") from None
        except (OSError, ValueError, KeyError, TypeError, AssertionError,
                InvalidArgumentError) as exc:  # the last: a layer key that is not one
            raise InternalError(f"corrupt image manifest {path}: {exc}") from exc

    def manifests(self) -> list[Manifest]:
        if not self.manifests_dir.is_dir():
            return []
        found = []
        for path in sorted(self.manifests_dir.glob("*.json")):
            if is_image_id(IMAGE_ID_PREFIX + path.stem):
                with contextlib.suppress(NotFoundError, InternalError):
                    found.append(self.manifest(IMAGE_ID_PREFIX + path.stem))
        return found

    # -- collection ------------------------------------------------------------------------

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Held (shared) for the whole of a build: a prune waits for it."""
        with self._lock(fcntl.LOCK_SH):
            yield

    def prune(self, keep: set[str]) -> PruneResult:
        """Delete the manifests not in ``keep`` (image ids) and every layer no kept manifest
        names, but a layer a running sandbox has mounted. Waits for running builds.

        A manifest goes by its file's name, whatever its content: a corrupt one too, and
        what a crashed :meth:`save` left."""
        with self._lock(fcntl.LOCK_EX):
            images = layers = freed = 0
            kept_layers: set[str] = set()
            names = sorted(os.listdir(self.manifests_dir)) if self.manifests_dir.is_dir() else []
            for name in names:
                image_id = IMAGE_ID_PREFIX + name.removesuffix(".json")
                if name.endswith(".json") and image_id in keep:
                    with contextlib.suppress(NotFoundError, InternalError, InvalidArgumentError):
                        kept_layers.update(self.manifest(image_id).layers)
                    continue
                _remove(self.manifests_dir / name)
                if name.endswith(".json") and is_image_id(image_id):
                    images += 1
            in_use = _mounted_layers(self.layers_dir)
            entries = sorted(os.listdir(self.layers_dir)) if self.layers_dir.is_dir() else []
            for name in entries:
                path = self.layers_dir / name
                if name.startswith(".new-"):
                    _remove(path)  # a crashed build's; no build runs while we hold the lock
                    continue
                if name in kept_layers or name in in_use:
                    continue
                freed += self.layer_size(name) if len(name) == 64 else 0
                _remove(path)
                layers += 1
            return PruneResult(images=images, layers=layers, bytes_freed=freed)

    def _ensure_dirs(self) -> None:
        for path in (self.layers_dir, self.manifests_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _lock(self, how: int) -> Iterator[None]:
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.root / "layers.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)


def neutralise(tree: Path, uid_base: int) -> int:
    """Make a copied upper layer safe to keep and to stack; returns its size in bytes.

    ``uid_base``: the host uid the sandbox's root had (0 for gVisor, whose files already
    carry the sandbox's own ids); ids in ``uid_base .. uid_base+65535`` are shifted back to
    ``0 .. 65535``, any other becomes root's. Nothing is followed: every path is handled
    with ``lstat``, ``lchown`` and ``*xattr(follow_symlinks=False)``.
    """
    total = 0
    seen: set[tuple[int, int]] = set()

    def fail(error: OSError) -> None:
        raise error  # a folder not read would be a folder not neutralised

    for directory, dirs, files in os.walk(tree, onerror=fail):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if _neutralise_one(path, info, uid_base) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    _neutralise_one(str(tree), os.lstat(tree), uid_base)
    return total


def _neutralise_one(path: str, info: os.stat_result, uid_base: int) -> bool:
    """Neutralise one entry (never followed); False if it was deleted."""
    mode = info.st_mode
    if stat.S_ISCHR(mode) and info.st_rdev == 0:
        pass  # a whiteout: a file the step deleted
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        os.unlink(path)
        return False
    _own(path, info, uid_base)
    # Links too: trusted.* attributes are the kernel's (overlayfs reads them on any inode).
    for attribute in os.listxattr(path, follow_symlinks=False):
        if attribute == "security.capability" or (
                attribute.startswith("trusted.") and attribute not in _KEEP_XATTRS):
            os.removexattr(path, attribute, follow_symlinks=False)
    if (not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode)
            and mode & (stat.S_ISUID | stat.S_ISGID)):
        os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
    return True


def _own(path: str, info: os.stat_result, uid_base: int) -> None:
    """Shift ``path``'s owner back from ``uid_base``; an id outside the range (with a
    ``uid_base`` of 0 too: gVisor's files carry the sandbox's own ids) becomes root's."""
    uid, gid = (i - uid_base if uid_base <= i < uid_base + _UID_RANGE else 0
                for i in (info.st_uid, info.st_gid))
    if (uid, gid) != (info.st_uid, info.st_gid):
        os.lchown(path, uid, gid)


def _mounted_layers(layers_dir: Path) -> set[str]:
    """Keys of the layers mounted now: named by an overlay's options (by their host path),
    or bound somewhere (the namespaces runtime's idmapped lowers), which mountinfo names by
    their path inside their filesystem: the host path only when that is the root's."""
    real = os.path.realpath(layers_dir)
    prefixes = {str(layers_dir).rstrip("/") + "/", real + "/"}
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[6:]:
                options = fields[fields.index("-", 6) + 1:]
                mounts.append((fields[2], _unescape(fields[3]), _unescape(fields[4]), options))
    # The filesystem the layers live on (the mount that holds their folder), and their
    # folder's path inside it.
    device, inner, longest = None, "", -1
    for dev, root, point, _ in mounts:
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= longest:
            device, longest = dev, len(point)
            inner = os.path.normpath(os.path.join(root, os.path.relpath(real, point)))
    used = set()
    for dev, root, _, options in mounts:
        if dev == device and root.startswith(inner.rstrip("/") + "/"):
            used.add(root[len(inner.rstrip("/")) + 1:].split("/", 1)[0])
        for token in " ".join(options).replace(",", " ").replace("=", " ").split():
            token = _unescape(token)
            for prefix in prefixes:
                if token.startswith(prefix):
                    used.add(token[len(prefix):].split("/", 1)[0])
    return used


def _unescape(field: str) -> str:
    """A mountinfo field as the path it is (spaces, tabs, newlines, backslashes octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _remove(path: Path) -> None:
    """``rm -rf`` a layer folder, never into a mount."""
    if mounts_under(path):
        raise InternalError(f"refusing to delete {path}: something is mounted below it")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
