"""envd's ``filesystem.Filesystem`` service under the mount (docs/research/e2b-protocol.md
§5.4): ``Stat``, ``ListDir``, ``MakeDir``, ``Move`` and ``Remove`` over Corral's
:class:`FileService`, answering E2B's ``EntryInfo``.

Each call acts for a user: the one ``Authorization: Basic`` names, else E2B's default
(:mod:`.users`). Relative paths start at that user's home; the directories ``MakeDir``
and ``Move`` create are that user's. The agent does the work (as root, as envd does), so
no call is refused for the user's permissions.

How entries read: ``type`` is FILE, DIRECTORY or SYMLINK (a link is not followed: it is
reported as itself, ``type`` SYMLINK with ``isSymlink`` true, which both SDK lines read as
a link, and its ``symlinkTarget``); ``permissions`` is Go's ``FileMode.String()`` form
(``-rw-r--r--``, ``drwxr-xr-x``, ``Lrwxrwxrwx``), ``mode`` the permission bits;
``owner`` and ``group`` are names from the sandbox's tables (the number when it has
none); ``size`` an int64 as a string; ``modifiedTime`` RFC 3339 in UTC.

The watch methods (``WatchDir``, ``CreateWatcher``, ``GetWatcherEvents``,
``RemoveWatcher``) are :mod:`.watch`'s, whose router the app includes before
:data:`fallback` (included last); another module may instead :func:`register` its
endpoints here. A method nobody serves, or one the service does not have, answers
``unimplemented``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from corral.api import models as corral
from corral.api.errors import SandboxError
from corral.api.limits import MAX_LIST_DEPTH, MAX_PATH

from ..logs import SANDBOX_SCOPE
from ..services import FileService, SandboxService
from . import connect, users
from .connect import ConnectError
from .envd import _basic_user as basic_user
from .dataplane import not_found

router = APIRouter()
SERVICE: Final = "/filesystem.Filesystem/"
#: Every method of the service, served here or by a registered module.
METHODS: Final = ("Stat", "ListDir", "MakeDir", "Move", "Remove", "WatchDir",
                  "CreateWatcher", "GetWatcherEvents", "RemoveWatcher")
_TYPES: Final = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY",
                 "symlink": "FILE_TYPE_SYMLINK", "other": "FILE_TYPE_UNSPECIFIED"}
_TYPE_LETTER: Final = {"dir": "d", "symlink": "L", "other": "?"}

Endpoint = Callable[[Request], Awaitable[Response]]
#: Methods served by another module (the watch methods): method name → endpoint. The
#: endpoint gets the request as authenticated (the sandbox's id in the scope, see
#: :func:`sandbox_of`) and answers it whole, Connect errors included.
_PLUGGED: dict[str, Endpoint] = {}


def register(method: str, endpoint: Endpoint) -> None:
    """Serve ``method`` of the service with ``endpoint`` (instead of ``unimplemented``)."""
    if method not in METHODS:
        raise ValueError(f"filesystem.Filesystem has no method {method!r}")
    _PLUGGED[method] = endpoint


# -- EntryInfo ---------------------------------------------------------------------------

def permissions(kind: str, mode: int) -> str:
    """``mode`` as Go's ``FileMode.String()`` writes it: type and special-bit letters
    (``-`` when none), then ``rwxrwxrwx``."""
    letters = _TYPE_LETTER.get(kind, "")
    letters += "u" if mode & 0o4000 else ""
    letters += "g" if mode & 0o2000 else ""
    letters += "t" if mode & 0o1000 else ""
    bits = "".join(flag if mode & (1 << (8 - i)) else "-"
                   for i, flag in enumerate("rwxrwxrwx"))
    return (letters or "-") + bits


def timestamp(mtime: float) -> str:
    """Seconds since the epoch as a protobuf JSON ``Timestamp`` (RFC 3339, UTC)."""
    try:
        moment = datetime.fromtimestamp(mtime, UTC)
    except (OverflowError, OSError, ValueError):
        moment = datetime.fromtimestamp(0, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_info(entry: corral.EntryInfo, accounts: users.Accounts) -> dict[str, Any]:
    """Corral's entry as envd's ``EntryInfo`` JSON."""
    info: dict[str, Any] = {
        "name": entry.name, "type": _TYPES[entry.type], "path": entry.path,
        "size": str(entry.size), "mode": entry.mode & 0o7777,
        "permissions": permissions(entry.type, entry.mode),
        "owner": accounts.owner(entry.uid), "group": accounts.group(entry.gid),
        "modifiedTime": timestamp(entry.mtime),
    }
    if entry.type == "symlink":
        info["isSymlink"] = True
        if entry.target is not None:
            info["symlinkTarget"] = entry.target
    return info


def text_field(message: dict[str, Any], key: str) -> str:
    """A request's path field: a non-empty string of at most MAX_PATH characters."""
    value = message.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_PATH or "\0" in value:
        raise ConnectError("invalid_argument", f"{key} must be a non-empty path of at most "
                           f"{MAX_PATH} characters, without NUL")
    return value


def depth_field(message: dict[str, Any]) -> int:
    """ListDir's depth: absent or 0 is 1 (the SDKs' default), at most MAX_LIST_DEPTH."""
    raw = message.get("depth", 0)
    if isinstance(raw, str) and raw.isdigit() and len(raw) <= 10:
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ConnectError("invalid_argument", "depth must be a non-negative integer")
    if raw > MAX_LIST_DEPTH:
        raise ConnectError("invalid_argument", f"depth {raw} is deeper than the "
                           f"{MAX_LIST_DEPTH} levels Corral lists")
    return raw or 1


