"""Importing OCI archives as images: ``docker save`` tarballs and OCI image layouts.

:func:`import_archive` reads one image out of an archive and keeps it as a built image
(:mod:`.layers`) with no base: its first layer is the sandbox's root filesystem.

* **Formats.** A ``docker save`` tarball (``manifest.json``, a config and a tar per layer;
  legacy ones link repeated layers with symlinks, resolved inside the archive), or an OCI
  image layout as a tar (``oci-layout``, ``index.json``, ``blobs/sha256/...``; nested and
  multi-platform indexes are followed to this host's platform). The archive itself may be
  gzip-compressed, and so may each layer (zstd layers are refused). The archive is read in
  place, never extracted: only the JSON documents it names and the layer blobs are read,
  every blob of an OCI layout checked against its digest and size.
* **Layers.** Each image layer becomes one Corral layer keyed by
  ``sha256("corral/oci-layer/v1" NUL diff_id)`` (:func:`layer_key`): importing the same
  image again, or another image on the same base layers, reuses the layers already on
  disk without reading their blobs (a layer an image repeats, as many repeat the empty
  one, gets a key per copy: overlayfs refuses one folder twice in a stack). A layer is
  published only once what was unpacked hashes to its ``diff_id``, so no archive can
  plant content under another layer's key.
  OCI whiteouts become overlayfs ones: ``.wh.NAME`` a character device 0/0 named ``NAME``,
  ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` attribute on its directory; AUFS
  metadata (``.wh..wh.plnk`` and the like) is skipped, as Docker does.
* **The Corral layer.** The image gets one small layer of its own on top, the same for
  every image with the same working directory (so shared on disk): the mount points the
  runtimes bind over (``/.corral``, the agent bundle; ``/.corral-run``; ``/proc``,
  ``/dev``, ``/sys``) as empty opaque directories, root's, 0755. Opaque, they are real
  directories whatever the image has there (a symlink ``/.corral -> /etc`` would otherwise
  steer a bind mount), and nothing of the image shows through them. The agent is a static
  binary, so the image needs nothing else to run commands: no user, no shell, no libc (a
  Debian recipe's ``customize_rootfs`` also adds ``user`` and resets ``/etc/hosts``; an
  imported image keeps its own). If the config's ``WorkingDir`` is missing from every
  layer, it is made there too (0755, root's; existing parents keep their owner and mode),
  as Docker makes it when a container starts.
* **The manifest** records the config's ``Env``, ``WorkingDir`` (default ``/``), ``User``
  (default ``root``), ``Entrypoint``, ``Cmd`` and ``Labels``; an image for another OS or
  CPU architecture than the node's is refused.

Every layer is hostile input. Its tar is read as a stream with :mod:`tarfile` and each
member checked and written by hand (``extractall`` is never called): a path is walked one
component at a time from a descriptor of the layer's root, each opened ``O_NOFOLLOW``, so
nothing is ever written through a link (``a -> /etc`` then ``a/passwd`` is refused).
Refused with :class:`InvalidArgumentError` naming the member: absolute paths and ``..``;
hard links whose target is absolute, has ``..``, or is not an earlier file or symlink of
the same layer (they are made as real links); whiteouts that are not empty files, that
name ``.``, ``..`` or nothing, that are used as directories, and an opaque layer root;
sparse members, members cut short or longer than their header says (a bad header where
:mod:`tarfile` would quietly stop), extension headers over :data:`MAX_HEADER_BYTES`, paths
deeper than :data:`MAX_DEPTH`; and more members, bytes or expansion than the
:class:`ImportLimits` allow. Neutralised: device nodes and FIFOs are dropped (sandboxes
get their own ``/dev``); setuid and setgid bits are cleared (a directory keeps its
setgid); owners outside ``0..65535`` become root; extended attributes are not restored.
Symlinks are kept as they are, absolute or not: they are resolved inside the sandbox,
whose root is the image, and never by the host (:func:`.layers.neutralise` and the layer
store's removal use ``lstat`` and descriptors).

Debian's ``umoci`` (0.4.7) was weighed and set aside: it unpacks only a whole root
filesystem with the whiteouts applied, not one overlayfs tree per layer, takes only an
OCI layout directory (a ``docker save`` tarball would need ``skopeo`` first), and has no
bound on what a layer decompresses to. Importing needs root: whiteouts are device nodes,
and an opaque directory's attribute is in the ``trusted`` namespace.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn, Protocol

from corral.api.errors import InternalError, InvalidArgumentError
from corral.api.limits import MAX_ENV_BYTES, MAX_ENV_VARS, MAX_PATH, NAME_MAX
from corral.runtime.agent_bundle import CHANNEL_MOUNT_POINT, MOUNT_POINT

from .layers import LayerStore, Manifest

_MIB = 1024 * 1024
_GIB = 1024 * _MIB

#: Largest archive accepted, as given and (a gzip-compressed one) once decompressed.
MAX_ARCHIVE_BYTES = 8 * _GIB
#: Most members of the archive itself (its JSON documents and layer blobs).
MAX_ARCHIVE_MEMBERS = 10_000
#: Most layers of one image (Docker's own bound; overlayfs stacks up to 500).
MAX_LAYERS = 127
#: Most members of the layers one import unpacks, all layers together.
MAX_ENTRIES = 1_000_000
#: Most bytes the layers of one import unpack to (their tar streams), all together.
MAX_UNPACKED_BYTES = 32 * _GIB
#: Most a layer may expand past :data:`RATIO_FLOOR_BYTES`: unpacked over stored bytes.
#: gzip tops out near 1030; real layers stay under 20.
MAX_RATIO = 200
#: Unpacked bytes of one layer below which its expansion is not checked.
RATIO_FLOOR_BYTES = 64 * _MIB
#: Deepest path in a layer, in components (real images stay under 30).
MAX_DEPTH = 128
#: Largest JSON document read (manifest, index, config).
MAX_JSON_BYTES = 4 * _MIB
#: Largest tar extension header (PAX, GNU long name) held in memory.
MAX_HEADER_BYTES = 1 * _MIB
#: Bump when layers or the Corral layer are unpacked differently: every key changes.
FORMAT = 1

_OPAQUE_XATTR = "trusted.overlay.opaque"
_WH, _WH_META, _WH_OPAQUE = ".wh.", ".wh..wh.", ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MOUNT_POINTS = tuple(p.strip("/") for p in (MOUNT_POINT, CHANNEL_MOUNT_POINT,
                                             "/proc", "/dev", "/sys"))
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
_ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
_HOST_ARCH = _ARCHES.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class ImportLimits:
    """Bounds of one import; the defaults are this module's constants."""

    archive_bytes: int = MAX_ARCHIVE_BYTES
    archive_members: int = MAX_ARCHIVE_MEMBERS
    layers: int = MAX_LAYERS
    entries: int = MAX_ENTRIES
    unpacked_bytes: int = MAX_UNPACKED_BYTES
    ratio: int = MAX_RATIO
    ratio_floor_bytes: int = RATIO_FLOOR_BYTES


