"""Volumes for tenants: names, quotas, mounts at create, and files without a sandbox.

The node keeps each volume (an ext4 filesystem of its quota, :mod:`corral.node.volumes`)
under an id and knows no tenant. This service holds each tenant's names for them, answers a
tenant's mount request with the node's ids, and serves the volume's files straight from the
node, with no sandbox running. Another tenant's volume is answered exactly like one that
does not exist.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Final

from corral.api import models
from corral.api.errors import (AlreadyExistsError, NotFoundError, ResourceExhaustedError)
from corral.api.resources import parse_size_mib
from corral.node import Node
from corral.node.volumes import VolumeMount

from ..store.volumes import VolumeNameStore, VolumeRecord
from .images import spool

#: Volumes one tenant may have, and their quotas together by default (``--volume-quota``).
MAX_VOLUMES_PER_TENANT: Final = 64
DEFAULT_TENANT_QUOTA_MIB: Final = 100 * 1024
_CHUNK = 1 << 20


class VolumeService:
    def __init__(self, node: Node, store: VolumeNameStore,
                 tenant_quota_mib: int = DEFAULT_TENANT_QUOTA_MIB) -> None:
        self._node = node
        self._store = store
        self.tenant_quota_mib = tenant_quota_mib
        self._creating = asyncio.Lock()

    # -- volumes ---------------------------------------------------------------------------

    async def create(self, tenant: str, request: models.VolumeCreate) -> models.VolumeInfo:
        size = parse_size_mib(request.size, "volume size")
        async with self._creating:  # the count and quota checks and the insert, together
            records = await asyncio.to_thread(self._store.list, tenant)
            if any(r.name == request.name for r in records):
                raise AlreadyExistsError(f"you already have a volume named {request.name!r}")
            if len(records) >= MAX_VOLUMES_PER_TENANT:
                raise ResourceExhaustedError(f"you have {MAX_VOLUMES_PER_TENANT} volumes, the "
                                             "most allowed; delete one first")
            used = sum(r.size_mib for r in records)
            if used + size > self.tenant_quota_mib:
                raise ResourceExhaustedError(
                    f"your volumes would take {used + size} MiB of your "
                    f"{self.tenant_quota_mib} MiB; delete or shrink one")
            info = await asyncio.to_thread(self._node.volumes.create, size)
            record = VolumeRecord(tenant=tenant, name=request.name, id=info.id,
                                  size_mib=info.size_mib, created_at=datetime.now(UTC))
            try:
                await asyncio.to_thread(self._store.add, record)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(self._node.volumes.remove, info.id))
                raise
        return await self.get(tenant, request.name)

    async def list(self, tenant: str) -> models.VolumeList:
        records = await asyncio.to_thread(self._store.list, tenant)
        return models.VolumeList(volumes=[await self._info(r) for r in records])

    async def get(self, tenant: str, name: str) -> models.VolumeInfo:
        return await self._info(await self._owned(tenant, name))

    async def delete(self, tenant: str, name: str) -> None:
        """Delete a volume and its files; refused while a sandbox mounts it."""
        record = await self._owned(tenant, name)
        await self._node.remove_volume(record.id)
        await asyncio.to_thread(self._store.remove, tenant, name)

    async def mounts(self, tenant: str, requested: Mapping[str, str | models.VolumeMountSpec]
                     ) -> tuple[builtins.list[VolumeMount],
                                builtins.list[models.VolumeMountInfo]]:
        """The node's mounts for a create's ``volumes``, and how the API describes them."""
        node_mounts: builtins.list[VolumeMount] = []
        described: builtins.list[models.VolumeMountInfo] = []
        for path, value in requested.items():
            spec = (value if isinstance(value, models.VolumeMountSpec)
                    else models.VolumeMountSpec(volume=value))
            record = await self._owned(tenant, spec.volume)
            node_mounts.append(VolumeMount(volume=record.id, path=path,
                                           read_only=spec.read_only))
            described.append(models.VolumeMountInfo(path=path, volume=spec.volume,
                                                    read_only=spec.read_only))
        return node_mounts, described

    async def _owned(self, tenant: str, name: str) -> VolumeRecord:
        record = await asyncio.to_thread(self._store.get, tenant, name)
        if record is None:
            raise NotFoundError(f"no volume {name[:80]!r}: create it (corral volume create "
                                f"{name[:80]}) or list yours (corral volume ls)")
        return record

    async def _info(self, record: VolumeRecord) -> models.VolumeInfo:
        info = await asyncio.to_thread(self._node.volumes.get, record.id)
        return models.VolumeInfo(name=record.name, id=record.id, size_mib=info.size_mib,
                                 used_bytes=info.used_bytes, created_at=record.created_at,
                                 in_use_by=self._node.volume_users(record.id))

    # -- files -----------------------------------------------------------------------------

    async def read_stream(self, tenant: str, name: str, path: str) -> AsyncIterator[bytes]:
        """The file's bytes; errors (not found, a folder) are raised before the first."""
        record = await self._owned(tenant, name)
        chunks = await asyncio.to_thread(self._node.volumes.read_stream, record.id, path)
        first = await asyncio.to_thread(next, chunks, None)

        async def stream() -> AsyncIterator[bytes]:
            try:
                if first is not None:
                    yield first
                    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                        yield chunk
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    await asyncio.to_thread(close)

        return stream()

    async def write(self, tenant: str, name: str, path: str, body: AsyncIterator[bytes],
                    mode: int) -> models.WriteResult:
        """The request body becomes the file (spooled first, bounded by the volume's size)."""
        record = await self._owned(tenant, name)
        limit = record.size_mib * 1024 * 1024
        with tempfile.TemporaryFile() as spooled:
            await spool(body, spooled, limit, f"the file is larger than volume {name!r} "
                        f"({record.size_mib} MiB)")
            spooled.seek(0)
            written = await asyncio.to_thread(self._node.volumes.write, record.id, path,
                                              _blocks(spooled), mode)
        return models.WriteResult(path=path, size=written)

    async def list_files(self, tenant: str, name: str, path: str, depth: int
                         ) -> models.EntryList:
        record = await self._owned(tenant, name)
        return models.EntryList(entries=await asyncio.to_thread(
            self._node.volumes.list_dir, record.id, path, depth))

    async def stat(self, tenant: str, name: str, path: str) -> models.EntryInfo:
        record = await self._owned(tenant, name)
        return await asyncio.to_thread(self._node.volumes.stat, record.id, path)

    async def remove_file(self, tenant: str, name: str, path: str, recursive: bool) -> None:
        record = await self._owned(tenant, name)
        await asyncio.to_thread(self._node.volumes.remove_path, record.id, path, recursive)

    async def mkdir(self, tenant: str, name: str, path: str) -> models.Created:
        record = await self._owned(tenant, name)
        return models.Created(created=await asyncio.to_thread(
            self._node.volumes.mkdir, record.id, path))


def _blocks(spool: IO[bytes]) -> Iterator[bytes]:
    with contextlib.suppress(ValueError):
        while block := spool.read(_CHUNK):
            yield block
