"""Tenants' snapshots: taken, listed, deleted, expired, and checked against a quota.

A memory snapshot is the node's (:mod:`corral.node.checkpoints`): the store only says whose
it is, with the node's id for it. A files-only snapshot is a filesystem snapshot of the
sandbox (:meth:`ImageService.snapshot`): an image of the tenant's, named by its id, which
the snapshot's record points at and which goes with it. Each tenant's snapshots together
may take ``quota`` bytes on disk; each lives ``ttl`` seconds (the request's, or the
server's default) and is then deleted by a sweep every :data:`SWEEP_INTERVAL` seconds. A
snapshot that is not the caller's, expired or deleted is a plain not-found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from datetime import UTC, datetime, timedelta

from corral.api import models
from corral.api.errors import NotFoundError, ResourceExhaustedError, SandboxError
from corral.node import Node, NodeSandbox

from ..store.snapshots import SnapshotRecord, SnapshotStore
from .images import ImageService

log = logging.getLogger(__name__)

#: Seconds between two looks for expired snapshots.
SWEEP_INTERVAL = 30.0
MIB = 1024 * 1024


class SnapshotService:
    def __init__(self, node: Node, store: SnapshotStore, images: ImageService,
                 quota_mib: int, default_ttl: float,
                 sweep_interval: float = SWEEP_INTERVAL) -> None:
        self._node = node
        self._store = store
        self._images = images
        self.quota_bytes = quota_mib * MIB
        self.default_ttl = default_ttl
        self._interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Match the store with the node (what a crash between the two left), then start
        the expiry sweep."""
        recorded = await asyncio.to_thread(self._store.all)
        on_node = {snap.id for snap in await asyncio.to_thread(self._node.list_snapshots)}
        known = {r.id for r in recorded if r.memory}
        for orphan in on_node - known:
            with contextlib.suppress(SandboxError):
                await self._node.remove_snapshot(orphan)
                log.warning("snapshot %s removed: no tenant's", orphan)
        for record in recorded:
            if record.memory and record.id not in on_node:
                await asyncio.to_thread(self._store.remove, record.id)
                log.warning("snapshot %s of tenant %s is gone from the node", record.id,
                            record.tenant)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(),
                                                               name="corral-snapshot-expiry")

    async def close(self) -> None:
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def take(self, tenant: str, sandbox: NodeSandbox,
                   request: models.SnapshotCreate) -> models.SnapshotInfo:
        """Snapshot the tenant's running sandbox (the caller checked it is the tenant's)."""
        used = await asyncio.to_thread(self._store.used_bytes, tenant)
        if used >= self.quota_bytes:
            raise ResourceExhaustedError(self._quota_message(used))
        now = datetime.now(UTC)
        ttl = request.ttl if request.ttl is not None else self.default_ttl
        if request.memory:
            taken = await self._node.snapshot(sandbox.id)
            record = SnapshotRecord(
                id=taken.id, tenant=tenant, name=request.name, sandbox_id=sandbox.id,
                memory=True, image=taken.sandbox.image, runtime=taken.sandbox.runtime,
                size_bytes=taken.size_bytes, created_at=now,
                expires_at=now + timedelta(seconds=ttl))
        else:
            image = await self._images.snapshot(tenant, sandbox, None)
            record = SnapshotRecord(
                id=f"snap-{secrets.token_hex(8)}", tenant=tenant, name=request.name,
                sandbox_id=sandbox.id, memory=False, image=image.id,
                runtime=sandbox.runtime.name, size_bytes=image.size_bytes, created_at=now,
                expires_at=now + timedelta(seconds=ttl))
        if used + record.size_bytes > self.quota_bytes:
            await self._discard(record)
            raise ResourceExhaustedError(
                f"this snapshot takes {record.size_bytes / MIB:.0f} MiB, more than is left "
                f"of your {self.quota_bytes // MIB} MiB for snapshots "
                f"({used / MIB:.0f} MiB used); delete some (`corral snapshot rm`)")
        try:
            await asyncio.to_thread(self._store.add, record)
        except BaseException:
            await asyncio.shield(self._discard(record))
            raise
        log.info("snapshot %s of sandbox %s taken for tenant %s (%d bytes)", record.id,
                 sandbox.id, tenant, record.size_bytes)
        return info(record)

    async def get(self, tenant: str, snapshot_id: str) -> SnapshotRecord:
        """The tenant's live snapshot; NotFoundError for anything else."""
        record = await asyncio.to_thread(self._store.get, tenant, snapshot_id)
        if record is None or record.expires_at <= datetime.now(UTC):
            raise NotFoundError(f"no snapshot {snapshot_id!r:.80}")
        return record

    async def describe(self, tenant: str, snapshot_id: str) -> models.SnapshotInfo:
        return info(await self.get(tenant, snapshot_id))

    async def list(self, tenant: str) -> models.SnapshotList:
        now = datetime.now(UTC)
        records = await asyncio.to_thread(self._store.list, tenant)
        return models.SnapshotList(snapshots=[info(r) for r in records if r.expires_at > now])

    async def delete(self, tenant: str, snapshot_id: str) -> None:
        """Delete the tenant's snapshot; sandboxes started from it run on."""
        record = await self.get(tenant, snapshot_id)
        await self._discard(record)
        await asyncio.to_thread(self._store.remove, record.id)

    async def expire(self) -> int:
        """Delete every snapshot past its time; returns how many."""
        now = datetime.now(UTC)
        gone = 0
        for record in await asyncio.to_thread(self._store.all):
            if record.expires_at > now:
                continue
            try:
                await self._discard(record)
            except SandboxError as exc:  # a restore from it under way: next time
                log.info("snapshot %s expired, not deleted yet: %s", record.id, exc.message)
                continue
            await asyncio.to_thread(self._store.remove, record.id)
            log.info("snapshot %s of tenant %s expired", record.id, record.tenant)
            gone += 1
        return gone

    async def _discard(self, record: SnapshotRecord) -> None:
        """Delete what holds the snapshot (the node's snapshot, or the files' image)."""
        with contextlib.suppress(NotFoundError):
            if record.memory:
                await self._node.remove_snapshot(record.id)
            else:
                await self._images.remove(record.tenant, record.image)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.expire()
            except Exception:
                log.exception("deleting expired snapshots failed")

    def _quota_message(self, used: int) -> str:
        return (f"your snapshots take {used / MIB:.0f} MiB, your quota is "
                f"{self.quota_bytes // MIB} MiB; delete some (`corral snapshot rm`)")


def info(record: SnapshotRecord) -> models.SnapshotInfo:
    return models.SnapshotInfo(
        id=record.id, name=record.name, sandbox_id=record.sandbox_id, memory=record.memory,
        image=record.image, runtime=record.runtime, size_bytes=record.size_bytes,
        created_at=record.created_at, expires_at=record.expires_at)