def layer_key(diff_id: str, copy: int = 0) -> str:
    """The Corral layer key of the image layer whose uncompressed tar has ``diff_id``;
    ``copy``: how many layers of the same image had it before (overlayfs refuses a
    folder twice in one stack, and images do repeat layers, the empty one above all)."""
    suffix = f"\0{copy}" if copy else ""
    return hashlib.sha256(f"corral/oci-layer/v{FORMAT}\0{diff_id}{suffix}".encode()
                          ).hexdigest()


def import_archive(store: LayerStore, archive: Path, *, tag: str | None = None,
                   limits: ImportLimits = ImportLimits()) -> Manifest:
    """Import the image in ``archive`` into ``store`` and return its saved manifest.

    ``tag``: which image, when the archive holds several (a ``RepoTags`` entry of a
    ``docker save`` tarball, an OCI layout's ``org.opencontainers.image.ref.name``).
    Raises :class:`InvalidArgumentError` for an archive that is malformed, hostile or
    over ``limits``; nothing is published then but the layers already complete.
    """
    if os.geteuid() != 0:
        raise InternalError("importing an image needs root (its whiteouts are device nodes)")
    with store.building(), _open_archive(store, Path(archive), limits) as tar:
        source = _Archive(tar, limits)
        try:
            config, layers = (_docker_image(source, tag) if "manifest.json" in source.members
                              else _oci_image(source, tag))
            fields = _image_fields(config)
        except (TypeError, AttributeError, KeyError, ValueError) as exc:  # hostile JSON
            raise InvalidArgumentError(f"malformed image metadata: {exc!r}") from exc
        if len(layers) > limits.layers:
            raise InvalidArgumentError(f"the image has {len(layers)} layers; at most "
                                       f"{limits.layers} are accepted")
        budget = _Budget(limits)
        keys: list[str] = []
        for number, layer in enumerate(layers, 1):
            key = layer_key(layer.diff_id, sum(lr.diff_id == layer.diff_id
                                               for lr in layers[:number - 1]))
            if not store.has_layer(key):
                _import_layer(store, source, layer, key, budget, f"layer {number}")
            keys.append(key)
        keys.append(_corral_layer(store, keys, str(fields["workdir"])))
        steps = (*(f"IMPORT {layer.diff_id}" for layer in layers), "CORRAL mount points")
        return store.save(Manifest(base="", base_key="", layers=tuple(keys), steps=steps,
                                   **fields))


