"""envd's directory watches under the mount (docs/research/e2b-protocol.md §5.4), over
Corral's own (:meth:`corral.node.NodeFiles.watch`, inotify inside the sandbox):

* ``filesystem.Filesystem/WatchDir``, a server stream (the async SDKs' ``watch_dir``):
  ``{"start": {}}`` once the directory is watched, then ``{"filesystem": FilesystemEvent}``
  as changes happen and ``{"keepalive": {}}`` after each ``Keepalive-Ping-Interval`` of
  silence (as :mod:`.envd`'s process streams). ``Connect-Timeout-Ms`` bounds it (then
  ``deadline_exceeded``), and so does :data:`MAX_STREAM`, with or without the header. The
  stream ends cleanly when the watched directory is removed or moved away; the client
  leaving stops the watch.
* ``CreateWatcher`` / ``GetWatcherEvents`` / ``RemoveWatcher``, the sync SDKs' polling
  ``watch_dir``: :class:`Watchers` keeps each watch on the server, its events held between
  polls. Bounds: :data:`MAX_PER_SANDBOX` watchers per sandbox and :data:`MAX_WATCHERS` in
  all (``resource_exhausted`` past them), :data:`MAX_HELD` events held per watcher (later
  ones are dropped until a poll takes them). A watcher goes when its sandbox stops, and
  after :data:`IDLE` seconds without a poll; a pause ends its watch (the next poll gets
  what was held, then the error, and the watcher goes).

``FilesystemEvent`` carries ``name`` (relative to the watched directory) and ``type``;
Corral's ``overflow`` marker has no E2B counterpart and is not sent. ``includeEntry``
(envd 0.6.3) and ``allowNetworkMounts`` (0.6.4) are refused (``unimplemented``), which
the SDKs (that see envd 0.6.4 claimed) raise as ``SandboxException``. Relative paths start
at the home of the user ``Authorization: Basic`` names (E2B's ``user`` by default), as
for envd's other file calls (:mod:`.users`); the watch itself runs as the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from corral.api.errors import SandboxError
from corral.api.limits import MAX_PATH, MAX_WATCH_LIFETIME
from corral.api.models import WatchEvent
from corral.node import NodeWatch

from ..services import SandboxService
from . import connect, envd, users
from .connect import ConnectError
from .dataplane import not_found, sandbox_of

router = APIRouter()
SERVICE: Final = "/filesystem.Filesystem/"
#: Longest a ``WatchDir`` stream lasts, whatever its ``Connect-Timeout-Ms`` (or none) says.
MAX_STREAM: Final = MAX_WATCH_LIFETIME
#: Polling watchers a sandbox may have, and the server in all.
MAX_PER_SANDBOX: Final = 16
MAX_WATCHERS: Final = 1024
#: Events a polling watcher holds until the next ``GetWatcherEvents``.
MAX_HELD: Final = 4096
#: Seconds without a ``GetWatcherEvents`` after which a polling watcher is dropped.
IDLE: Final = 600.0
#: How often idle watchers are looked for.
_SWEEP: Final = 30.0
_MAX_ID: Final = 64
_TYPES: Final = {"create": "EVENT_TYPE_CREATE", "write": "EVENT_TYPE_WRITE",
                 "remove": "EVENT_TYPE_REMOVE", "rename": "EVENT_TYPE_RENAME",
                 "chmod": "EVENT_TYPE_CHMOD"}


def _request(message: dict[str, Any]) -> tuple[str, bool]:
    """(path, recursive) of a ``WatchDirRequest`` / ``CreateWatcherRequest``."""
    path = message.get("path")
    if not isinstance(path, str) or not path or len(path.encode()) > MAX_PATH:
        raise ConnectError("invalid_argument", f"path must be a non-empty string of at most "
                           f"{MAX_PATH} bytes")
    recursive = message.get("recursive", False)
    if not isinstance(recursive, bool):
        raise ConnectError("invalid_argument", "recursive must be true or false")
    if message.get("includeEntry") not in (None, False):
        raise ConnectError("unimplemented", "includeEntry is not served by Corral's envd; "
                           "watch without include_entry and stat the entries you need")
    if message.get("allowNetworkMounts") not in (None, False):
        raise ConnectError("unimplemented", "allowNetworkMounts is not served by Corral's "
                           "envd (its sandboxes have no network mounts); watch without it")
    return path, recursive


def _event(event: WatchEvent) -> dict[str, Any] | None:
    """Corral's event as envd's ``FilesystemEvent`` (None: no E2B counterpart)."""
    kind = _TYPES.get(event.type)
    return None if kind is None else {"name": event.name, "type": kind}


async def _open(request: Request, tenant: str, sandbox_id: str,
                message: dict[str, Any]) -> NodeWatch:
    path, recursive = _request(message)
    if not path.startswith("/"):  # the user's home, as for envd's other file calls
        accounts = await users.load(request.app.state.files, tenant, sandbox_id)
        path = accounts.named(envd._basic_user(request.headers)).resolve(path)
    sandboxes: SandboxService = request.app.state.sandboxes
    sandbox = await sandboxes.owned(tenant, sandbox_id, "a watch")
    return await sandbox.files.watch(path, recursive)


# -- WatchDir ----------------------------------------------------------------------------

async def watch_dir(request: Request) -> Response:
    """``filesystem.Filesystem/WatchDir``: the watch's events as a Connect stream."""
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    try:
        message = connect.read_single(await request.body())
        deadline = connect.timeout_ms(request.headers.get("connect-timeout-ms"))
        watch = await _open(request, found[0], found[1], message)
    except ConnectError as exc:
        return exc.response()
    except SandboxError as exc:
        return ConnectError.of(exc).response()
    bound = MAX_STREAM if deadline is None else min(deadline, MAX_STREAM)
    return StreamingResponse(_frames(watch, envd.keepalive_interval(request.headers), bound),
                             media_type=connect.STREAM_TYPE)