# -- the calls ---------------------------------------------------------------------------

def sandbox_of(request: Request) -> tuple[str, str] | None:
    """(tenant, sandbox id) of the live sandbox the request authenticated for."""
    sandbox_id = request.scope.get(SANDBOX_SCOPE)
    tenant = request.scope.get("corral.tenant")
    service: SandboxService = request.app.state.sandboxes
    if not sandbox_id or not tenant or service.owner(sandbox_id) != tenant:
        return None
    return tenant, sandbox_id


class _Call:
    """One RPC: the sandbox, its accounts, and the user the call acts for."""

    def __init__(self, files: FileService, tenant: str, sandbox_id: str,
                 accounts: users.Accounts, account: users.Account) -> None:
        self.files = files
        self.tenant = tenant
        self.sandbox_id = sandbox_id
        self.accounts = accounts
        self.account = account

    def path(self, message: dict[str, Any], key: str = "path") -> str:
        return self.account.resolve(text_field(message, key))

    async def entry(self, path: str) -> dict[str, Any]:
        found = await self.files.stat(self.tenant, self.sandbox_id, path)
        return entry_info(found, self.accounts)

    async def stat(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"entry": await self.entry(self.path(message))}

    async def list_dir(self, message: dict[str, Any]) -> dict[str, Any]:
        path, depth = self.path(message), depth_field(message)
        listed = await self.files.list(self.tenant, self.sandbox_id, path, depth)
        return {"entries": [entry_info(e, self.accounts) for e in listed.entries]}

    async def make_dir(self, message: dict[str, Any]) -> dict[str, Any]:
        path = self.path(message)
        made = await self.files.mkdir(self.tenant, self.sandbox_id, corral.MakeDir(
            path=path, parents=True, user=self.account.name))
        if not made.created:
            raise ConnectError("already_exists", f"directory {path[:200]!r} already exists")
        return {"entry": await self.entry(path)}

    async def move(self, message: dict[str, Any]) -> dict[str, Any]:
        source, destination = self.path(message, "source"), self.path(message, "destination")
        parent = posixpath.dirname(destination)
        await self.files.mkdir(self.tenant, self.sandbox_id, corral.MakeDir(
            path=parent, parents=True, user=self.account.name))
        await self.files.rename(self.tenant, self.sandbox_id, corral.Rename(
            src=source, dst=destination, overwrite=True))
        return {"entry": await self.entry(destination)}

    async def remove(self, message: dict[str, Any]) -> dict[str, Any]:
        """A file, link or whole tree; a path already gone is no error (envd's
        ``RemoveAll``)."""
        path = self.path(message)
        if (await self.files.exists(self.tenant, self.sandbox_id, path)).exists:
            await self.files.remove(self.tenant, self.sandbox_id, path, recursive=True)
        return {}


_UNARY: Final[dict[str, Callable[[_Call, dict[str, Any]], Awaitable[dict[str, Any]]]]] = {
    "Stat": _Call.stat, "ListDir": _Call.list_dir, "MakeDir": _Call.make_dir,
    "Move": _Call.move, "Remove": _Call.remove,
}
#: The audited calls (action names as Corral's own file routes').
ACTIONS: Final = {"MakeDir": "file.mkdir", "Move": "file.rename", "Remove": "file.remove"}


async def call(method: str, request: Request) -> Response:
    """One call of the service; errors are Connect's."""
    plugged = _PLUGGED.get(method)
    if plugged is not None:
        return await plugged(request)
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    try:
        handler = _UNARY.get(method)
        if handler is None and method in METHODS:
            raise ConnectError("unimplemented", f"filesystem.Filesystem/{method} is not "
                               "served by Corral's envd yet (directory watching is not "
                               "available); poll with files.list instead")
        if handler is None:
            raise ConnectError("unimplemented", f"filesystem.Filesystem/{method[:64]} is not "
                               "served: the service has no such method")
        message = connect.read_unary(await request.body())
        files: FileService = request.app.state.files
        accounts = await users.load(files, *found)
        account = accounts.named(basic_user(request.headers))
        return JSONResponse(await handler(_Call(files, *found, accounts, account), message))
    except ConnectError as exc:
        return exc.response()
    except SandboxError as exc:
        return ConnectError.of(exc).response()


def _route(method: str) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await call(method, request)
    endpoint.__name__ = f"filesystem_{method}"
    endpoint.__doc__ = f"filesystem.Filesystem/{method}"
    return endpoint


for _method in _UNARY:
    router.add_api_route(SERVICE + _method, _route(_method), methods=["POST"])

#: The service's other methods (one route each, for metrics and the audit trail) and any
#: unknown one: served by a registered endpoint, else ``unimplemented``. The app includes
#: it after every router that serves a method of the service itself.
fallback = APIRouter()
for _method in METHODS:
    if _method not in _UNARY:
        fallback.add_api_route(SERVICE + _method, _route(_method), methods=["POST"])


@fallback.post(SERVICE + "{method}")
async def other_method(method: str, request: Request) -> Response:
    """A method this service does not have: ``unimplemented``."""
    return await call(method, request)