# -- the archive --------------------------------------------------------------------------


@contextlib.contextmanager
def _open_archive(store: LayerStore, path: Path, limits: ImportLimits
                  ) -> Iterator[tarfile.TarFile]:
    """The archive as a seekable tar; a gzip'd one is decompressed into an unnamed file."""
    with contextlib.ExitStack() as stack:
        try:
            f: IO[bytes] = stack.enter_context(open(path, "rb"))
            info = os.fstat(f.fileno())
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read archive {path.name}: {exc}") from exc
        if not stat.S_ISREG(info.st_mode) or info.st_size > limits.archive_bytes:
            raise InvalidArgumentError(f"archive {path.name} is not a regular file of at "
                                       f"most {limits.archive_bytes} bytes")
        head = f.read(6)
        f.seek(0)
        if head.startswith(b"\x1f\x8b"):
            store.root.mkdir(mode=0o755, parents=True, exist_ok=True)
            plain = stack.enter_context(tempfile.TemporaryFile(dir=store.root))

            def check(n: int, total: int) -> None:
                if total > limits.archive_bytes:
                    _refuse(f"archive {path.name} decompresses to more than "
                            f"{limits.archive_bytes} bytes")

            meter = _Meter(gzip.GzipFile(fileobj=f, mode="rb"), check)
            try:
                shutil.copyfileobj(meter, plain, _MIB)
            except (OSError, EOFError) as exc:
                raise InvalidArgumentError(f"archive {path.name}: bad gzip: {exc}") from exc
            plain.seek(0)
            f = plain
        elif head.startswith((b"\xfd7zXZ", b"BZh", b"\x28\xb5\x2f\xfd")):
            raise InvalidArgumentError(f"archive {path.name} is xz, bzip2 or zstd "
                                       "compressed; give it uncompressed or gzip'd")
        try:
            tar = stack.enter_context(tarfile.open(fileobj=f, mode="r:",
                                                   tarinfo=_BoundedTarInfo))
        except tarfile.TarError as exc:
            raise InvalidArgumentError(f"{path.name} is not a tar archive: {exc}") from exc
        yield tar


class _Archive:
    """The archive's members by name, read in place (nothing of it is extracted)."""

    def __init__(self, tar: tarfile.TarFile, limits: ImportLimits) -> None:
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        count = 0
        try:
            while (member := tar.next()) is not None:
                count += 1
                if count > limits.archive_members:
                    raise InvalidArgumentError(f"the archive has more than "
                                               f"{limits.archive_members} members")
                name = "/".join(_parts(member.name, "archive member"))
                if not (member.isreg() or member.issym()):
                    continue
                if name in self.members:
                    raise InvalidArgumentError(f"archive member {name!r} appears twice")
                self.members[name] = member
        except tarfile.TarError as exc:
            raise InvalidArgumentError(f"the archive is not a valid tar: {exc}") from exc

    def open(self, name: str, what: str) -> tuple[IO[bytes], int]:
        """A member's contents and size; symlinks followed inside the archive only."""
        for _ in range(8):
            member = self.members.get(name)
            if member is None:
                raise InvalidArgumentError(f"{what}: {name!r} is not in the archive")
            if not member.issym():
                data = self.tar.extractfile(member)
                if data is None:
                    raise InvalidArgumentError(f"{what}: {name!r} is not a file")
                return data, member.size
            if member.linkname.startswith("/"):
                _refuse(f"{what}: {name!r} is an absolute symlink")
            target = "/".join([*name.split("/")[:-1], member.linkname])
            name = "/".join(_parts(target, f"{what}: symlink", up=True))
        raise InvalidArgumentError(f"{what}: {name!r}: too many symlinks")

    def json(self, name: str, what: str, digest: str | None = None,
             size: int | None = None) -> Any:
        data, actual = self.open(name, what)
        if actual > MAX_JSON_BYTES or (size is not None and actual != size):
            raise InvalidArgumentError(f"{what} has {actual} bytes (expected "
                                       f"{size or f'at most {MAX_JSON_BYTES}'})")
        raw = data.read()
        if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
            raise InvalidArgumentError(f"{what} does not match its digest")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise InvalidArgumentError(f"{what} is not valid JSON: {exc}") from exc

    def blob_json(self, descriptor: object, what: str) -> Any:
        hexdigest, size = _descriptor(descriptor, what)
        return self.json(f"blobs/sha256/{hexdigest}", what, hexdigest, size)


@dataclass(frozen=True)
class _Layer:
    member: str
    diff_id: str
    digest: str | None = None  # an OCI blob's sha256 hex, checked as it is read
    size: int | None = None


