"""File operations inside the sandbox.

The agent runs inside the sandbox's own root, so every path (symlinks included) resolves
within the sandbox: there is no host path to escape to. What remains to guard is the
agent itself: kernel pseudo-filesystems (``/proc``, ``/sys``, ``/dev``) are refused, since
``/proc/self/fd`` would hand out the agent's channel; only regular files are read (a FIFO or
``/dev/zero`` would hang or never end); and writes land in a temporary file renamed into
place on success, so a failed upload (disk full, cancelled) leaves the old file intact.
"""

from __future__ import annotations

import errno
import json
import os
import stat

from corral.api import agent_protocol as proto
from corral.api.limits import MAX_LIST_DEPTH, MAX_LIST_ENTRIES, normalize_path

from .channel import Channel, Credits
from .errors import RequestError
from .root import Root

# typing is not imported at run time: every module the agent loads slows sandbox start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: A handler result under this key is sent as the reply frame's data, not its header.
DATA_KEY = "__data__"
PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


def check_path(path: object, root: Root | None = None) -> str:
    """Validate a request path and return it normalized (absolute, no ``..``).

    The node resolves relative paths and applies the same rule
    (:func:`corral.api.limits.normalize_path`) first; the agent applies it again, as it
    trusts no peer, and adds its own refusal of the kernel's pseudo-filesystems.
    ``root``: where the sandbox's ``/`` lies for the agent (see :mod:`.root`).
    """
    try:
        normal = normalize_path(path)
    except ValueError as exc:
        raise RequestError("invalid_argument", str(exc)) from None
    root = root or Root()
    real = root.inside(os.path.realpath(root.host(normal)))
    if real is None:
        raise RequestError("permission_denied", f"{normal!r} resolves outside the sandbox")
    for candidate in (normal, real):
        for pseudo in PSEUDO_ROOTS:
            if candidate == pseudo or candidate.startswith(pseudo + "/"):
                raise RequestError("permission_denied", f"the file API does not serve {pseudo}")
    return normal


def _os_error(action: str, path: str, exc: OSError) -> RequestError:
    codes = {
        errno.ENOENT: "not_found",
        errno.EACCES: "permission_denied",
        errno.EPERM: "permission_denied",
        errno.EROFS: "permission_denied",
        errno.EEXIST: "already_exists",
        errno.ENOSPC: "resource_exhausted",
        errno.EDQUOT: "resource_exhausted",
    }
    code = codes.get(exc.errno or 0, "invalid_argument")
    detail = "disk limit reached" if code == "resource_exhausted" else exc.strerror
    return RequestError(code, f"{action} {path!r}: {detail}")


def entry(path: str, st: os.stat_result, opened: str | None = None) -> dict[str, Any]:
    """Describe one file the way ``stat`` and ``list`` answer (``opened``: the path the
    agent opens for ``path``, if another; see :mod:`.root`)."""
    mode = st.st_mode
    kind = ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
            else "symlink" if stat.S_ISLNK(mode) else "other")
    info: dict[str, Any] = {
        "name": os.path.basename(path) or "/", "path": path, "type": kind,
        "size": st.st_size, "mode": stat.S_IMODE(mode), "mtime": st.st_mtime,
        "uid": st.st_uid, "gid": st.st_gid,
    }
    if kind == "symlink":
        try:
            info["target"] = os.readlink(opened or path)
        except OSError:
            info["target"] = None
    return info


