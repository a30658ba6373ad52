"""Files in a tenant's sandboxes. Paths are resolved by the node inside the sandbox root.

Downloads start before the response does, so a missing file is an ordinary 404 rather
than a broken stream; uploads stream into the sandbox and are bounded by its disk. A
transfer, a listing and a removal hold its sandbox in use (never idle) until they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager

import anyio

from corral.api import models
from corral.api.errors import SandboxError
from corral.node import NodeSandbox, NodeWatch

from .sandboxes import SandboxService


class FileService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self._sandboxes = sandboxes

    async def read_stream(self, tenant: str, sandbox_id: str, path: str
                          ) -> AsyncIterator[bytes]:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a file call")
        chunks = sandbox.files.read_stream(path)
        try:
            first = await anext(chunks, None)
        except BaseException:
            await _close(chunks)
            raise
        return _prefixed(first, chunks, self._sandboxes, sandbox_id)

    async def write(self, tenant: str, sandbox_id: str, path: str,
                    chunks: AsyncIterable[bytes], mode: int,
                    user: str | int | None = None) -> models.WriteResult:
        async with self._using(tenant, sandbox_id) as sandbox:
            size = await sandbox.files.write(path, chunks, mode, user=user)
        return models.WriteResult(path=path, size=size)

    async def list(self, tenant: str, sandbox_id: str, path: str,
                   depth: int) -> models.EntryList:
        async with self._using(tenant, sandbox_id) as sandbox:
            return models.EntryList(entries=await sandbox.files.list(path, depth))

    async def stat(self, tenant: str, sandbox_id: str, path: str) -> models.EntryInfo:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a file call")
        return await sandbox.files.stat(path)

    async def exists(self, tenant: str, sandbox_id: str, path: str) -> models.Exists:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a file call")
        return models.Exists(exists=await sandbox.files.exists(path))

    async def mkdir(self, tenant: str, sandbox_id: str, request: models.MakeDir
                    ) -> models.Created:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a file call")
        return models.Created(created=await sandbox.files.mkdir(
            request.path, request.parents, user=request.user))

    async def remove(self, tenant: str, sandbox_id: str, path: str, recursive: bool) -> None:
        async with self._using(tenant, sandbox_id) as sandbox:
            await sandbox.files.remove(path, recursive)

    async def rename(self, tenant: str, sandbox_id: str, request: models.Rename) -> None:
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a file call")
        await sandbox.files.rename(request.src, request.dst, request.overwrite)


    async def watch(self, tenant: str, sandbox_id: str, path: str, recursive: bool,
                    lifetime: float) -> AsyncIterator[bytes]:
        """Watch a directory (errors such as a missing one surface here), then stream its
        events as NDJSON for at most ``lifetime`` seconds. A watch does not hold its
        sandbox in use: watching alone does not keep it from its idle timeout."""
        sandbox = await self._sandboxes.owned(tenant, sandbox_id, "a file call")
        watch = await sandbox.files.watch(path, recursive)
        return _watch_lines(watch, lifetime)

    def _using(self, tenant: str, sandbox_id: str) -> AbstractAsyncContextManager[NodeSandbox]:
        """The tenant's sandbox, in use until the block ends (an upload, a deep listing or
        removal may take a while)."""
        return self._sandboxes.using(tenant, sandbox_id, "a file call")


async def _prefixed(first: bytes | None, rest: AsyncIterator[bytes],
                    sandboxes: SandboxService, sandbox_id: str) -> AsyncIterator[bytes]:
    """The download's chunks, its sandbox held in use until the last is sent."""
    try:
        if first is None:
            return
        with sandboxes.in_use(sandbox_id):
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await _close(rest)


async def _watch_lines(watch: NodeWatch, lifetime: float) -> AsyncIterator[bytes]:
    """A watch's events as NDJSON lines until ``lifetime`` runs out (then the stream just
    ends), the watched directory goes, or an error (its last line); the watch is stopped
    however the stream ends."""
    ends = time.monotonic() + lifetime
    events = aiter(watch)
    try:
        while True:
            try:
                event = await asyncio.wait_for(anext(events), max(ends - time.monotonic(), 0))
            except (StopAsyncIteration, TimeoutError):
                return
            except SandboxError as exc:
                yield models.ErrorEvent(error=models.ErrorDetail(
                    code=exc.code.value, message=exc.message)).model_dump_json().encode() + b"\n"
                return
            yield event.model_dump_json().encode() + b"\n"
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await watch.aclose()


async def _close(chunks: AsyncIterator[bytes]) -> None:
    """Close a download even from a cancelled request, so the agent stops sending."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await aclose()