def _docker_image(source: _Archive, tag: str | None) -> tuple[dict[str, Any], list[_Layer]]:
    doc = source.json("manifest.json", "manifest.json")
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise InvalidArgumentError("manifest.json is not a list of images")
    tags = [t for e in doc for t in _strings(e.get("RepoTags"))]
    chosen = [e for e in doc if tag in _strings(e.get("RepoTags"))] if tag else doc
    if len(chosen) != 1:
        raise InvalidArgumentError(f"the archive holds {len(doc)} images and {len(chosen)} "
                                   f"match; name one by tag ({', '.join(tags) or 'none'})")
    entry = chosen[0]
    names = entry.get("Layers")
    if not isinstance(entry.get("Config"), str) or not isinstance(names, list) or not all(
            isinstance(n, str) for n in names):
        raise InvalidArgumentError("manifest.json: an image needs Config and Layers")
    config = source.json("/".join(_parts(entry["Config"], "Config")), "the image config")
    diff_ids = _diff_ids(config, len(names))
    return config, [_Layer("/".join(_parts(n, "a layer")), d) for n, d in
                    zip(names, diff_ids, strict=True)]


def _oci_image(source: _Archive, tag: str | None) -> tuple[dict[str, Any], list[_Layer]]:
    if "oci-layout" not in source.members or "index.json" not in source.members:
        raise InvalidArgumentError("the archive is neither a docker save tarball "
                                   "(manifest.json) nor an OCI layout (oci-layout, index.json)")
    layout = source.json("oci-layout", "oci-layout")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise InvalidArgumentError("oci-layout has no imageLayoutVersion")
    descriptor = _choose(source, source.json("index.json", "index.json"), tag, 0)
    manifest = source.blob_json(descriptor, "the image manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise InvalidArgumentError("the image manifest has no layers")
    config = source.blob_json(manifest.get("config"), "the image config")
    descriptors = manifest["layers"]
    layers = []
    diff_ids = _diff_ids(config, len(descriptors))
    for number, (desc, diff_id) in enumerate(zip(descriptors, diff_ids, strict=True), 1):
        hexdigest, size = _descriptor(desc, f"layer {number}")
        if "zstd" in str(desc.get("mediaType", "")):
            raise InvalidArgumentError(f"layer {number} is zstd-compressed; only plain and "
                                       "gzip'd layers are supported")
        layers.append(_Layer(f"blobs/sha256/{hexdigest}", diff_id, hexdigest, size))
    return config, layers


def _choose(source: _Archive, index: object, tag: str | None, depth: int) -> object:
    """The descriptor of the image to import in an index (of this host's platform)."""
    found = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(found, list) or not all(isinstance(d, dict) for d in found):
        raise InvalidArgumentError("an image index has no list of manifests")
    if tag is not None:
        found = [d for d in found if isinstance(d.get("annotations"), dict)
                 and d["annotations"].get("org.opencontainers.image.ref.name") == tag]
    if len(found) > 1:
        found = [d for d in found if isinstance(d.get("platform"), dict)
                 and d["platform"].get("os") == "linux"
                 and d["platform"].get("architecture") == _HOST_ARCH][:1]
    if not found:
        raise InvalidArgumentError(f"no image {'tagged ' + repr(tag) if tag else ''} "
                                   f"for linux/{_HOST_ARCH} in the archive")
    chosen = found[0]
    if chosen.get("mediaType") in _INDEX_TYPES:
        if depth >= 4:
            raise InvalidArgumentError("image indexes nested too deep")
        return _choose(source, source.blob_json(chosen, "an image index"), None, depth + 1)
    return chosen


def _descriptor(descriptor: object, what: str) -> tuple[str, int]:
    """A descriptor's sha256 (hex) and size, checked."""
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    size = descriptor.get("size") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or not _is_sha256(digest) or not isinstance(size, int):
        raise InvalidArgumentError(f"{what}: a descriptor needs a sha256 digest and a size")
    return digest[7:], size


def _diff_ids(config: object, count: int) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and _is_sha256(d)
                                                 for d in diff_ids):
        raise InvalidArgumentError("the image config has no rootfs.diff_ids (sha256)")
    if len(diff_ids) != count:
        raise InvalidArgumentError(f"the image config lists {len(diff_ids)} layers, its "
                                   f"manifest {count}")
    return diff_ids


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _is_sha256(digest: str) -> bool:
    return (digest.startswith("sha256:") and len(digest) == 71
            and set(digest[7:]) <= set("0123456789abcdef"))


