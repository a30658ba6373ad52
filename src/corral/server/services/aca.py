"""Azure Container Apps dynamic sessions on Corral sandboxes (the ``/aca/{pool}`` façade).

A session is what Azure calls it: a pool, and an identifier the client picks. Here one
session is one sandbox of the tenant's, started on the session's first request from the
pool's image, recorded in the store under (tenant, pool, sha256 of the identifier) and
stopped by the idle reaper once it has gone unused for the pool's cooldown (a pool's
``cooldownPeriodInSeconds`` in Azure). The next request with that identifier then starts a
fresh sandbox, as Azure starts a fresh session. The tenant is part of the key and the
sandbox is the tenant's own, so a tenant can never reach another's session, whatever
identifier it sends.

Code runs in the sandbox's default code context (a Jupyter kernel), whose working
directory is moved to ``/mnt/data`` before its first cell, as in Azure. Files live under
``/mnt/data``: every name a client sends, absolute or relative, is confined to it
lexically (no ``..``, no other absolute path, no backslash or control character) before
it reaches the sandbox, whose agent then resolves it inside the sandbox's own root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Final

from corral.api import models
from corral.api.errors import (
    InvalidArgumentError,
    NotFoundError,
    SandboxNotRunningError,
)
from corral.node import NodeSandbox

from ..audit import found_sandbox
from ..settings import AcaSettings
from ..store.aca_sessions import AcaSessionStore, identifier_hash
from ._multipart import file_part
from .files import FileService
from .sandboxes import SandboxService

log = logging.getLogger(__name__)

DATA_DIR: Final = "/mnt/data"
#: Longest session identifier, in bytes (it is hashed: only the URL bounds it otherwise).
MAX_IDENTIFIER: Final = 16 * 1024
#: Deepest a recursive listing of ``/mnt/data`` goes (the agent's own bound).
LIST_DEPTH: Final = 16
_FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f\\]")
_PREPARE: Final = (f"import os as _corral_os\n_corral_os.makedirs({DATA_DIR!r}, exist_ok=True)\n"
                   f"_corral_os.chdir({DATA_DIR!r})\ndel _corral_os")


def confine(name: str, directory: str = DATA_DIR, *, allow_root: bool = False) -> str:
    """The sandbox path ``name`` means, inside ``/mnt/data``; refuses anything else.

    ``name`` is relative to ``directory`` (itself inside ``/mnt/data``), or absolute under
    ``/mnt/data``. ``..`` is refused outright rather than resolved, as are backslashes
    (Windows-style paths) and control characters.
    """
    if not name or len(name.encode("utf-8", "surrogateescape")) > models.MAX_PATH:
        raise InvalidArgumentError(f"a file name must have 1 to {models.MAX_PATH} bytes")
    if _FORBIDDEN.search(name):
        raise InvalidArgumentError("a file name must not contain backslashes or control "
                                   "characters")
    if name.startswith("/"):
        if name != DATA_DIR and not name.startswith(DATA_DIR + "/"):
            raise InvalidArgumentError(f"files live under {DATA_DIR}: name them relative to "
                                       f"it, or by a path inside it")
        relative = name[len(DATA_DIR):]
    else:
        relative = posixpath.join(directory[len(DATA_DIR):], name)
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgumentError("a file name must not contain '..'")
    if not parts and not allow_root:
        raise InvalidArgumentError("a file name must name a file, not the data directory")
    return "/".join([DATA_DIR, *parts])


def relative_name(path: str, directory: str = DATA_DIR) -> str:
    return posixpath.relpath(path, directory)


@dataclass
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class AcaService:
    def __init__(self, sandboxes: SandboxService, files: FileService, store: AcaSessionStore,
                 settings: AcaSettings) -> None:
        self._sandboxes = sandboxes
        self._files = files
        self._store = store
        self._settings = settings
        self._locks: dict[tuple[str, str, str], _Lock] = {}
        self._prepared: set[str] = set()  # sandboxes whose kernel works in /mnt/data
        self._tasks: set[asyncio.Task[None]] = set()
        sandboxes.on_stopped.append(self._stopped)

    async def start(self) -> None:
        """Forget the sessions whose sandbox did not survive (once the sandboxes started)."""
        live = self._sandboxes.live_ids()
        dropped = await asyncio.to_thread(self._store.forget_all_but, live)
        if dropped:
            log.info("%d dynamic sessions ended while the server was down", dropped)

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task

    # -- sessions ------------------------------------------------------------------------

    async def session(self, tenant: str, pool: str, identifier: bytes) -> NodeSandbox:
        """The running sandbox of the tenant's session, started if there is none."""
        image = self._settings.pools.get(pool)
        if image is None:
            raise NotFoundError(f"no session pool {pool!r:.80}")
        if not identifier:
            raise InvalidArgumentError("the identifier query parameter is required")
        if len(identifier) > MAX_IDENTIFIER:
            raise InvalidArgumentError(f"a session identifier has at most {MAX_IDENTIFIER} "
                                       "bytes")
        digest = identifier_hash(identifier)
        with self._locked((tenant, pool, digest)) as lock:
            async with lock:
                current = await asyncio.to_thread(self._store.get, tenant, pool, digest)
                sandbox: NodeSandbox | None = None
                if current is not None:
                    with contextlib.suppress(NotFoundError, SandboxNotRunningError):
                        sandbox = self._sandboxes.running(tenant, current)
                if sandbox is None:
                    sandbox = await self._start(tenant, pool, image, digest, current)
        found_sandbox(sandbox.id)
        return sandbox

    async def _start(self, tenant: str, pool: str, image: str, digest: str,
                     replacing: str | None) -> NodeSandbox:
        info = await self._sandboxes.create(tenant, models.SandboxCreate(
            image=image, timeout=self._settings.lifetime, idle_timeout=self._settings.cooldown,
            metadata={"aca.pool": pool, "aca.session": digest[:16]}))
        try:
            sandbox = self._sandboxes.running(tenant, info.id)
            await sandbox.files.mkdir(DATA_DIR)
            winner = await asyncio.to_thread(self._store.claim, tenant, pool, digest, info.id,
                                             replacing)
        except BaseException:
            await self._sandboxes.kill(tenant, info.id)
            raise
        if winner != info.id:  # another server of the same database started it first
            await self._sandboxes.kill(tenant, info.id)
            return self._sandboxes.running(tenant, winner)
        log.info("dynamic session in pool %s of tenant %s: sandbox %s", pool, tenant, info.id)
        return sandbox

    @contextlib.contextmanager
    def _locked(self, key: tuple[str, str, str]) -> Iterator[asyncio.Lock]:
        """One lock per session while anyone waits on it (the table never grows unbounded)."""
        entry = self._locks.setdefault(key, _Lock())
        entry.users += 1
        try:
            yield entry.lock
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]

    def _stopped(self, sandbox_id: str) -> None:
        self._prepared.discard(sandbox_id)
        task = asyncio.get_running_loop().create_task(self._forget(sandbox_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget(self, sandbox_id: str) -> None:
        try:
            await asyncio.to_thread(self._store.forget, sandbox_id)
        except Exception:
            log.exception("forgetting the dynamic sessions of sandbox %s failed", sandbox_id)

    # -- code ----------------------------------------------------------------------------

    async def execute(self, tenant: str, pool: str, identifier: bytes, code: str,
                      timeout: int) -> models.Execution:
        sandbox = await self.session(tenant, pool, identifier)
        if sandbox.id not in self._prepared:
            prepared = await sandbox.code.run(_PREPARE, timeout=60)
            if prepared.error is not None:
                raise SandboxNotRunningError(f"the session's kernel failed to start: "
                                             f"{prepared.error.name}: {prepared.error.value}")
            self._prepared.add(sandbox.id)
        execution = await sandbox.code.run(code, timeout=float(timeout))
        if execution.error is not None and execution.error.name == "KernelDied":
            self._prepared.discard(sandbox.id)  # a fresh kernel starts in /work again
        return execution

    # -- files ---------------------------------------------------------------------------

    async def upload(self, tenant: str, pool: str, identifier: bytes,
                     body: AsyncIterator[bytes], content_type: str,
                     directory: str = DATA_DIR) -> tuple[models.EntryInfo, str]:
        """Write the body's ``file`` part; returns the file's entry and its directory."""
        part = await file_part(body, content_type)
        path = confine(part.filename, directory)
        sandbox = await self.session(tenant, pool, identifier)
        await self._files.write(tenant, sandbox.id, path, part.content, 0o644)
        return await sandbox.files.stat(path), posixpath.dirname(path)

    async def list(self, tenant: str, pool: str, identifier: bytes,
                   directory: str = DATA_DIR, recursive: bool = True
                   ) -> list[models.EntryInfo]:
        """Entries under ``directory`` (files only when ``recursive``), by path."""
        sandbox = await self.session(tenant, pool, identifier)
        try:
            entries = await sandbox.files.list(directory, LIST_DEPTH if recursive else 1)
        except NotFoundError:
            if directory == DATA_DIR:
                return []  # removed by the session's own code: nothing to list
            raise
        if recursive:
            entries = [e for e in entries if e.type == "file"]
        return sorted(entries, key=lambda e: e.path)

    async def stat(self, tenant: str, pool: str, identifier: bytes,
                   path: str) -> models.EntryInfo:
        sandbox = await self.session(tenant, pool, identifier)
        return await sandbox.files.stat(path)

    async def download(self, tenant: str, pool: str, identifier: bytes,
                       path: str) -> AsyncIterator[bytes]:
        sandbox = await self.session(tenant, pool, identifier)
        return await self._files.read_stream(tenant, sandbox.id, path)