async def _events(watch: NodeWatch) -> AsyncIterator[WatchEvent]:
    """The watch's events; the watch is stopped however the iteration ends."""
    try:
        async for event in watch:
            yield event
    finally:
        await _stop(watch)


async def _frames(watch: NodeWatch, keepalive: float, deadline: float
                  ) -> AsyncIterator[bytes]:
    yield connect.envelope({"start": {}})
    try:
        async for item in envd._paced(_events(watch), keepalive, deadline, None):
            if item is envd._KEEPALIVE_MARK:
                yield connect.envelope({"keepalive": {}})
            elif item is envd._DEADLINE_MARK:
                yield connect.end_of_stream(ConnectError(
                    "deadline_exceeded", "the watch's Connect-Timeout-Ms ran out (or "
                    f"Corral's bound of {MAX_STREAM:g} s); watch again to go on"))
                return
            elif (event := _event(item)) is not None:
                yield connect.envelope({"filesystem": event})
    except SandboxError as exc:
        yield connect.end_of_stream(ConnectError.of(exc))
        return
    finally:
        await _stop(watch)
    yield connect.end_of_stream()


async def _stop(watch: NodeWatch) -> None:
    """Stop a watch, even from a cancelled task."""
    with contextlib.suppress(Exception):
        await asyncio.shield(watch.aclose())


# -- the polling watchers ----------------------------------------------------------------

@dataclass(eq=False)
class _Watcher:
    id: str
    tenant: str
    sandbox_id: str
    watch: NodeWatch
    polled: float = field(default_factory=time.monotonic)
    held: deque[dict[str, Any]] = field(default_factory=deque)
    #: Why the watch ended early (reported once its held events were taken).
    error: ConnectError | None = None
    task: asyncio.Task[None] | None = None


