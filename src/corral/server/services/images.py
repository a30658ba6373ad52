"""Images for tenants: build contexts, builds, names, quotas and pruning.

The node builds and keeps images content-addressed (:mod:`corral.node.builder`,
:mod:`corral.node.layers`) and knows nothing of tenants. This service holds each tenant's
names for them (``name:tag``, ``latest`` when left out) and answers every reference a
tenant gives (a sandbox's image, a build's base) with the node's: one of the operator's
public images (the node's recipes, such as ``python``), or an id the tenant itself built or
named. Another tenant's image, by name or by id, is answered exactly like one that does not
exist.

A build runs in a task of its own: a client that goes away does not stop it, and its log
stays in the store (:class:`~corral.server.store.images.ImageNameStore`, the last 256 KiB).
Build contexts are tar archives uploaded first (``POST /v1/images/contexts``), unpacked
under the server's data dir with every member checked (:func:`unpack_context`), and
deleted an hour later or when the server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO, Final

from pydantic import BaseModel

from corral.api import models
from corral.api.errors import (InvalidArgumentError, NotFoundError, RequestTooLargeError,
                               ResourceExhaustedError, SandboxError)
from corral.api.image_spec import ImageSpec
from corral.node import Node, NodeSandbox
from corral.node.builder import BuildEvent, with_digests
from corral.node.layers import Manifest, is_image_id

from ..store.images import ImageNameStore, ImageRecord

log = logging.getLogger(__name__)

#: Largest build context upload (the tar as sent), its unpacked bytes and its entries.
MAX_CONTEXT_UPLOAD: Final = 512 * 1024 * 1024
MAX_CONTEXT_UNPACKED: Final = 1024 * 1024 * 1024
MAX_CONTEXT_ENTRIES: Final = 100_000
#: Largest image archive upload (``docker save`` or OCI layout), as sent.
MAX_ARCHIVE_UPLOAD: Final = 8 * 1024 ** 3
#: How long an uploaded context is kept, and how many one tenant may hold at once.
CONTEXT_TTL: Final = 3600.0
MAX_CONTEXTS_PER_TENANT: Final = 8
#: Builds one tenant may run at once.
MAX_BUILDS_PER_TENANT: Final = 2
#: Each tenant's images together, by default (``--image-quota``).
DEFAULT_QUOTA_BYTES: Final = 20 * 1024 ** 3
RESTART_REASON: Final = "the server restarted during the build"


def normalize_name(name: str) -> str:
    """``name`` with its tag (``latest`` when left out)."""
    return name if ":" in name else f"{name}:latest"


class ImageService:
    def __init__(self, node: Node, store: ImageNameStore, contexts_dir: Path,
                 quota_bytes: int = DEFAULT_QUOTA_BYTES) -> None:
        self._node = node
        self._store = store
        self._contexts = contexts_dir
        self.quota_bytes = quota_bytes
        self._building: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        failed = await asyncio.to_thread(self._store.fail_running, RESTART_REASON)
        if failed:
            log.warning("%d image builds were cut short by the restart", failed)
        await asyncio.to_thread(shutil.rmtree, self._contexts, True)
        for pool in self._node.pools:  # warm pools of tenants' images: what each name is now
            if pool.spec.tenant_image:
                tenant, name = pool.spec.image.split("/", 1)
                record = await asyncio.to_thread(self._store.get, tenant, name)
                await self._node.retarget_pool(pool.spec.image,
                                               record.id if record is not None else None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- references ------------------------------------------------------------------------

    def public(self) -> list[str]:
        """The operator's images every tenant may use (the node's built recipes)."""
        return [image.name for image in self._node.images.list()]

    async def resolve(self, tenant: str, ref: str) -> str:
        """What the node calls the image ``ref`` names for ``tenant``; NotFoundError if it
        names none of the tenant's, nor a public one."""
        if is_image_id(ref):
            record = await asyncio.to_thread(self._store.by_id, tenant, ref)
        elif ref in self._node.images.recipes:
            return ref
        else:
            record = await asyncio.to_thread(self._store.get, tenant, normalize_name(ref))
        if record is None:
            raise NotFoundError(f"no image {ref[:80]!r}: build it (corral image build) or "
                                "list yours (corral image ls)")
        return record.id

    # -- contexts --------------------------------------------------------------------------

    async def upload_context(self, tenant: str, body: AsyncIterator[bytes]
                             ) -> models.ImageContextInfo:
        """Take a build context (a tar, gzip allowed) and unpack it for a later build."""
        directory = self._tenant_contexts(tenant)
        await asyncio.to_thread(_expire, directory)
        if directory.is_dir() and len(list(directory.glob("ctx-*"))) >= MAX_CONTEXTS_PER_TENANT:
            raise ResourceExhaustedError(f"{MAX_CONTEXTS_PER_TENANT} build contexts are already "
                                         "waiting; use or let them expire (1 hour)")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        context_id = f"ctx-{secrets.token_hex(16)}"
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".upload-") as upload:
            size = await spool(body, upload, MAX_CONTEXT_UPLOAD, "a build context may be at "
                               f"most {MAX_CONTEXT_UPLOAD >> 20} MiB")
            target = directory / context_id
            try:
                files = await asyncio.to_thread(unpack_context, Path(upload.name), target)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, target, True)
                raise
        expires = datetime.now(UTC) + timedelta(seconds=CONTEXT_TTL)
        return models.ImageContextInfo(id=context_id, size_bytes=size, files=files,
                                       expires_at=expires)

    def _tenant_contexts(self, tenant: str) -> Path:
        return self._contexts / hashlib.sha256(tenant.encode()).hexdigest()[:32]

    def _context(self, tenant: str, context_id: str | None) -> Path | None:
        if context_id is None:
            return None
        path = self._tenant_contexts(tenant) / context_id
        if not path.is_dir():
            raise NotFoundError(f"no build context {context_id!r} (they expire after an "
                                "hour); upload it again")
        return path

    # -- archives --------------------------------------------------------------------------

    async def import_archive(self, tenant: str, body: AsyncIterator[bytes],
                             name: str | None, tag: str | None) -> models.ImageInfo:
        """Import the image of an OCI archive (``docker save`` or an OCI layout, as a tar,
        gzip allowed) and name it for the tenant."""
        name = normalize_name(name) if name is not None else None
        if name is not None:
            self._check_name(name)
        used = await asyncio.to_thread(self._store.used_bytes, tenant)
        if used >= self.quota_bytes:
            raise ResourceExhaustedError(self._quota_message(used))
        directory = self._tenant_contexts(tenant)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".archive-") as upload:
            await spool(body, upload, MAX_ARCHIVE_UPLOAD, "an image archive may be at most "
                        f"{MAX_ARCHIVE_UPLOAD >> 30} GiB")
            manifest = await self._node.import_image(Path(upload.name), tag=tag)
        return await self._name(tenant, name, manifest, None)

    # -- snapshots -------------------------------------------------------------------------

    async def snapshot(self, tenant: str, sandbox: NodeSandbox, name: str | None
                       ) -> models.ImageInfo:
        """Keep a running sandbox's filesystem as one of the tenant's images (the caller
        checked the sandbox is the tenant's)."""
        name = normalize_name(name) if name is not None else None
        if name is not None:
            self._check_name(name)
        used = await asyncio.to_thread(self._store.used_bytes, tenant)
        if used >= self.quota_bytes:
            raise ResourceExhaustedError(self._quota_message(used))
        manifest = await self._node.snapshot_filesystem(sandbox.id)
        return await self._name(tenant, name, manifest, None)

    # -- builds ----------------------------------------------------------------------------

    async def build(self, tenant: str, request: models.ImageBuildRequest
                    ) -> AsyncIterator[BaseModel]:
        """Start a build and return its events as they come (the build itself goes on if
        the caller stops reading)."""
        name = normalize_name(request.name) if request.name is not None else None
        if name is not None:
            self._check_name(name)
        base = await self.resolve(tenant, request.spec.base)
        spec = request.spec.model_copy(update={"base": base})
        context = self._context(tenant, request.context)
        # Every copy's files checked (present, inside the context) before anything runs.
        spec = await asyncio.to_thread(with_digests, spec, context)
        if self._building.get(tenant, 0) >= MAX_BUILDS_PER_TENANT:
            raise ResourceExhaustedError(f"{MAX_BUILDS_PER_TENANT} of your builds are already "
                                         "running; wait for one to end")
        used = await asyncio.to_thread(self._store.used_bytes, tenant)
        if used >= self.quota_bytes:
            raise ResourceExhaustedError(self._quota_message(used))
        build_id = secrets.token_hex(16)
        await asyncio.to_thread(self._store.start_build, build_id, tenant, name)
        queue: asyncio.Queue[BaseModel | None] = asyncio.Queue()
        self._building[tenant] = self._building.get(tenant, 0) + 1
        task = asyncio.get_running_loop().create_task(
            self._run(tenant, build_id, name, spec, context, request.runtime, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _drain(models.BuildStartedEvent(build=build_id), queue)

    async def _run(self, tenant: str, build_id: str, name: str | None, spec: ImageSpec,
                   context: Path | None, runtime: str | None,
                   queue: asyncio.Queue[BaseModel | None]) -> None:
        lines: list[str] = []

        def on_event(event: BuildEvent) -> None:
            if event.kind == "step":
                mark = " (cached)" if event.cached else ""
                lines.append(f"#{event.step}/{event.total} {event.text}{mark}")
                queue.put_nowait(models.BuildStepEvent(step=event.step, total=event.total,
                                                       text=event.text, cached=event.cached))
            elif event.kind == "log":
                lines.append(event.text)
                queue.put_nowait(models.BuildLogEvent(step=event.step, text=event.text))
            if len(lines) > 20_000:
                del lines[:10_000]

        started = time.monotonic()
        try:
            manifest = await self._node.build_image(spec, context=context, runtime=runtime,
                                                    on_event=on_event)
            info = await self._name(tenant, name, manifest, build_id)
            await asyncio.to_thread(self._store.end_build, build_id, "succeeded",
                                    "\n".join(lines), image=manifest.id)
            queue.put_nowait(models.BuildDoneEvent(image=info,
                                                   seconds=time.monotonic() - started))
        except SandboxError as exc:
            await asyncio.to_thread(self._store.end_build, build_id, "failed",
                                    "\n".join(lines), error=exc.message)
            queue.put_nowait(models.ErrorEvent(error=models.ErrorDetail(
                code=exc.code.value, message=exc.message)))
        except BaseException as exc:
            reference = secrets.token_hex(4)
            log.exception("image build %s failed (reference %s)", build_id, reference)
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(
                    self._store.end_build, build_id, "failed", "\n".join(lines),
                    error=f"internal error (reference {reference})"))
            queue.put_nowait(models.ErrorEvent(error=models.ErrorDetail(
                code="internal", message=f"the build failed: internal error (reference "
                f"{reference} in the server's log)")))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._building[tenant] -= 1
            queue.put_nowait(None)

    async def _name(self, tenant: str, name: str | None, manifest: Manifest,
                    build_id: str | None) -> models.ImageInfo:
        owned = await asyncio.to_thread(self._store.by_id, tenant, manifest.id)
        if owned is None:
            used = await asyncio.to_thread(self._store.used_bytes, tenant)
            if used + manifest.size_bytes > self.quota_bytes:
                raise ResourceExhaustedError(self._quota_message(used + manifest.size_bytes))
        record = ImageRecord(tenant=tenant, name=name or manifest.id, id=manifest.id,
                             size_bytes=manifest.size_bytes,
                             created_at=datetime.now(UTC), build=build_id)
        await asyncio.to_thread(self._store.put, record)
        if name is not None:  # a warm pool of this name refills with the new image
            await self._node.retarget_pool(f"{tenant}/{name}", manifest.id)
        return self._info(record, manifest)

    def _quota_message(self, used: int) -> str:
        return (f"your images take {used >> 20} MiB of your {self.quota_bytes >> 20} MiB; "
                "remove some (corral image rm) and prune (corral image prune)")

    def _check_name(self, name: str) -> None:
        repository = name.split(":", 1)[0]
        if repository in self._node.images.recipes or repository == "sha256":
            raise InvalidArgumentError(f"{name!r}: {repository!r} names a public image; "
                                       "choose another name")

    async def build_info(self, tenant: str, build_id: str) -> models.BuildInfo:
        record = None
        if len(build_id) == 32 and all(c in "0123456789abcdef" for c in build_id):
            record = await asyncio.to_thread(self._store.build, tenant, build_id)
        if record is None:
            raise NotFoundError(f"no build {build_id[:40]!r}")
        return models.BuildInfo(id=record.id, name=record.name,
                                state=record.state,  # type: ignore[arg-type]
                                started_at=record.started_at, finished_at=record.finished_at,
                                image=record.image, error=record.error, log=record.log)

    # -- names -----------------------------------------------------------------------------

    async def list(self, tenant: str) -> models.ImageList:
        records = await asyncio.to_thread(self._store.list, tenant)
        found = []
        for name in self.public():
            found.append(models.ImageInfo(name=name, id=name, public=True))
        for record in records:
            found.append(self._info(record, self._manifest(record.id)))
        used = await asyncio.to_thread(self._store.used_bytes, tenant)
        return models.ImageList(images=found, used_bytes=used, quota_bytes=self.quota_bytes)

    async def inspect(self, tenant: str, ref: str) -> models.ImageInfo:
        if ref in self._node.images.recipes:
            image = self._node.images.get(ref)
            return models.ImageInfo(name=ref, id=ref, public=True, size_bytes=image.size_bytes,
                                    env=dict(image.env), workdir=image.workdir,
                                    user=image.user)
        image_id = await self.resolve(tenant, ref)
        record = await asyncio.to_thread(self._store.by_id, tenant, image_id)
        assert record is not None
        if not is_image_id(ref):
            record = await asyncio.to_thread(self._store.get, tenant, normalize_name(ref))
            assert record is not None
        return self._info(record, self._manifest(image_id))

    async def remove(self, tenant: str, ref: str) -> None:
        """Forget the tenant's name ``ref`` (or every name of an id); prune frees the disk."""
        if is_image_id(ref):
            records = [r for r in await asyncio.to_thread(self._store.list, tenant)
                       if r.id == ref]
        else:
            record = await asyncio.to_thread(self._store.get, tenant, normalize_name(ref))
            records = [record] if record is not None else []
        if not records:
            raise NotFoundError(f"no image {ref[:80]!r} of yours")
        for record in records:
            await asyncio.to_thread(self._store.remove, tenant, record.name)
            await self._node.retarget_pool(f"{tenant}/{record.name}", None)

    async def prune(self) -> models.PruneInfo:
        """Delete what no tenant names any more (and no live sandbox uses)."""
        keep = await asyncio.to_thread(self._store.all_ids)
        result = await self._node.prune_images(keep)
        return models.PruneInfo(images=result.images, layers=result.layers,
                                bytes_freed=result.bytes_freed)

    def _manifest(self, image_id: str) -> Manifest | None:
        try:
            return self._node.images.built.manifest(image_id)
        except SandboxError:
            return None

    @staticmethod
    def _info(record: ImageRecord, manifest: Manifest | None) -> models.ImageInfo:
        named = record.name if record.name != record.id else None
        if manifest is None:
            return models.ImageInfo(name=named, id=record.id, size_bytes=record.size_bytes,
                                    created_at=record.created_at, build=record.build)
        return models.ImageInfo(
            name=named, id=record.id, base=manifest.base or None,
            size_bytes=manifest.size_bytes, layers=len(manifest.layers),
            created_at=record.created_at, env=dict(manifest.env), workdir=manifest.workdir,
            user=manifest.user,
            entrypoint=list(manifest.entrypoint) if manifest.entrypoint is not None else None,
            cmd=list(manifest.cmd) if manifest.cmd is not None else None,
            labels=dict(manifest.labels), steps=list(manifest.steps), build=record.build)


async def spool(body: AsyncIterator[bytes], target: IO[bytes], limit: int,
                too_large: str) -> int:
    """Write a request body to ``target`` (flushed); RequestTooLargeError saying
    ``too_large`` past ``limit`` bytes. Returns its size."""
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(too_large)
        await asyncio.to_thread(target.write, chunk)
    await asyncio.to_thread(target.flush)
    return size


async def _drain(first: BaseModel, queue: asyncio.Queue[BaseModel | None]
                 ) -> AsyncIterator[BaseModel]:
    yield first
    while (event := await queue.get()) is not None:
        yield event


def _expire(directory: Path) -> None:
    """Delete a tenant's contexts older than :data:`CONTEXT_TTL`."""
    if not directory.is_dir():
        return
    cutoff = time.time() - CONTEXT_TTL
    for entry in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if entry.lstat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


def unpack_context(archive: Path, target: Path) -> int:
    """Unpack a build context's tar into the new folder ``target``; returns its entries.

    Hostile input: only regular files, folders and symbolic links are taken; every name
    must be relative, normal and free of ``..``; no member may be written through a link
    (a parent that is a link is refused: links are made last, after every file); a link's
    target is kept as text, and the build refuses a copy that follows one out of the
    context (:func:`corral.api.image_spec.context_digest`). Modes lose setuid and setgid;
    nothing is owned by anyone but the server. Bounded in entries and unpacked bytes.
    """
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise InvalidArgumentError(f"the build context is not a tar archive: {exc}") from None
    target.mkdir(mode=0o700)
    root = os.path.realpath(target)
    links: list[tuple[str, str]] = []
    count = total = 0
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise InvalidArgumentError(f"the build context is a damaged tar: {exc}"
                                           ) from None
            if member is None:
                break
            count += 1
            if count > MAX_CONTEXT_ENTRIES:
                raise InvalidArgumentError(f"the build context has more than "
                                           f"{MAX_CONTEXT_ENTRIES} entries")
            name = _member_name(member.name)
            if name is None:
                continue  # the archive's root itself
            path = os.path.join(root, name)
            if member.isdir():
                _make_parents(root, name, path)
                if not os.path.isdir(path):
                    os.mkdir(path, 0o755)
            elif member.isfile():
                total += member.size
                if total > MAX_CONTEXT_UNPACKED:
                    raise InvalidArgumentError(f"the build context unpacks to more than "
                                               f"{MAX_CONTEXT_UNPACKED >> 20} MiB")
                _make_parents(root, name, path)
                source = tar.extractfile(member)
                assert source is not None
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
                with open(fd, "wb") as out, source:
                    written = 0
                    while block := source.read(1 << 20):
                        written += len(block)
                        if written > member.size:
                            raise InvalidArgumentError(f"{name!r} is longer than its header says")
                        out.write(block)
                    os.fchmod(out.fileno(), stat.S_IMODE(member.mode) & 0o1777 | 0o400)
            elif member.issym():
                links.append((name, member.linkname))
            else:
                raise InvalidArgumentError(f"{name!r} in the build context is not a file, a "
                                           "folder or a symbolic link (hard links, devices "
                                           "and fifos are refused)")
    for name, link_target in links:
        path = os.path.join(root, name)
        _make_parents(root, name, path)
        if os.path.lexists(path):
            raise InvalidArgumentError(f"{name!r} appears twice in the build context")
        os.symlink(link_target, path)
    return count


def _member_name(raw: str) -> str | None:
    if "\0" in raw or raw.startswith("/"):
        raise InvalidArgumentError(f"{raw[:80]!r} in the build context is an absolute path")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if ".." in parts:
        raise InvalidArgumentError(f"{raw[:80]!r} in the build context leaves it (..)")
    return "/".join(parts) or None


def _make_parents(root: str, name: str, path: str) -> None:
    """Make ``name``'s parent folders as real folders; refuse one that is anything else."""
    current = root
    for part in name.split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise InvalidArgumentError(f"{name!r} in the build context is under something "
                                       "that is not a folder")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise InvalidArgumentError(f"{name!r} appears twice in the build context")
