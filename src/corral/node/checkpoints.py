"""Memory snapshots: a running sandbox kept whole on disk, to start new sandboxes from.

:meth:`corral.node.Node.snapshot` keeps a running sandbox's memory, processes (a Jupyter
kernel and its variables too) and files, and lets it run on (:func:`.pausing.keep_memory`);
:meth:`~corral.node.Node.create_from_snapshot` starts a new sandbox exactly where it was,
and :meth:`~corral.node.Node.fork` does both at once for ``n`` copies. gVisor only: its
checkpoint is what keeps the memory (namespaces would need CRIU, which does not work on
this kernel); docs/snapshots.md says what each copy inherits.

One folder per snapshot, ``<data dir>/snapshots/<snapshot id>/`` (0700, root alone: the
memory holds whatever secrets the sandbox had)::

    image/          the runtime's checkpoint (gVisor: checkpoint.img, pages*.img)
    upper/          the sandbox's writable layer at that instant
    snapshot.json   what a sandbox started from it needs (:class:`MemorySnapshot`)

``snapshot.json`` is written last: a folder without it (a crash midway) is not a snapshot,
and the node's start removes it. A snapshot names its image's layers by path; the node
keeps those images from being pruned while the snapshot exists, and a restore checks they
are still the image's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.api.errors import InternalError, NotFoundError
from corral.api.limits import MAX_FORK as MAX_FORK

from . import records

SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]{16}$")
META_NAME = "snapshot.json"
META_FORMAT = 1
MAX_META_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class MemorySnapshot:
    """A memory snapshot: its id, the sandbox it kept, and what a sandbox started from it
    gets (the same image, resources, env, working directory, user and volumes)."""

    id: str
    #: The sandbox as it was (its record: image, runtime, resources, env, ...).
    sandbox: records.SandboxRecord
    #: The image's bottom layer and layers when it was taken (checked at each restore).
    rootfs: str
    layers: tuple[str, ...]
    #: The code interpreter's kernels (:meth:`NodeCodeInterpreter.kernels`); None: none.
    kernels: dict[str, Any] | None
    created_at: float
    #: What its folder holds on disk, in bytes.
    size_bytes: int = 0

    @property
    def sandbox_id(self) -> str:
        """The id of the sandbox it was taken of."""
        return self.sandbox.id


class SnapshotStore:
    """The node's memory snapshots, in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_dir(self) -> tuple[str, Path]:
        """A new snapshot's id and its (empty, incomplete) folder."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        snapshot_id = f"snap-{secrets.token_hex(8)}"
        path = self.root / snapshot_id
        path.mkdir(mode=0o700)
        return snapshot_id, path

    def path(self, snapshot_id: str) -> Path:
        """A snapshot's folder (whether it exists or not); NotFoundError for a malformed id."""
        if not isinstance(snapshot_id, str) or not SNAPSHOT_ID.match(snapshot_id):
            raise NotFoundError(f"no snapshot {snapshot_id!r:.80}")
        return self.root / snapshot_id

    def save(self, snapshot: MemorySnapshot) -> MemorySnapshot:
        """Write ``snapshot.json`` into its folder (last: the snapshot is complete once
        it is there); returns the snapshot with its size on disk."""
        folder = self.path(snapshot.id)
        sized = MemorySnapshot(snapshot.id, snapshot.sandbox, snapshot.rootfs, snapshot.layers,
                               snapshot.kernels, snapshot.created_at, _disk_usage(folder))
        body = {"format": META_FORMAT, "id": sized.id, "sandbox": records.to_body(sized.sandbox),
                "rootfs": sized.rootfs, "layers": list(sized.layers), "kernels": sized.kernels,
                "created_at": sized.created_at, "size_bytes": sized.size_bytes}
        tmp = folder / f".{META_NAME}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / META_NAME)
        return sized

    def get(self, snapshot_id: str) -> MemorySnapshot:
        """A complete snapshot; NotFoundError if there is none by that id."""
        folder = self.path(snapshot_id)
        try:
            fd = os.open(folder / META_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFoundError(f"no snapshot {snapshot_id}") from None
        except OSError as exc:
            raise InternalError(f"snapshot {snapshot_id}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_META_BYTES + 1)
        try:
            return _parse(raw, snapshot_id)
        except ValueError as exc:
            raise InternalError(f"snapshot {snapshot_id} is unreadable ({exc}); delete it"
                                ) from None

    def all(self) -> list[MemorySnapshot]:
        """Every complete snapshot, oldest first (unreadable ones are left out)."""
        found = []
        for name in sorted(os.listdir(self.root)) if self.root.is_dir() else []:
            if SNAPSHOT_ID.match(name):
                try:
                    found.append(self.get(name))
                except (NotFoundError, InternalError):
                    continue
        return sorted(found, key=lambda snap: snap.created_at)

    def remove(self, snapshot_id: str) -> None:
        """Delete a snapshot (complete or not); NotFoundError if there is none."""
        folder = self.path(snapshot_id)
        if not folder.is_dir():
            raise NotFoundError(f"no snapshot {snapshot_id}")
        discard(folder)

    def sweep(self) -> list[str]:
        """Remove what snapshots cut short left (folders without ``snapshot.json``);
        returns their names."""
        swept = []
        for name in sorted(os.listdir(self.root)) if self.root.is_dir() else []:
            folder = self.root / name
            if not (folder / META_NAME).is_file():
                discard(folder)
                swept.append(name)
        return swept


def discard(folder: Path) -> None:
    """Delete a snapshot's folder (its files are the sandbox's; no link is followed)."""
    if folder.is_symlink() or not folder.is_dir():
        folder.unlink(missing_ok=True)
        return
    shutil.rmtree(folder)


def _disk_usage(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (no link followed)."""
    total = 0
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            total += os.lstat(os.path.join(parent, name)).st_blocks * 512
    return total


def _parse(raw: bytes, snapshot_id: str) -> MemorySnapshot:
    if len(raw) > MAX_META_BYTES:
        raise ValueError("its description is too large")
    body = json.loads(raw)
    if not isinstance(body, dict) or body.get("format") != META_FORMAT:
        raise ValueError("unknown format")
    if body.get("id") != snapshot_id:
        raise ValueError("it names another snapshot")
    sandbox = records.parse(body.get("sandbox"))
    layers = body.get("layers")
    kernels = body.get("kernels")
    rootfs, created, size = body.get("rootfs"), body.get("created_at"), body.get("size_bytes")
    if (not isinstance(rootfs, str) or not isinstance(layers, list)
            or not all(isinstance(layer, str) for layer in layers)
            or not isinstance(created, (int, float)) or not isinstance(size, int)
            or not (kernels is None or _kernels_ok(kernels))):
        raise ValueError("malformed description")
    return MemorySnapshot(snapshot_id, sandbox, rootfs, tuple(layers), kernels, float(created),
                          size)


def _kernels_ok(kernels: object) -> bool:
    if not isinstance(kernels, dict):
        return False
    numbers = [kernels.get(key) for key in ("command_id", "pid", "next_id")]
    contexts = kernels.get("contexts")
    return (all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)
            and isinstance(contexts, list)
            and all(isinstance(c, dict) and all(isinstance(c.get(k), str)
                                                for k in ("id", "language", "cwd"))
                    and isinstance(c.get("env"), dict) for c in contexts))
