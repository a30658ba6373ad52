"""Volumes: named persistent storage, mounted into sandboxes, shared, outliving them.

A volume is an ext4 filesystem of its quota's size in a sparse file,
``<data dir>/volumes/<id>.img``, loop-mounted ``nosuid,nodev`` at ``<data dir>/volumes/<id>/``
(:mod:`corral.runtime.host`); ``<id>.json`` says its size and when it was made. The
``volumes`` folder is root's, mode 0700: no other host user reaches a volume. The quota is
the filesystem's size, so a full volume answers ENOSPC inside every sandbox that mounts it
and to the file API alike; the sparse file takes host disk only as it fills, and a new
volume is refused when the host's free disk could not hold every volume filled (no
overcommit, as of its creation).

Mounted lazily (on first use), and at a node's start for every volume it finds (after a
host reboot, nothing is mounted); unmounted at the node's close and deleted by
:meth:`VolumeStore.remove`. Sandboxes see the mounted tree, bound at their mount points
(:class:`VolumeMount`; gvisor: an OCI bind, served by the gofer and revalidated on each
access; namespaces: an idmapped clone), never the image file. Files keep the sandbox's own
uids on disk (0..65535), as images do, so sandboxes of either runtime agree on owners.
The file API (:mod:`.volume_files`) works with no sandbox running.

The node keeps the ids; which tenant calls a volume what is the control plane's business.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar
from dataclasses import dataclass
from pathlib import Path

from corral.api.errors import (InternalError, InvalidArgumentError, NotFoundError,
                               ResourceExhaustedError)
from corral.api.limits import (MAX_SANDBOX_VOLUMES, MAX_VOLUME_MIB, MIN_VOLUME_MIB,
                               normalize_path)
from corral.api.models import EntryInfo
from corral.runtime.agent_bundle import CHANNEL_MOUNT_POINT, MOUNT_POINT
from corral.runtime.host import (loop_backings, make_volume_fs, mount_volume,
                                 prepare_volume_root, unmount_volume, volume_mounted)

from . import volume_files

T = TypeVar("T")

__all__ = [
    "MAX_SANDBOX_VOLUMES", "MAX_SIZE_MIB", "MAX_VOLUMES", "MIN_SIZE_MIB", "RESERVED_PATHS",
    "VOLUME_ID", "VolumeInfo", "VolumeMount", "VolumeStore", "check_id", "check_mount_point",
    "check_mounts", "check_size",
]

log = logging.getLogger(__name__)

VOLUME_ID = re.compile(r"^vol-[0-9a-f]{16}$")
#: Smallest and largest volume, in MiB (16 MiB: ext4's journal and tables need room, and
#: leave ~13 MiB for files; 1 TiB); shared with the wire models through api/limits.py.
MIN_SIZE_MIB = MIN_VOLUME_MIB
MAX_SIZE_MIB = MAX_VOLUME_MIB
#: Most volumes one node keeps (each mounted one holds a loop device).
MAX_VOLUMES = 1024
#: Mount points a volume may not take, nor sit below: the sandbox's kernel interfaces and
#: Corral's own folders.
RESERVED_PATHS = ("/proc", "/dev", "/sys", MOUNT_POINT, CHANNEL_MOUNT_POINT)
_FORMAT = 1
_MAX_META_BYTES = 4096
_MIB = 1024 * 1024


@dataclass(frozen=True)
class VolumeMount:
    """A volume mounted into a sandbox (what :meth:`corral.node.Node.create` takes)."""

    #: A volume id, ``vol-`` and 16 hex digits.
    volume: str
    #: Where the sandbox sees it: an absolute, normal path.
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class VolumeInfo:
    """A volume: its id, quota, what its files take now, and when it was made."""

    id: str
    size_mib: int
    used_bytes: int
    created_at: float


def check_id(volume_id: object) -> str:
    if not isinstance(volume_id, str) or not VOLUME_ID.match(volume_id):
        raise InvalidArgumentError(f"{volume_id!r:.80} is not a volume id (vol-<16 hex>)")
    return volume_id


def check_size(size_mib: object) -> int:
    if (isinstance(size_mib, bool) or not isinstance(size_mib, int)
            or not MIN_SIZE_MIB <= size_mib <= MAX_SIZE_MIB):
        raise InvalidArgumentError(f"a volume's size is {MIN_SIZE_MIB} to {MAX_SIZE_MIB} MiB "
                                   f"(1 TiB); got {size_mib!r:.40}")
    return size_mib


def check_mount_point(path: object) -> str:
    """A mount point as given: absolute, normal, printable, not ``/``, not reserved."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgumentError(f"a volume's mount point must be an absolute path; got "
                                   f"{path!r:.80}")
    try:
        normal = normalize_path(path)
    except ValueError as exc:
        raise InvalidArgumentError(f"mount point {path!r:.80}: {exc}") from None
    if normal != path:
        raise InvalidArgumentError(f"mount point {path!r:.80} is not normal; write "
                                   f"{normal!r:.80}")
    if not path.isprintable():
        raise InvalidArgumentError(f"mount point {path!r:.80} has control characters")
    if path == "/":
        raise InvalidArgumentError("a volume cannot be mounted at /")
    for reserved in RESERVED_PATHS:
        if path == reserved or path.startswith(reserved + "/"):
            raise InvalidArgumentError(f"mount point {path!r:.80} is in {reserved}, which "
                                       "belongs to the sandbox's system; choose another")
    return path


