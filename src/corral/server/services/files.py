"""Files in a tenant's sandboxes. Paths are resolved by the node inside the sandbox root.

Downloads start before the response does, so a missing file is an ordinary 404 rather
than a broken stream; uploads stream into the sandbox and are bounded by its disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable

import anyio

from corral.api import models

from .sandboxes import SandboxService


class FileService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self._sandboxes = sandboxes

    async def read_stream(self, tenant: str, sandbox_id: str, path: str
                          ) -> AsyncIterator[bytes]:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        chunks = sandbox.files.read_stream(path)
        try:
            first = await anext(chunks, None)
        except BaseException:
            await _close(chunks)
            raise
        return _prefixed(first, chunks, lambda: self._sandboxes.touch(sandbox_id))

    async def write(self, tenant: str, sandbox_id: str, path: str,
                    chunks: AsyncIterable[bytes], mode: int) -> models.WriteResult:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        size = await sandbox.files.write(path, _touching(chunks, lambda: self._sandboxes.touch(
            sandbox_id)), mode)
        return models.WriteResult(path=path, size=size)

    async def list(self, tenant: str, sandbox_id: str, path: str,
                   depth: int) -> models.EntryList:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        return models.EntryList(entries=await sandbox.files.list(path, depth))

    async def stat(self, tenant: str, sandbox_id: str, path: str) -> models.EntryInfo:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        return await sandbox.files.stat(path)

    async def exists(self, tenant: str, sandbox_id: str, path: str) -> models.Exists:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        return models.Exists(exists=await sandbox.files.exists(path))

    async def mkdir(self, tenant: str, sandbox_id: str, request: models.MakeDir
                    ) -> models.Created:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        return models.Created(created=await sandbox.files.mkdir(request.path, request.parents))

    async def remove(self, tenant: str, sandbox_id: str, path: str, recursive: bool) -> None:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        await sandbox.files.remove(path, recursive)

    async def rename(self, tenant: str, sandbox_id: str, request: models.Rename) -> None:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id)
        await sandbox.files.rename(request.src, request.dst, request.overwrite)


async def _prefixed(first: bytes | None, rest: AsyncIterator[bytes],
                    touch: Callable[[], None]) -> AsyncIterator[bytes]:
    """The download's chunks; each one is activity for the idle timeout."""
    try:
        if first is None:
            return
        yield first
        async for chunk in rest:
            touch()
            yield chunk
    finally:
        await _close(rest)


async def _touching(chunks: AsyncIterable[bytes], touch: Callable[[], None]
                    ) -> AsyncIterator[bytes]:
    """An upload's chunks; each one is activity for the idle timeout."""
    async for chunk in chunks:
        touch()
        yield chunk


async def _close(chunks: AsyncIterator[bytes]) -> None:
    """Close a download even from a cancelled request, so the agent stops sending."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await aclose()
