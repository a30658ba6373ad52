"""``sandbox.files``: read, write and manage files inside a sandbox.

Uploads and downloads stream, so files of any size (up to the sandbox's disk) move
without being held in memory; :meth:`AsyncFiles.read` is the convenience that does hold
one. Relative paths start at the image's working directory (``/work``).

Example::

    await sb.files.write("/work/data.csv", b"a,b\\n1,2\\n")
    assert await sb.files.read("/work/data.csv") == b"a,b\\n1,2\\n"
    with open("big.bin", "rb") as f:
        await sb.files.write("big.bin", iter(lambda: f.read(1 << 20), b""))
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import httpx
from pydantic import TypeAdapter

from corral.api import contract, models
from corral.api.errors import InvalidArgumentError, SandboxError, error_from_code
from corral.api.limits import DEFAULT_WATCH_LIFETIME

from ._http import ApiClient, checked, segment, transport_errors

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox

#: Seconds a file transfer may sit without progress.
TRANSFER_TIMEOUT = 300.0
CHUNK = 1024 * 1024
FileData = contract.FileData
_WATCH_LINE: TypeAdapter[models.WatchEvent | models.ErrorEvent] = TypeAdapter(
    models.WatchStreamEvent)


class AsyncWatchHandle:
    """A directory watch (:meth:`AsyncFiles.watch`): iterate it for
    :class:`~corral.api.models.WatchEvent`; :meth:`stop` (or leaving ``async with``)
    ends it. Iteration ends by itself when the watch's ``timeout`` runs out or the
    watched directory is removed or moved away.

    Example::

        async with await sb.files.watch("/work/out", recursive=True) as watch:
            async for event in watch:
                print(event.type, event.name)      # "create", "sub/result.csv"
                if event.name == "done":
                    break
    """

    def __init__(self, response: AbstractAsyncContextManager[httpx.Response],
                 lines: AsyncIterator[str], url: str) -> None:
        self._response = response
        self._lines = lines
        self._url = url
        self._stopped = False

    async def __aiter__(self) -> AsyncIterator[models.WatchEvent]:
        while not self._stopped:
            try:
                with transport_errors(self._url):
                    line = await anext(self._lines, None)
            except (SandboxError, httpx.StreamError):
                if self._stopped:  # stopped from elsewhere while a read waited
                    return
                raise
            if line is None:
                await self.stop()
                return
            if not line.strip():
                continue
            event = _WATCH_LINE.validate_json(line)
            if isinstance(event, models.ErrorEvent):
                await self.stop()
                raise error_from_code(event.error.code, event.error.message)
            yield event

    async def stop(self) -> None:
        """Stop watching (idempotent); an iteration under way ends."""
        if not self._stopped:
            self._stopped = True
            await self._response.__aexit__(None, None, None)

    async def __aenter__(self) -> AsyncWatchHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class AsyncFiles:
    """``sandbox.files`` of an :class:`corral.AsyncSandbox`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._api = sandbox._api
        self._base = f"/v1/sandboxes/{segment(sandbox.id)}/files"

    @classmethod
    def _at(cls, api: ApiClient, base: str) -> AsyncFiles:
        """The same calls on another files resource (a volume's)."""
        files = cls.__new__(cls)
        files._api, files._base = api, base
        return files

    async def read(self, path: str) -> bytes:
        """A whole file's content."""
        response = await self._api.call("GET", self._base, params={"path": path},
                                        read_timeout=TRANSFER_TIMEOUT)
        return response.content

    async def read_text(self, path: str) -> str:
        return (await self.read(path)).decode("utf-8", "replace")

    async def read_stream(self, path: str) -> AsyncIterator[bytes]:
        """A file's content in chunks, as it arrives."""
        async with self._api.stream("GET", self._base, params={"path": path}) as response:
            with transport_errors(self._api.url):
                async for chunk in response.aiter_bytes(CHUNK):
                    yield chunk

    async def write(self, path: str, data: FileData, mode: int = 0o644, *,
                    user: str | int | None = None) -> int:
        """Write a file atomically (parents created) and return its size.

        ``data`` is bytes, text, or an iterable or async iterable of byte chunks, streamed.
        ``user`` (a name or uid of the image's) owns the file and the parents created;
        default root. Volumes refuse it.
        """
        params: dict[str, str | int] = {"path": path, "mode": mode}
        if user is not None:
            params["user"] = str(user)
        content: bytes | AsyncIterable[bytes]
        if isinstance(data, str):
            content = data.encode()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            content = bytes(data)
        else:
            content = _chunks(data)
        reply = await self._api.json("PUT", self._base, params=params,
                                     content=content, read_timeout=TRANSFER_TIMEOUT)
        return models.WriteResult.model_validate(reply).size

    async def list(self, path: str = ".", depth: int = 1) -> list[models.EntryInfo]:
        """Entries under a directory, ``depth`` levels down."""
        reply = await self._api.json("GET", f"{self._base}/list",
                                     params={"path": path, "depth": depth})
        return models.EntryList.model_validate(reply).entries

    async def stat(self, path: str) -> models.EntryInfo:
        """Describe one path (links are not followed)."""
        reply = await self._api.json("GET", f"{self._base}/stat", params={"path": path})
        return models.EntryInfo.model_validate(reply)

    async def exists(self, path: str) -> bool:
        reply = await self._api.json("GET", f"{self._base}/exists", params={"path": path})
        return models.Exists.model_validate(reply).exists

    async def mkdir(self, path: str, parents: bool = True, *,
                    user: str | int | None = None) -> bool:
        """Create a directory; False if it already existed. ``user`` owns the
        directories created (as :meth:`write`)."""
        reply = await self._api.json("POST", f"{self._base}/mkdir", body=checked(
            models.MakeDir, path=path, parents=parents, user=user))
        return models.Created.model_validate(reply).created

    async def download_url(self, path: str, *, expires_in: float = 60.0) -> str:
        """A URL anyone may GET ``path`` from, with no key, for ``expires_in`` seconds (at
        most a day). Sandboxes only: volumes refuse it."""
        return await self._signed(path, "read", expires_in, None)

    async def upload_url(self, path: str, *, expires_in: float = 60.0,
                         user: str | int | None = None) -> str:
        """A URL anyone may PUT ``path``'s new content to (the raw body), with no key, for
        ``expires_in`` seconds; ``user`` owns the file written (as :meth:`write`)."""
        return await self._signed(path, "write", expires_in, user)

    async def _signed(self, path: str, operation: str, expires_in: float,
                      user: str | int | None) -> str:
        if not self._base.startswith("/v1/sandboxes/"):
            raise InvalidArgumentError("signed URLs are for a sandbox's files, not a volume's")
        body = checked(models.FileUrlRequest, path=path, operation=operation,
                       expires_in=float(expires_in), user=user)
        reply = await self._api.json("POST", f"{self._base}/signed-urls", body=body)
        return models.SignedUrl.model_validate(reply).url

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, link or (with ``recursive``) a directory tree."""
        await self._api.call("DELETE", self._base,
                             params={"path": path, "recursive": "true" if recursive else "false"})

    async def rename(self, src: str, dst: str, overwrite: bool = False) -> None:
        await self._api.call("POST", f"{self._base}/rename",
                             body=checked(models.Rename, src=src, dst=dst, overwrite=overwrite))

    async def watch(self, path: str, recursive: bool = False,
                    timeout: float = DEFAULT_WATCH_LIFETIME) -> AsyncWatchHandle:
        """Watch a directory for changes; returns once it is watched.

        Iterate the handle for :class:`~corral.api.models.WatchEvent` (``type``:
        ``create``, ``write``, ``remove``, ``rename``, ``chmod``, or ``overflow`` where
        events were lost; ``name`` relative to ``path``). With ``recursive``, every
        directory under ``path`` is watched, those made later too. The watch lasts
        ``timeout`` seconds at most (the server's bound is a day); :meth:`AsyncWatchHandle.stop`
        ends it sooner. Changes made inside the sandbox are seen on every runtime; under
        gVisor, changes made outside it (another sandbox on a shared volume) are not.
        """
        if not self._base.startswith("/v1/sandboxes/"):
            raise InvalidArgumentError("a volume's files are watched from a sandbox that "
                                       "mounts it: watch the mount point there")
        response = self._api.stream("GET", f"{self._base}/watch", params={
            "path": path, "recursive": "true" if recursive else "false",
            "timeout": timeout})
        opened = await response.__aenter__()
        return AsyncWatchHandle(response, opened.aiter_lines(), self._api.url)


async def _chunks(data: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(data, AsyncIterable):
        async for piece in data:
            yield _bytes(piece)
    else:
        for piece in data:
            yield _bytes(piece)


def _bytes(piece: object) -> bytes:
    if not isinstance(piece, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError("file content chunks must be bytes")
    return bytes(piece)


if TYPE_CHECKING:
    _conforms: type[contract.FilesContract] = AsyncFiles