def _image_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields of an image config (what its sandboxes start with)."""
    system, arch = config.get("os") or "linux", config.get("architecture") or _HOST_ARCH
    if (system, arch) != ("linux", _HOST_ARCH):
        raise InvalidArgumentError(f"the image is for {system}/{arch}; this node runs "
                                   f"linux/{_HOST_ARCH}")
    c = config.get("config") or {}
    if not isinstance(c, dict):
        raise InvalidArgumentError("the image config's config is not an object")

    def text(value: object, what: str, default: str = "") -> str:
        if value is None:
            return default
        if not isinstance(value, str) or "\0" in value or len(value) > MAX_PATH:
            raise InvalidArgumentError(f"the image config's {what} is not a string")
        return value or default

    def argv(value: object, what: str) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            raise InvalidArgumentError(f"the image config's {what} is not a list")
        return tuple(text(v, what) for v in value)

    env = [text(v, "Env").partition("=") for v in argv(c.get("Env"), "Env") or ()]
    pairs = tuple(dict((k, v) for k, eq, v in env if k and eq).items())
    if len(pairs) > MAX_ENV_VARS or sum(len(k) + len(v) for k, v in pairs) > MAX_ENV_BYTES:
        raise InvalidArgumentError(f"the image config's Env has more than {MAX_ENV_VARS} "
                                   f"variables or {MAX_ENV_BYTES} bytes")
    labels = c.get("Labels") or {}
    if not isinstance(labels, dict):
        raise InvalidArgumentError("the image config's Labels is not an object")
    workdir = _parts(text(c.get("WorkingDir"), "WorkingDir").lstrip("/"),
                     "the image config's WorkingDir", up=True)
    return {"env": pairs, "workdir": "/" + "/".join(workdir),
            "user": text(c.get("User"), "User", "root"),
            "entrypoint": argv(c.get("Entrypoint"), "Entrypoint"),
            "cmd": argv(c.get("Cmd"), "Cmd"),
            "labels": tuple(sorted((text(k, "Labels"), text(v, "Labels"))
                                   for k, v in labels.items()))}


# -- one layer ----------------------------------------------------------------------------


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an extension header too large to hold in memory (tarfile reads it whole),
    and a bad header where tarfile would quietly end the archive (what a member longer
    than its header says looks like)."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> _BoundedTarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            # The end of the archive (a zero block, or no more bytes) is no error; an
            # invalid or truncated header is (typeshed does not name those classes).
            if type(exc).__name__ in ("EOFHeaderError", "EmptyHeaderError"):
                raise
            raise InvalidArgumentError(f"a bad tar header ({exc}): a member longer than "
                                       "its header says, or not a tar") from exc

    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENSION_TYPES and self.size > MAX_HEADER_BYTES:
            raise InvalidArgumentError(f"a tar extension header of {self.size} bytes "
                                       f"(at most {MAX_HEADER_BYTES})")
        return super()._proc_member(tarfile)  # type: ignore[misc, no-any-return]


_EXTENSION_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                    tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Meter(io.RawIOBase):
    """A stream read once, counted, and hashed unless ``hashing`` is false;
    ``check(n, total)`` sees each read."""

    def __init__(self, raw: _Readable, check: Callable[[int, int], None] | None = None,
                 hashing: bool = True) -> None:
        self.raw, self.check, self.hashing = raw, check, hashing
        self.hash, self.count = hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        if self.hashing:
            self.hash.update(data)
        self.count += len(data)
        if self.check is not None:
            self.check(len(data), self.count)
        buffer[:len(data)] = data
        return len(data)


@dataclass
class _Budget:
    """What the layers of one import have used so far."""

    limits: ImportLimits
    entries: int = 0
    unpacked: int = 0


def _import_layer(store: LayerStore, source: _Archive, layer: _Layer, key: str,
                  budget: _Budget, what: str) -> None:
    raw, size = source.open(layer.member, what)
    if layer.size is not None and size != layer.size:
        raise InvalidArgumentError(f"{what} has {size} bytes, its descriptor says "
                                   f"{layer.size}")
    limits = budget.limits
    stored = _Meter(raw, hashing=layer.digest is not None)
    buffered = io.BufferedReader(stored, _MIB)
    head = buffered.peek(4)[:4]
    if head == b"\x28\xb5\x2f\xfd":
        raise InvalidArgumentError(f"{what} is zstd-compressed; only plain and gzip'd "
                                   "layers are supported")

    def check(n: int, total: int) -> None:
        budget.unpacked += n
        if budget.unpacked > limits.unpacked_bytes:
            _refuse(f"{what}: the layers unpack to more than {limits.unpacked_bytes} bytes")
        if total > max(limits.ratio_floor_bytes, limits.ratio * stored.count):
            _refuse(f"{what} expands more than {limits.ratio} times (a decompression bomb)")

    body = gzip.GzipFile(fileobj=buffered, mode="rb") if head[:2] == b"\x1f\x8b" else buffered
    unpacked = _Meter(body, check)
    with store.new_layer(key, {"source": "oci", "diff_id": layer.diff_id}, 0) as target:
        diff = target()
        diff.mkdir(mode=0o755)
        root_fd = os.open(diff, _DIR_FLAGS)
        writer = _LayerWriter(root_fd, budget, what)
        try:
            tar = tarfile.open(fileobj=unpacked, mode="r|", tarinfo=_BoundedTarInfo)
            while (member := tar.next()) is not None:
                # A stream: nothing looks back, and memory stays flat (undeclared in typeshed).
                tar.members.clear()  # type: ignore[attr-defined]
                writer.add(tar, member)
            writer.finish()
            while unpacked.read(_MIB) or buffered.read(_MIB):
                pass  # the rest of the stream counts in both digests
        except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
            raise InvalidArgumentError(f"{what} is not a valid (gzip'd) tar: {exc}") from exc
        finally:
            writer.forget()
            os.close(root_fd)
        if f"sha256:{unpacked.hash.hexdigest()}" != layer.diff_id:
            raise InvalidArgumentError(f"{what} does not match its diff_id {layer.diff_id}")
        if layer.digest is not None and stored.hash.hexdigest() != layer.digest:
            raise InvalidArgumentError(f"{what} does not match its digest")


class _LayerWriter:
    """Writes a layer's members below ``root_fd``, never through a link (see the module)."""

    #: Most folder descriptors kept open for the members that follow.
    CACHED_DIRS = 2 * MAX_DEPTH

    def __init__(self, root_fd: int, budget: _Budget, what: str) -> None:
        self.root_fd, self.budget, self.what = root_fd, budget, what
        self.dir_times: dict[tuple[str, ...], int] = {}  # the last member's, per folder
        self.dirs: dict[tuple[str, ...], int] = {}

    def folder(self, parts: list[str], what: str) -> int:
        """A descriptor (borrowed: never closed by the caller) of the folder ``parts``,
        made if missing. Descriptors of folders already opened are kept: a folder of the
        layer stays where it is until :meth:`forget` (called before any folder is deleted),
        so one opened through no link stays so."""
        if len(self.dirs) + len(parts) > self.CACHED_DIRS:
            self.forget()
        known = len(parts)
        while known and tuple(parts[:known]) not in self.dirs:
            known -= 1
        fd = self.dirs[tuple(parts[:known])] if known else self.root_fd
        for number in range(known, len(parts)):
            fd = _open_child(fd, parts, number, create=True, what=what)
            self.dirs[tuple(parts[:number + 1])] = fd
        return fd

    def forget(self, below: tuple[str, ...] = ()) -> None:
        """Close the descriptors of ``below`` and the folders in it (of all: ``()``)."""
        for key in [k for k in self.dirs if k[:len(below)] == below]:
            os.close(self.dirs.pop(key))

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.budget.entries += 1
        if self.budget.entries > self.budget.limits.entries:
            _refuse(f"{self.what}: the layers have more than {self.budget.limits.entries} "
                    "members")
        parts = _parts(member.name, f"{self.what}: member")
        if not parts:
            return  # the layer's root: the sandbox's root directory comes from elsewhere
        *parents, base = parts
        if any(p.startswith(_WH) for p in parents):
            if any(p.startswith(_WH_META) for p in parents):
                return  # AUFS metadata (.wh..wh.plnk/...)
            _refuse(f"{self.what}: member {member.name!r} uses a whiteout as a directory")
        if base.startswith(_WH_META) and base != _WH_OPAQUE:
            return  # AUFS metadata
        if not base.startswith(_WH) and (member.ischr() or member.isblk() or member.isfifo()):
            return  # dropped: sandboxes get their own /dev
        try:
            parent = self.folder(parents, f"{self.what}: member {member.name!r}")
            if base.startswith(_WH):
                self._whiteout(member, parent, parents, base)
            else:
                self._entry(tar, member, parent, parts)
        except OSError as exc:
            raise InternalError(f"{self.what}: writing {member.name!r}: {exc}") from exc

    def _whiteout(self, member: tarfile.TarInfo, parent: int, parents: list[str],
                  base: str) -> None:
        if not member.isreg() or member.size:
            _refuse(f"{self.what}: whiteout {member.name!r} is not an empty file")
        if base == _WH_OPAQUE:
            if not parents:
                _refuse(f"{self.what}: {member.name!r} would make the layer's root opaque")
            os.setxattr(parent, _OPAQUE_XATTR, b"y")
            return
        name = base[len(_WH):]
        if name in ("", ".", ".."):
            _refuse(f"{self.what}: whiteout {member.name!r} names no file")
        with contextlib.suppress(FileExistsError):  # this layer's own entry stays
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int,
               parts: list[str]) -> None:
        base = parts[-1]
        if member.issparse() or not (member.isdir() or member.isreg() or member.issym()
                                     or member.islnk()):
            _refuse(f"{self.what}: member {member.name!r} is of an unsupported type "
                    f"{member.type!r}")
        if member.isreg() and member.size > self.budget.limits.unpacked_bytes:
            _refuse(f"{self.what}: member {member.name!r} declares {member.size} bytes")
        linked = f"{self.what}: hard link {member.name!r} to"
        if member.islnk() and _parts(member.linkname, linked) in ([], parts):
            _refuse(f"{self.what}: hard link {member.name!r} links to itself or to the root")
        previous = _clear(parent, base, keep_dir=member.isdir(),
                          before_rmtree=functools.partial(self.forget, tuple(parts)))
        uid, gid = (i if 0 <= i < 65536 else 0 for i in (member.uid, member.gid))
        mtime = int(min(max(member.mtime, 0), 1 << 34) * 1_000_000_000)
        if member.isdir():
            if previous is None or not stat.S_ISDIR(previous.st_mode):
                os.mkdir(base, 0o700, dir_fd=parent)
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, member.mode & 0o3777)
                if previous is not None and stat.S_ISCHR(previous.st_mode):
                    os.setxattr(fd, _OPAQUE_XATTR, b"y")  # over its own whiteout
            finally:
                os.close(fd)
            self.dir_times[tuple(parts)] = mtime
        elif member.isreg():
            self._file(tar, member, parent, base, uid, gid, mtime)
        elif member.issym():
            if "\0" in member.linkname or len(os.fsencode(member.linkname)) > MAX_PATH:
                _refuse(f"{self.what}: symlink {member.name!r} has a bad target")
            os.symlink(member.linkname, base, dir_fd=parent)
            os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
            os.utime(base, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
        else:
            source_dir, source_name = self._link_source(member)
            try:
                os.link(source_name, base, src_dir_fd=source_dir, dst_dir_fd=parent,
                        follow_symlinks=False)
            except FileNotFoundError:
                _refuse(f"{self.what}: hard link {member.name!r} lost its target")
            finally:
                os.close(source_dir)

    def _link_source(self, member: tarfile.TarInfo) -> tuple[int, str]:
        """(descriptor of its folder, name) of a hard link's target: a file or symlink
        that an earlier member of this layer made."""
        target = _parts(member.linkname, f"{self.what}: hard link {member.name!r} to")
        what = f"{self.what}: hard link {member.name!r}"
        with contextlib.suppress(FileNotFoundError):
            folder = _open_dir(self.root_fd, target[:-1], create=False, what=what)
            try:
                mode = os.stat(target[-1], dir_fd=folder, follow_symlinks=False).st_mode
                if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                    return folder, target[-1]
            except FileNotFoundError:
                pass
            os.close(folder)
        _refuse(f"{what} does not link to an earlier file of the same layer")

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, base: str,
              uid: int, gid: int, mtime: int) -> None:
        data = tar.extractfile(member)
        if data is None:
            _refuse(f"{self.what}: member {member.name!r} has no data")
        fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent)
        with open(fd, "wb", closefd=True) as out:
            copied = 0
            while chunk := data.read(_MIB):
                out.write(chunk)
                copied += len(chunk)
            if copied != member.size:
                _refuse(f"{self.what}: member {member.name!r} is cut short")
            out.flush()
            os.fchown(fd, uid, gid)
            os.fchmod(fd, member.mode & 0o1777)
            os.utime(fd, ns=(mtime, mtime))

    def finish(self) -> None:
        """Give directories their times (adding their members changed them)."""
        self.forget()
        for parts, mtime in self.dir_times.items():
            try:
                fd = _open_dir(self.root_fd, list(parts), create=False, what="")
            except (OSError, InvalidArgumentError):
                continue  # replaced by a later member
            try:
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)