def check_mounts(mounts: Sequence[VolumeMount] | None) -> tuple[VolumeMount, ...]:
    """A create's volumes, checked: at most :data:`MAX_SANDBOX_VOLUMES`, valid ids and
    mount points, none at or below another. Whether the volumes exist is the node's."""
    if mounts is None:
        return ()
    if isinstance(mounts, (str, bytes)) or not isinstance(mounts, Sequence):
        raise InvalidArgumentError("volumes must be a list of VolumeMount")
    if len(mounts) > MAX_SANDBOX_VOLUMES:
        raise InvalidArgumentError(f"a sandbox mounts at most {MAX_SANDBOX_VOLUMES} volumes")
    checked: list[VolumeMount] = []
    for mount in mounts:
        if not isinstance(mount, VolumeMount) or not isinstance(mount.read_only, bool):
            raise InvalidArgumentError("volumes must be a list of VolumeMount")
        check_id(mount.volume)
        path = check_mount_point(mount.path)
        for other in checked:
            if path == other.path:
                raise InvalidArgumentError(f"two volumes are mounted at {path!r:.80}")
            if path.startswith(other.path + "/") or other.path.startswith(path + "/"):
                raise InvalidArgumentError(f"mount points {other.path!r:.80} and {path!r:.80} "
                                           "are nested; volumes may not be")
        checked.append(mount)
    return tuple(checked)