class Files:
    """Handlers for the file operations of the protocol."""

    def __init__(self, channel: Channel, root: Root | None = None) -> None:
        self._channel = channel
        self._root = root or Root()
        # id -> (fd, tmp path, final path, final path as the request named it)
        self._uploads: dict[int, tuple[int, str, str, str]] = {}
        self.downloads: dict[int, Credits] = {}

    def _path(self, path: object) -> tuple[str, str]:
        """A request path, checked: (as the sandbox names it, as the agent opens it)."""
        checked = check_path(path, self._root)
        return checked, self._root.host(checked)

    def stat(self, req: dict[str, Any]) -> dict[str, Any]:
        path, opened = self._path(req.get("path"))
        try:
            return entry(path, os.lstat(opened), opened)
        except OSError as exc:
            raise _os_error("stat", path, exc) from None

    def exists(self, req: dict[str, Any]) -> dict[str, Any]:
        path, opened = self._path(req.get("path"))
        return {"exists": os.path.lexists(opened)}

    def list(self, req: dict[str, Any]) -> dict[str, Any]:
        path, _ = self._path(req.get("path"))
        depth = req.get("depth", 1)
        if not isinstance(depth, int) or not 1 <= depth <= MAX_LIST_DEPTH:
            raise RequestError("invalid_argument", f"depth must be between 1 and {MAX_LIST_DEPTH}")
        entries: list[dict[str, Any]] = []
        truncated = False
        pending = [(path, 1)]
        while pending and not truncated:
            folder, level = pending.pop(0)
            try:
                with os.scandir(self._root.host(folder)) as it:
                    for item in it:
                        if len(entries) >= MAX_LIST_ENTRIES:
                            truncated = True
                            break
                        child = os.path.join(folder, item.name)
                        st = item.stat(follow_symlinks=False)
                        entries.append(entry(child, st, self._root.host(child)))
                        if level < depth and stat.S_ISDIR(st.st_mode):
                            pending.append((child, level + 1))
            except OSError as exc:
                if folder == path:
                    raise _os_error("list", path, exc) from None
        entries.sort(key=lambda e: str(e["path"]))
        # The entries travel as the frame's data (up to 1 MiB), not in its header.
        payload = json.dumps(entries, separators=(",", ":")).encode()
        while len(payload) > proto.MAX_DATA - 1024:
            entries = entries[: len(entries) * 3 // 4]
            truncated = True
            payload = json.dumps(entries, separators=(",", ":")).encode()
        return {"truncated": truncated, "count": len(entries), DATA_KEY: payload}

    def mkdir(self, req: dict[str, Any]) -> dict[str, Any]:
        path, opened = self._path(req.get("path"))
        if os.path.isdir(opened):
            return {"created": False}
        try:
            if req.get("parents", True):
                os.makedirs(opened)
            else:
                os.mkdir(opened)
        except OSError as exc:
            raise _os_error("mkdir", path, exc) from None
        return {"created": True}

    def remove(self, req: dict[str, Any]) -> dict[str, Any]:
        path, opened = self._path(req.get("path"))
        if path == "/":
            raise RequestError("invalid_argument", "refusing to remove /")
        try:
            st = os.lstat(opened)
            if stat.S_ISDIR(st.st_mode):
                if req.get("recursive", False):
                    import shutil  # only here: it is slow to import

                    shutil.rmtree(opened)  # never follows symlinks
                elif os.listdir(opened):
                    raise RequestError("invalid_argument",
                                       f"{path!r} is a directory that is not empty; "
                                       "pass recursive=True to remove it")
                else:
                    os.rmdir(opened)
            else:
                os.unlink(opened)
        except OSError as exc:
            raise _os_error("remove", path, exc) from None
        return {}

    def rename(self, req: dict[str, Any]) -> dict[str, Any]:
        src, src_opened = self._path(req.get("src"))
        dst, dst_opened = self._path(req.get("dst"))
        if not req.get("overwrite", False) and os.path.lexists(dst_opened):
            raise RequestError("already_exists", f"{dst!r} already exists")
        try:
            os.rename(src_opened, dst_opened)
        except OSError as exc:
            raise _os_error("rename", src, exc) from None
        return {}

    # -- streamed transfers -------------------------------------------------------------

    def read(self, req_id: int, req: dict[str, Any]) -> None:
        """Stream a regular file as data frames (runs on its own thread)."""
        path, opened = self._path(req.get("path"))
        try:
            fd = os.open(opened, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise _os_error("read", path, exc) from None
        credits = Credits()
        self.downloads[req_id] = credits
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise RequestError("invalid_argument", f"{path!r} is {kind}")
            os.set_blocking(fd, True)
            self._channel.send({"id": req_id, "ev": proto.EV_OK, "size": st.st_size})
            while True:
                chunk = os.read(fd, proto.CHUNK)
                if not chunk:
                    break
                if not credits.take():
                    return
                self._channel.send({"id": req_id, "ev": proto.EV_DATA}, chunk)
            self._channel.send({"id": req_id, "ev": proto.EV_END})
        except OSError as exc:
            raise _os_error("read", path, exc) from None
        finally:
            os.close(fd)
            self.downloads.pop(req_id, None)

    def write_open(self, req_id: int, req: dict[str, Any]) -> None:
        path, opened = self._path(req.get("path"))
        mode = req.get("mode", 0o644)
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise RequestError("invalid_argument", "mode must be an integer between 0 and 0o7777")
        if os.path.isdir(opened):
            raise RequestError("invalid_argument", f"{path!r} is a directory")
        parent = os.path.dirname(opened)
        try:
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".corral-upload-{req_id}-{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode & 0o777)
        except OSError as exc:
            raise _os_error("write", path, exc) from None
        self._uploads[req_id] = (fd, tmp, opened, path)
        self._channel.send({"id": req_id, "ev": proto.EV_OK})

    def write_chunk(self, req: dict[str, Any], data: bytes) -> None:
        """Append one chunk to an open upload; finish it on ``eof``."""
        target = req.get("target")
        upload = self._uploads.get(target) if isinstance(target, int) else None
        if upload is None:
            return  # the upload already failed and was reported; drop its remaining chunks
        assert isinstance(target, int)
        fd, tmp, opened, path = upload
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if req.get("eof"):
                del self._uploads[target]
                size = os.fstat(fd).st_size
                os.fchmod(fd, os.fstat(fd).st_mode & 0o7777)
                os.close(fd)
                os.rename(tmp, opened)
                self._channel.send({"id": target, "ev": proto.EV_END, "size": size})
            else:
                self._channel.send({"id": target, "ev": proto.EV_ACK})
        except OSError as exc:
            self.abort(target)
            err = _os_error("write", path, exc)
            self._channel.send({"id": target, "ev": proto.EV_ERROR, "code": err.code,
                                "message": err.message})

    def cancel(self, target: int) -> None:
        """Stop a download or abandon an upload (its temporary file is removed)."""
        credits = self.downloads.get(target)
        if credits is not None:
            credits.close()
        self.abort(target)

    def detach(self) -> None:
        """The node went away: stop its downloads, abandon its unfinished uploads."""
        for target in list(self.downloads) + list(self._uploads):
            self.cancel(target)

    def abort(self, target: int) -> None:
        upload = self._uploads.pop(target, None)
        if upload is not None:
            fd, tmp, _, _ = upload
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