def _parts(name: str, what: str, *, up: bool = False) -> list[str]:
    """The components of a relative path; absolute paths and ``..`` refused (``up``:
    ``..`` is resolved, but never above the top)."""
    if "\0" in name or len(os.fsencode(name)) > MAX_PATH or name.count("/") > 2 * MAX_DEPTH:
        _refuse(f"{what} {name[:200]!r}: a NUL, or too long")
    if name.startswith("/"):
        _refuse(f"{what} {name[:200]!r}: an absolute path")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and (not up or not parts):
            _refuse(f"{what} {name[:200]!r}: '..' leaves the layer")
        if part == "..":
            parts.pop()
        elif len(os.fsencode(part)) > NAME_MAX:
            _refuse(f"{what} {name[:200]!r}: a name longer than {NAME_MAX} bytes")
        else:
            parts.append(part)
    if len(parts) > MAX_DEPTH:
        _refuse(f"{what} {name[:200]!r}: deeper than {MAX_DEPTH} folders")
    return parts


def _open_dir(root_fd: int, parts: list[str], *, create: bool, what: str) -> int:
    """A descriptor of ``root/parts`` (see :func:`_open_child`), the caller's to close."""
    fd = os.dup(root_fd)
    try:
        for number in range(len(parts)):
            child = _open_child(fd, parts, number, create=create, what=what)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_child(fd: int, parts: list[str], number: int, *, create: bool, what: str) -> int:
    """A descriptor of folder ``parts[number]`` in ``fd``, opened ``O_NOFOLLOW``: a link
    there is refused, never followed. Made (root's, 0755) if missing and ``create``."""
    try:
        try:
            return os.open(parts[number], _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(parts[number], 0o755, dir_fd=fd)
            return os.open(parts[number], _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        _refuse(f"{what} goes through {'/'.join(parts[:number + 1])!r}, which is not a "
                "directory (links are never followed)")


def _clear(parent: int, name: str, *, keep_dir: bool, before_rmtree: Callable[[], None]
           ) -> os.stat_result | None:
    """Make room for a member: remove what an earlier one put there (a directory stays
    for a directory). Returns what was there."""
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        if not keep_dir:
            before_rmtree()
            shutil.rmtree(name, dir_fd=parent)  # descriptor-based: follows no link
    else:
        os.unlink(name, dir_fd=parent)
    return info


def _refuse(message: str) -> NoReturn:
    raise InvalidArgumentError(message)


# -- the Corral layer ---------------------------------------------------------------------


def _corral_layer(store: LayerStore, keys: list[str], workdir: str) -> str:
    """The key of the layer on top of an imported image (see the module), made if new."""
    dirs = [(path, 0o755, 0, 0, True) for path in _MOUNT_POINTS]
    dirs += _workdir_dirs([store.layer_path(k) for k in reversed(keys)], workdir)
    doc = json.dumps({"format": FORMAT, "dirs": dirs}, sort_keys=True)
    key = hashlib.sha256(f"corral/oci-top\0{doc}".encode()).hexdigest()
    if store.has_layer(key):
        return key
    with store.new_layer(key, {"source": "corral", "dirs": [d[0] for d in dirs]},
                         0) as target:
        diff = target()
        diff.mkdir(mode=0o755)
        root_fd = os.open(diff, _DIR_FLAGS)
        try:
            for path, mode, uid, gid, opaque in dirs:
                fd = _open_dir(root_fd, path.split("/"), create=True, what="the Corral layer")
                try:
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, mode)
                    if opaque:
                        os.setxattr(fd, _OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
        finally:
            os.close(root_fd)
    return key


def _workdir_dirs(layers: list[Path], workdir: str) -> list[tuple[str, int, int, int, bool]]:
    """The folders to make so that ``workdir`` exists: none when the image (``layers``,
    top first, merged as overlayfs does) has it or a non-directory on its way; else each
    missing one (0755, root's) under the existing ones, kept as the image has them."""
    parts = [p for p in workdir.split("/") if p]
    if not parts or parts[0] in _MOUNT_POINTS:
        return []
    found: list[os.stat_result] = []  # the topmost layer's folder at each existing prefix
    fds = [os.open(layer, _DIR_FLAGS) for layer in layers]
    try:
        for part in parts:
            seen, below, blocked = None, [], False
            try:
                for fd in fds:
                    try:
                        info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISDIR(info.st_mode):
                        blocked = seen is None and not (stat.S_ISCHR(info.st_mode)
                                                        and info.st_rdev == 0)
                        break  # a whiteout, or a non-directory under a directory
                    seen = seen or info
                    below.append(os.open(part, _DIR_FLAGS, dir_fd=fd))
                    if _opaque(below[-1]):
                        break
            finally:
                for fd in fds:
                    os.close(fd)
                fds = below
            if blocked:
                return []  # a file or link on the way: the image's own business
            if seen is None:
                break
            found.append(seen)
    finally:
        for fd in fds:
            os.close(fd)
    if len(found) == len(parts):
        return []
    return [("/".join(parts[:n + 1]),
             *((found[n].st_mode & 0o3777, found[n].st_uid, found[n].st_gid)
               if n < len(found) else (0o755, 0, 0)), False) for n in range(len(parts))]


def _opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, _OPAQUE_XATTR) == b"y"
    except OSError:
        return False