class VolumeStore:
    """The volumes of one node, under ``<data dir>/volumes`` (``Node.volumes``).

    Synchronous and thread-safe: the node and the control plane call it from worker
    threads. Whether a sandbox uses a volume is the node's to know
    (:meth:`corral.node.Node.volume_users`); :meth:`remove` does not check.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    # -- the store -------------------------------------------------------------------------

    def open(self) -> None:
        """Make the folder, clear what an interrupted create left, and mount every volume
        (one that fails is logged, and tried again at its next use)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        found = self._ids()
        for entry in os.listdir(self.root):
            name = entry.split(".", 1)[0]
            if entry.startswith(".") or (VOLUME_ID.match(name) and name not in found):
                self._discard(entry)
        backings = loop_backings()  # read once, not once per volume
        for volume_id in sorted(found):
            try:
                self.mounted(volume_id, backings)
            except (OSError, InternalError, NotFoundError) as exc:
                log.error("volume %s could not be mounted: %s", volume_id, exc)

    def close(self) -> None:
        """Unmount every volume (lazily: sandboxes that outlive the node keep theirs)."""
        for volume_id in sorted(self._ids()):
            with self._lock_of(volume_id):
                try:
                    unmount_volume(self.root / volume_id)
                except OSError as exc:
                    log.error("volume %s could not be unmounted: %s", volume_id, exc)

    def create(self, size_mib: int) -> VolumeInfo:
        """Make a new, empty volume of ``size_mib`` MiB (its quota), mounted; its info."""
        size_mib = check_size(size_mib)
        volume_id = f"vol-{secrets.token_hex(8)}"
        with self._lock:  # the count and the disk check, and the commit, together
            self._check_room(size_mib)
            image, folder = self._image(volume_id), self.root / volume_id
            temporary = self.root / f".{volume_id}.img"
            try:
                make_volume_fs(temporary, size_mib)
                os.rename(temporary, image)
                folder.mkdir(mode=0o700)
                mount_volume(image, folder)
                prepare_volume_root(folder)
                created = time.time()
                self._write_meta(volume_id, size_mib, created)
            except BaseException as exc:
                for entry in (temporary.name, image.name, volume_id):
                    self._discard(entry)
                if isinstance(exc, OSError):
                    raise InternalError(f"making volume {volume_id}: {exc}") from exc
                raise
        log.info("volume %s made (%d MiB)", volume_id, size_mib)
        return VolumeInfo(volume_id, size_mib, self._used(folder), created)

    def get(self, volume_id: str) -> VolumeInfo:
        """A volume's info (mounting it if it is not); NotFoundError if there is none."""
        size_mib, created = self._meta(volume_id)
        return VolumeInfo(volume_id, size_mib, self._used(self.mounted(volume_id)), created)

    def list(self) -> list[VolumeInfo]:
        """Every volume of this node, oldest first."""
        found = []
        for volume_id in self._ids():
            try:
                found.append(self.get(volume_id))
            except NotFoundError:
                continue  # removed meanwhile
        return sorted(found, key=lambda info: (info.created_at, info.id))

    def exists(self, volume_id: str) -> bool:
        return VOLUME_ID.match(volume_id) is not None and self._meta_path(volume_id).is_file()

    def remove(self, volume_id: str) -> None:
        """Unmount and delete a volume and every file in it (InvalidArgumentError for a
        malformed id, NotFoundError for an unknown one)."""
        self._meta(volume_id)
        with self._lock_of(volume_id):
            folder = self.root / volume_id
            try:
                unmount_volume(folder)
                if volume_mounted(folder):
                    raise InternalError(f"volume {volume_id} is still mounted; not deleted")
                self._meta_path(volume_id).unlink(missing_ok=True)  # gone from now on
                self._image(volume_id).unlink(missing_ok=True)
                if folder.is_dir():
                    os.rmdir(folder)  # its mount point, empty: never a tree walk
            except OSError as exc:
                raise InternalError(f"removing volume {volume_id}: {exc}") from exc
        log.info("volume %s removed", volume_id)

    def mounted(self, volume_id: str,
                backings: builtins.dict[str, builtins.list[str]] | None = None) -> Path:
        """The host folder the volume is mounted at, mounting it first if need be."""
        self._meta(volume_id)
        folder = self.root / volume_id
        with self._lock_of(volume_id):
            if not self.exists(volume_id):
                raise NotFoundError(f"no volume {volume_id}")
            if not volume_mounted(folder):
                try:
                    folder.mkdir(mode=0o700, exist_ok=True)
                    mount_volume(self._image(volume_id), folder, backings)
                except OSError as exc:
                    raise InternalError(f"mounting volume {volume_id}: {exc}") from exc
        return folder

    # -- files, without a sandbox (see .volume_files) ---------------------------------------

    def read_stream(self, volume_id: str, path: str) -> Iterator[bytes]:
        """A regular file's bytes in chunks; errors are raised by the call itself (the
        file's own descriptor keeps what it needs once the root's is closed)."""
        return self._at_root(volume_id, volume_files.read_stream, path)

    def write(self, volume_id: str, path: str, chunks: Iterable[bytes],
              mode: int = 0o644) -> int:
        """Write a file from ``chunks`` (streamed; parents made), uid 0, ``mode``; its size."""
        return self._at_root(volume_id, volume_files.write, path, chunks, mode)

    def list_dir(self, volume_id: str, path: str, depth: int = 1
                 ) -> builtins.list[EntryInfo]:
        return self._at_root(volume_id, volume_files.list_dir, path, depth)

    def stat(self, volume_id: str, path: str) -> EntryInfo:
        return self._at_root(volume_id, volume_files.stat_path, path)

    def remove_path(self, volume_id: str, path: str, recursive: bool = False) -> None:
        self._at_root(volume_id, volume_files.remove, path, recursive)

    def mkdir(self, volume_id: str, path: str) -> bool:
        return self._at_root(volume_id, volume_files.mkdir, path)

    def _at_root(self, volume_id: str, call: Callable[..., T], *args: object) -> T:
        """``call(root descriptor, label, *args)`` on the volume's root, closed after."""
        root = self._root(volume_id)
        try:
            return call(root, f"volume {volume_id}", *args)
        finally:
            os.close(root)

    # -- inside ------------------------------------------------------------------------------

    def _root(self, volume_id: str) -> int:
        """A descriptor of the volume's mounted root, checked to be its filesystem's root
        (never the empty folder beneath, on the host's disk)."""
        folder = self.mounted(volume_id)
        fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if os.fstat(fd).st_dev == os.stat(self.root).st_dev:
            os.close(fd)
            raise InternalError(f"volume {volume_id} is not mounted")
        return fd

    def _lock_of(self, volume_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(volume_id, threading.Lock())

    def _ids(self) -> set[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return set()
        return {name[:-5] for name in names
                if name.endswith(".json") and VOLUME_ID.match(name[:-5])}

    def _image(self, volume_id: str) -> Path:
        return self.root / f"{volume_id}.img"

    def _meta_path(self, volume_id: str) -> Path:
        return self.root / f"{volume_id}.json"

    def _write_meta(self, volume_id: str, size_mib: int, created: float) -> None:
        body = json.dumps({"format": _FORMAT, "id": volume_id, "size_mib": size_mib,
                           "created_at": created}).encode()
        temporary = self.root / f".{volume_id}.json"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.rename(temporary, self._meta_path(volume_id))

    def _meta(self, volume_id: str) -> tuple[int, float]:
        """(size in MiB, creation time) of an existing volume, else NotFoundError."""
        check_id(volume_id)
        try:
            fd = os.open(self._meta_path(volume_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"no volume {volume_id}") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_MAX_META_BYTES)
        try:
            body = json.loads(raw)
            size, created = body["size_mib"], body["created_at"]
            if body.get("format") != _FORMAT or body.get("id") != volume_id:
                raise ValueError("foreign")
            return check_size(size), float(created)
        except (ValueError, KeyError, TypeError, InvalidArgumentError):
            raise InternalError(f"volume {volume_id}: its record is malformed") from None

    def _used(self, folder: Path) -> int:
        st = os.statvfs(folder)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _check_room(self, size_mib: int) -> None:
        """Refuse a volume past :data:`MAX_VOLUMES`, or one the host's disk could not hold
        with every other volume filled to its quota."""
        ids = self._ids()
        if len(ids) >= MAX_VOLUMES:
            raise ResourceExhaustedError(f"this node already keeps {MAX_VOLUMES} volumes; "
                                         "remove some first")
        promised = 0
        for volume_id in ids:
            try:
                size_mib_of, _ = self._meta(volume_id)
                taken = os.stat(self._image(volume_id)).st_blocks * 512
            except (NotFoundError, InternalError, OSError):
                continue
            promised += max(0, size_mib_of * _MIB - taken)
        disk = os.statvfs(self.root)
        free = disk.f_bavail * disk.f_frsize
        if size_mib * _MIB + promised > free:
            raise ResourceExhaustedError(
                f"this node's disk has {free // _MIB} MiB free, and its volumes may still "
                f"grow by {promised // _MIB} MiB; a volume of {size_mib} MiB does not fit")

    def _discard(self, entry: str) -> None:
        """Delete what a create left: an image, a record, or a mount point (unmounted first,
        and removed only empty)."""
        path = self.root / entry
        try:
            if path.is_dir() and not path.is_symlink():
                unmount_volume(path)
                os.rmdir(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("could not remove %s: %s", path, exc)
