"""Small image archives made with :mod:`tarfile`, for :mod:`corral.node.oci`'s tests.

A layer is a list of :class:`Entry`; :func:`layer_tar` turns it into tar bytes (members in
the order given, nothing checked: hostile layers are the point), :func:`docker_archive` and
:func:`oci_archive` wrap layers and a config into a ``docker save`` tarball or an OCI
image layout as a tar. No network, no Docker.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass
class Entry:
    """One tar member: ``kind`` is ``file``, ``dir``, ``symlink``, ``hardlink``, ``chr``,
    ``blk`` or ``fifo``; ``target`` is a link's target."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    target: str = ""
    uid: int = 0
    gid: int = 0
    size: int | None = None  # declared size, when it must differ from len(data)
    pax: dict[str, str] = field(default_factory=dict)


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return Entry(name, "file", data, mode, **kw)  # type: ignore[arg-type]


def directory(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(name, "dir", mode=mode, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, "hardlink", target=target)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def layer_tar(entries: list[Entry]) -> bytes:
    """Tar bytes assembled by hand, so that a member's data may differ from its header's
    size (``Entry.size``)."""
    out = bytearray()
    for e in entries:
        info = tarfile.TarInfo(e.name)
        info.type = _TYPES[e.kind]
        info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, 1_700_000_000
        info.linkname = e.target
        info.pax_headers = dict(e.pax)
        if e.kind in ("chr", "blk"):
            info.devmajor, info.devminor = 1, 3
        info.size = (len(e.data) if e.kind == "file" else 0) if e.size is None else e.size
        out += info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        out += e.data + b"\0" * (-len(e.data) % tarfile.BLOCKSIZE)
    return bytes(out + b"\0" * (2 * tarfile.BLOCKSIZE))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config(diff_ids: list[str], **settings: object) -> dict[str, object]:
    return {"architecture": ARCH, "os": "linux", "config": settings,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def docker_archive(path: Path, layers: list[bytes], settings: dict[str, object] | None = None,
                   *, gzip_layers: bool = False, diff_ids: list[str] | None = None,
                   tags: tuple[str, ...] = ("example:latest",)) -> Path:
    """A ``docker save`` tarball: ``<n>/layer.tar`` per layer, a config, manifest.json."""
    diff_ids = diff_ids or [sha256(layer) for layer in layers]
    doc = json.dumps(config(diff_ids, **(settings or {}))).encode()
    config_name = hashlib.sha256(doc).hexdigest() + ".json"
    names = [f"{n:02d}/layer.tar" for n in range(len(layers))]
    with tarfile.open(path, "w") as tar:
        for name, layer in zip(names, layers, strict=True):
            _add(tar, name, gzip.compress(layer, mtime=0) if gzip_layers else layer)
        _add(tar, config_name, doc)
        manifest = [{"Config": config_name, "RepoTags": list(tags), "Layers": names}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return path


def oci_archive(path: Path, layers: list[bytes], settings: dict[str, object] | None = None,
                *, gzip_layers: bool = True, diff_ids: list[str] | None = None,
                ref: str = "latest", multi_platform: bool = False) -> Path:
    """An OCI image layout as a tar; ``multi_platform``: the manifest sits behind an index
    that also lists an image for another architecture."""
    diff_ids = diff_ids or [sha256(layer) for layer in layers]
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = sha256(data)
        blobs[digest[7:]] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": blob(json.dumps(config(diff_ids, **(settings or {}))).encode(),
                               "application/vnd.oci.image.config.v1+json"),
                "layers": [blob(gzip.compress(layer, mtime=0) if gzip_layers else layer,
                                layer_type) for layer in layers]}
    top = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    if multi_platform:
        other = dict(top, digest=sha256(b"missing"), platform={"os": "linux",
                                                                "architecture": "s390x"})
        index = {"schemaVersion": 2, "manifests": [
            other, dict(top, platform={"os": "linux", "architecture": ARCH})]}
        top = blob(json.dumps(index).encode(), "application/vnd.oci.image.index.v1+json")
    top["annotations"] = {"org.opencontainers.image.ref.name": ref}
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": [top]}).encode())
        for hexdigest, data in blobs.items():
            _add(tar, f"blobs/sha256/{hexdigest}", data)
    return path