class Watchers:
    """The polling watchers of every sandbox, by id (see the module docstring)."""

    def __init__(self, sandboxes: SandboxService) -> None:
        self._sandboxes = sandboxes
        self._by_id: dict[str, _Watcher] = {}
        self._sweeper: asyncio.Task[None] | None = None
        sandboxes.on_stopped.append(self._sandbox_stopped)

    def count(self, sandbox_id: str) -> int:
        """The polling watchers sandbox ``sandbox_id`` has."""
        return sum(w.sandbox_id == sandbox_id for w in self._by_id.values())

    def _room(self, sandbox_id: str) -> None:
        if self.count(sandbox_id) >= MAX_PER_SANDBOX:
            raise ConnectError("resource_exhausted", f"sandbox {sandbox_id} already has "
                               f"{MAX_PER_SANDBOX} watchers; stop one (WatchHandle.stop)")
        if len(self._by_id) >= MAX_WATCHERS:
            raise ConnectError("resource_exhausted", f"the server holds {MAX_WATCHERS} "
                               "watchers; stop one, or try again later")

    async def create(self, request: Request, tenant: str, sandbox_id: str,
                     message: dict[str, Any]) -> dict[str, Any]:
        self._expire()
        self._room(sandbox_id)
        watch = await _open(request, tenant, sandbox_id, message)
        try:
            self._room(sandbox_id)  # others may have come while this one started
        except ConnectError:
            await _stop(watch)
            raise
        watcher = _Watcher(secrets.token_hex(12), tenant, sandbox_id, watch)
        self._by_id[watcher.id] = watcher
        watcher.task = asyncio.get_running_loop().create_task(self._hold(watcher))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return {"watcherId": watcher.id}

    async def events(self, request: Request, tenant: str, sandbox_id: str,
                     message: dict[str, Any]) -> dict[str, Any]:
        self._expire()
        watcher = self._get(tenant, sandbox_id, message)
        watcher.polled = time.monotonic()
        events = list(watcher.held)
        watcher.held.clear()
        if not events and watcher.error is not None:
            self._drop(watcher)
            raise watcher.error
        return {"events": events}

    async def remove(self, request: Request, tenant: str, sandbox_id: str,
                     message: dict[str, Any]) -> dict[str, Any]:
        self._drop(self._get(tenant, sandbox_id, message))
        return {}

    def _get(self, tenant: str, sandbox_id: str, message: dict[str, Any]) -> _Watcher:
        watcher_id = message.get("watcherId")
        if not isinstance(watcher_id, str) or not 0 < len(watcher_id) <= _MAX_ID:
            raise ConnectError("invalid_argument", "watcherId (a string) is required")
        watcher = self._by_id.get(watcher_id)
        if watcher is None or (watcher.tenant, watcher.sandbox_id) != (tenant, sandbox_id):
            raise ConnectError("not_found", f"no watcher {watcher_id!r} in sandbox "
                               f"{sandbox_id} (stopped, or dropped after {IDLE:g} s "
                               "without a poll, or its sandbox paused)")
        return watcher

    async def _hold(self, watcher: _Watcher) -> None:
        """Keep the watch's events until a poll takes them (at most :data:`MAX_HELD`)."""
        try:
            async for event in watcher.watch:
                found = _event(event)
                if found is not None and len(watcher.held) < MAX_HELD:
                    watcher.held.append(found)
        except SandboxError as exc:
            watcher.error = ConnectError.of(exc)
        finally:
            await _stop(watcher.watch)

    def _drop(self, watcher: _Watcher) -> None:
        if self._by_id.pop(watcher.id, None) is not None and watcher.task is not None:
            watcher.task.cancel()  # its finally stops the watch

    def _sandbox_stopped(self, sandbox_id: str) -> None:
        for watcher in [w for w in self._by_id.values() if w.sandbox_id == sandbox_id]:
            self._drop(watcher)

    def _expire(self) -> None:
        """Drop the watchers nobody polled for :data:`IDLE` seconds."""
        now = time.monotonic()
        for watcher in [w for w in self._by_id.values() if now - w.polled > IDLE]:
            self._drop(watcher)

    async def _sweep(self) -> None:
        """:meth:`_expire` now and then, while there are watchers (besides each call)."""
        while self._by_id:
            await asyncio.sleep(_SWEEP)
            self._expire()


Unary = Callable[[Watchers, Request, str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
#: The unary methods, by name; each takes the watcher table, the request, the tenant, the
#: sandbox id and the request message.
METHODS: Final[dict[str, Unary]] = {
    "CreateWatcher": Watchers.create, "GetWatcherEvents": Watchers.events,
    "RemoveWatcher": Watchers.remove,
}


async def unary(method: str, request: Request) -> Response:
    """One call of a unary watcher method; errors are Connect's."""
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    watchers: Watchers = request.app.state.watchers
    try:
        message = connect.read_unary(await request.body())
        return JSONResponse(await METHODS[method](watchers, request, found[0], found[1],
                                                  message))
    except ConnectError as exc:
        return exc.response()
    except SandboxError as exc:
        return ConnectError.of(exc).response()


def _route(method: str) -> Callable[[Request], Awaitable[Response]]:
    async def call(request: Request) -> Response:
        return await unary(method, request)
    call.__name__ = f"filesystem_{method}"
    call.__doc__ = f"filesystem.Filesystem/{method}"
    return call


router.add_api_route(SERVICE + "WatchDir", watch_dir, methods=["POST"])
for _method in METHODS:
    router.add_api_route(SERVICE + _method, _route(_method), methods=["POST"])
