"""``sandbox.files``: read, write, list and manage files inside a sandbox.

Paths are resolved by the agent inside the sandbox's own root, so no path, link or ``..``
can reach the host. Large files stream in 64 KiB chunks with flow control; nothing here
holds a whole file in memory unless you ask for ``read``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from corral.api import agent_protocol as proto
from corral.api.errors import (AgentError, InvalidArgumentError, ResourceExhaustedError,
                               SandboxError)
from corral.api import contract
from corral.api.limits import MAX_LIST_DEPTH, MAX_PATH
from corral.api.models import EntryInfo, WatchEvent

from .agent_client import AgentClient, Stream

from .validation import resolve_path

if TYPE_CHECKING:
    from .sandbox import NodeSandbox

#: Largest file :meth:`NodeFiles.read` returns in memory; use :meth:`NodeFiles.read_stream` beyond.
MAX_READ = 256 * 1024 * 1024


async def _iterate(data: bytes | str | Iterable[bytes] | AsyncIterable[bytes]
                   ) -> AsyncIterator[bytes]:
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for start in range(0, len(view), proto.CHUNK):
            yield bytes(view[start:start + proto.CHUNK])
        return
    if isinstance(data, AsyncIterable):
        async for piece in data:
            if not isinstance(piece, (bytes, bytearray)):
                raise InvalidArgumentError("file content chunks must be bytes")
            yield bytes(piece)
        return
    for piece in data:
        if not isinstance(piece, (bytes, bytearray)):
            raise InvalidArgumentError("file content chunks must be bytes")
        yield bytes(piece)


def _entry(raw: object) -> EntryInfo:
    """An entry the agent described; the agent is untrusted, so anything off-shape is refused."""
    try:
        return EntryInfo.model_validate(raw)
    except ValidationError:
        raise AgentError("the agent sent a malformed file entry") from None


def _user(user: object) -> str | int | None:
    """A file call's owner as the agent takes it: a name (1 – 64 characters, no NUL or
    ``:``) or a uid."""
    if user is None:
        return None
    if isinstance(user, int) and not isinstance(user, bool) and 0 <= user <= 2**32 - 2:
        return user
    if (isinstance(user, str) and 1 <= len(user) <= 64
            and not any(c in user for c in "\0:\n/")):
        return user
    raise InvalidArgumentError("user must be a user name (1 to 64 characters, no ':', "
                               "'/', NUL or newline) or a uid")


class NodeFiles:
    """File operations on one sandbox."""

    def __init__(self, sandbox: NodeSandbox) -> None:
        self._sandbox = sandbox

    def _path(self, path: str) -> str:
        return resolve_path(path, self._sandbox.workdir)

    async def read_stream(self, path: str) -> AsyncIterator[bytes]:
        """Yield a regular file's content in chunks (for files of any size)."""
        _, chunks = await self._sandbox.channel().read_file(self._path(path))
        async for chunk in chunks:
            yield chunk

    async def read(self, path: str) -> bytes:
        """Return a whole file (at most :data:`MAX_READ` bytes)."""
        size, chunks = await self._sandbox.channel().read_file(self._path(path))
        if size > MAX_READ:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise ResourceExhaustedError(
                f"{path!r} is {size} bytes, more than read() returns ({MAX_READ}); "
                "use read_stream()")
        out = bytearray()
        async for chunk in chunks:
            out += chunk
            if len(out) > MAX_READ:
                await chunks.aclose()  # type: ignore[attr-defined]
                raise ResourceExhaustedError(f"{path!r} grew past {MAX_READ} bytes while read")
        return bytes(out)

    async def read_text(self, path: str) -> str:
        return (await self.read(path)).decode("utf-8", "replace")

    async def write(self, path: str, data: contract.FileData, mode: int = 0o644, *,
                    user: str | int | None = None) -> int:
        """Write a file atomically (parents created); returns its size.

        ``data`` may be bytes, text, or an (async) iterable of byte chunks for large
        uploads. A failed write (e.g. the disk limit) leaves any previous file intact.
        ``user`` (a name or uid of the image): who owns the file and the parents created;
        default the agent's user (root).
        """
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise InvalidArgumentError("mode must be an integer between 0 and 0o7777")
        return await self._sandbox.channel().write_file(self._path(path), _iterate(data), mode,
                                                        user=_user(user))

    async def list(self, path: str = ".", depth: int = 1) -> list[EntryInfo]:
        """Entries under a directory, recursing ``depth`` levels (at most
        :data:`~corral.api.limits.MAX_LIST_ENTRIES` entries)."""
        if (isinstance(depth, bool) or not isinstance(depth, int)
                or not 1 <= depth <= MAX_LIST_DEPTH):
            raise InvalidArgumentError(f"depth must be an integer between 1 and {MAX_LIST_DEPTH}")
        _, data = await self._sandbox.channel().call_with_data(
            proto.OP_LIST, path=self._path(path), depth=depth)
        try:
            raw = json.loads(data)
        except ValueError:
            raise AgentError("the agent sent a malformed listing") from None
        if not isinstance(raw, list):
            raise AgentError("the agent sent a malformed listing")
        return [_entry(e) for e in raw]

    async def stat(self, path: str) -> EntryInfo:
        """Describe one path (links are not followed)."""
        return _entry(await self._sandbox.channel().call(
            proto.OP_STAT, path=self._path(path)))

    async def exists(self, path: str) -> bool:
        reply = await self._sandbox.channel().call(proto.OP_EXISTS, path=self._path(path))
        return reply.get("exists") is True

    async def mkdir(self, path: str, parents: bool = True, *,
                    user: str | int | None = None) -> bool:
        """Create a directory; returns False if it already existed. ``user``: who owns
        the directories created (as :meth:`write`)."""
        fields: dict[str, Any] = {} if user is None else {"user": _user(user)}
        reply = await self._sandbox.channel().call(proto.OP_MKDIR, path=self._path(path),
                                                  parents=parents, **fields)
        return reply.get("created") is True

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, link or (with ``recursive``) a directory tree."""
        await self._sandbox.channel().call(proto.OP_REMOVE, path=self._path(path),
                                          recursive=recursive)

    async def rename(self, src: str, dst: str, overwrite: bool = False) -> None:
        await self._sandbox.channel().call(proto.OP_RENAME, src=self._path(src),
                                          dst=self._path(dst), overwrite=overwrite)

    async def watch(self, path: str, recursive: bool = False) -> NodeWatch:
        """Watch a directory (with ``recursive``, every directory under it, those made
        later too); returns once it is watched. Iterate the watch for
        :class:`~corral.api.models.WatchEvent` (names relative to ``path``) until
        :meth:`NodeWatch.aclose`, or until the directory is removed or moved away.

        Bounds (:mod:`corral.api.agent_protocol`): ``MAX_WATCHES`` per sandbox,
        ``MAX_WATCH_DIRS`` directories per watch (a larger tree is refused),
        ``MAX_WATCH_EVENTS`` events held for a reader that falls behind; past them, an
        ``overflow`` event marks where events were lost.
        """
        if not isinstance(recursive, bool):
            raise InvalidArgumentError("recursive must be true or false")
        client = self._sandbox.channel()
        stream = await client.open(proto.OP_WATCH, path=self._path(path), recursive=recursive,
                                   credited=True)
        try:
            await client.within(CALL_TIMEOUT_WATCH, stream.next(), "a watch")
        except BaseException:
            stream.close()
            raise
        return NodeWatch(client, stream)


#: Longest the agent may take to watch a tree (a recursive watch walks it first).
CALL_TIMEOUT_WATCH = 120.0


def _watch_event(raw: object) -> WatchEvent:
    """An event the agent sent; the agent is untrusted, so anything off-shape is refused."""
    if (not isinstance(raw, dict) or raw.get("type") not in proto.WATCH_EVENT_TYPES
            or not isinstance(raw.get("name"), str) or not isinstance(raw.get("dir"), bool)
            or len(raw["name"]) > 2 * MAX_PATH):
        raise AgentError("the agent sent a malformed watch event")
    # A name that is not UTF-8 came with its stray bytes as lone surrogates.
    name = raw["name"].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return WatchEvent(type=raw["type"], name=name, is_dir=raw["dir"])


class NodeWatch:
    """A directory watch (:meth:`NodeFiles.watch`): iterate it for events; :meth:`aclose`
    stops it. A watch ends with its session: a pause or the sandbox's end fails the
    iteration with :class:`~corral.api.errors.SandboxNotRunningError`."""

    def __init__(self, client: AgentClient, stream: Stream) -> None:
        self._client = client
        self._stream = stream
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[WatchEvent]:
        while not self._closed:
            header, data = await self._stream.next()
            if header.get("ev") == proto.EV_END:
                await self.aclose()
                return
            if header.get("ev") != proto.EV_DATA:
                continue
            try:
                batch = json.loads(data)
            except ValueError:
                raise AgentError("the agent sent a malformed watch event") from None
            if not isinstance(batch, list):
                raise AgentError("the agent sent a malformed watch event")
            for raw in batch:
                yield _watch_event(raw)

    async def aclose(self) -> None:
        """Stop watching (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stream.close()
        if not self._client.closed:
            with contextlib.suppress(SandboxError):
                await self._client.send({"id": 0, "op": proto.OP_CANCEL,
                                         "target": self._stream.id})

    async def __aenter__(self) -> NodeWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


if TYPE_CHECKING:
    _conforms: type[contract.FilesContract] = NodeFiles
