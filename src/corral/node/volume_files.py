"""A volume's files without a sandbox: read, write, list, stat, remove and mkdir on the host.

This is hostile input on the host: the paths come from an API caller, and the tree they
walk was written by sandboxes, which may have filled it with links to ``/etc/shadow``, to
``../../..``, chains of links, and may swap a folder for a link while a request runs. So no
path is ever joined to the volume's host folder and handed to a plain ``open``:

* every path is first made absolute and normal by the sandbox file API's own rule
  (:func:`corral.api.limits.normalize_path`: ``..`` stops at the volume's root);
* its folder is then opened with ``openat2(2)`` from a descriptor of the volume's root with
  ``RESOLVE_IN_ROOT`` (absolute links and ``..`` resolve as if the volume's root were
  ``/``: a sandbox's link means inside the volume what it means inside the sandbox),
  ``RESOLVE_NO_MAGICLINKS`` and ``RESOLVE_NO_XDEV`` (no ``/proc`` link, no other
  filesystem): whatever a link says, resolution cannot leave the volume, and the kernel
  checks it at every step, so a link swapped in meanwhile changes nothing;
* the last name is acted on relative to that folder's descriptor with calls that do not
  follow it (``mkdirat``, ``unlinkat``, ``renameat``, ``fstatat(AT_SYMLINK_NOFOLLOW)``,
  ``openat(O_CREAT|O_EXCL|O_NOFOLLOW)``); ``shutil.rmtree`` with ``dir_fd`` walks by
  descriptors and never follows a link.

Reads follow a last link inside the volume and return regular files only (a FIFO would
never end, and devices are refused: the volume is ``nodev`` anyway). Writes go to a
temporary file renamed over the name (a link there is replaced, never written through),
stream their chunks, and are owned by uid 0 with the mode asked for. Listings are bounded
by :data:`~corral.api.limits.MAX_LIST_DEPTH` and :data:`~corral.api.limits.MAX_LIST_ENTRIES`
and walk below the listed folder without following any link.

Python 3.11 has no ``openat2`` wrapper: it is called here through ``syscall(437)`` with a
``struct open_how``. Nothing here needs privilege beyond reading the volume (the node is
root); nothing mounts.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Literal

from corral.api.errors import (AlreadyExistsError, InvalidArgumentError, NotFoundError,
                               PermissionDeniedError, ResourceExhaustedError, SandboxError)
from corral.api.limits import MAX_LIST_DEPTH, MAX_LIST_ENTRIES, normalize_path
from corral.api.models import EntryInfo

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
#: How every path a caller names is resolved from the volume's root.
IN_VOLUME = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
#: How a listing descends below the folder it lists: no link at all.
BELOW = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
#: openat2 answers EAGAIN when a rename raced a RESOLVE_IN_ROOT walk; a sandbox renaming
#: in a loop gets the request refused after this many tries, never resolved wrongly.
_EAGAIN_TRIES = 64
#: Bytes per chunk :func:`read_stream` yields.
CHUNK = 256 * 1024
#: Mode of folders the file API makes.
DIR_MODE = 0o755


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int = IN_VOLUME) -> int:
    """``openat2(dirfd, path, {flags | O_CLOEXEC, 0, resolve})``: a descriptor, or OSError."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    raw = os.fsencode(path)
    for _ in range(_EAGAIN_TRIES):
        fd = _libc.syscall(_SYS_OPENAT2, dirfd, raw, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err))
    raise OSError(errno.EAGAIN, "the volume kept changing while the path was resolved")


def parts_of(path: object) -> tuple[str, ...]:
    """A path inside a volume (``/a/b`` or ``a/b``) as its names, or InvalidArgumentError."""
    try:
        normal = normalize_path(path, "/")
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None
    return tuple(part for part in normal.split("/") if part)


def _shown(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def failure(action: str, label: str, parts: tuple[str, ...], exc: OSError) -> SandboxError:
    """The error a caller gets for an OS error (the same codes as the sandbox file API's)."""
    where = f"{action} {_shown(parts)!r:.300} in {label}"
    code = exc.errno
    if code == errno.ENOENT:
        return NotFoundError(f"{where}: no such file or folder")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"{where}: {os.strerror(code)}")
    if code == errno.EEXIST:
        return AlreadyExistsError(f"{where}: it already exists")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhaustedError(f"{where}: the volume is full (its quota)")
    if code == errno.ELOOP:
        return InvalidArgumentError(f"{where}: too many levels of links")
    if code == errno.EXDEV:
        return InvalidArgumentError(f"{where}: a link leads out of the volume")
    return InvalidArgumentError(f"{where}: {os.strerror(code) if code else exc}")


def open_dir(root: int, parts: tuple[str, ...]) -> int:
    """A descriptor of the folder at ``parts``, links followed inside the volume."""
    return openat2(root, "/".join(parts) or ".", os.O_RDONLY | os.O_DIRECTORY)


def _make_dirs(root: int, parts: tuple[str, ...]) -> tuple[int, bool]:
    """The folder at ``parts``, made with its parents where missing; (descriptor, whether
    the last one was made now)."""
    try:
        return open_dir(root, parts), False
    except FileNotFoundError:
        pass
    current = open_dir(root, ())
    made = False
    try:
        for depth, name in enumerate(parts, 1):
            try:
                os.mkdir(name, DIR_MODE, dir_fd=current)
                made = True
            except FileExistsError:
                made = False  # a folder (or a link to one) already: followed below
            following = open_dir(root, parts[:depth])
            os.close(current)
            current = following
            if made:  # exactly DIR_MODE whatever the umask, and root's
                os.fchmod(current, DIR_MODE)
                _own(current)
        return current, made
    except BaseException:
        os.close(current)
        raise


def _own(fd: int) -> None:
    """Hand what the file API made to uid 0 (sandbox root), even in a setgid folder. The
    node is root; a rootless test run keeps its own uid, which is all it can give."""
    if os.geteuid() == 0:
        os.fchown(fd, 0, 0)


def read_stream(root: int, label: str, path: str) -> Iterator[bytes]:
    """A regular file's bytes in chunks. Errors (no such file, a folder, a FIFO, a device)
    are raised by this call, before any chunk; the returned iterator owns the file."""
    parts = parts_of(path)
    try:
        fd = openat2(root, "/".join(parts) or ".",
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise failure("read", label, parts, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise InvalidArgumentError(f"read {_shown(parts)!r:.300} in {label}: it is {kind}")
    except BaseException:
        os.close(fd)
        raise
    return _chunks(fd, label, parts)


def _chunks(fd: int, label: str, parts: tuple[str, ...]) -> Iterator[bytes]:
    try:
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except OSError as exc:
                raise failure("read", label, parts, exc) from None
            if not chunk:
                return
            yield chunk
    finally:
        os.close(fd)


def write(root: int, label: str, path: str, chunks: Iterable[bytes], mode: int) -> int:
    """Write the file at ``path`` from ``chunks`` (parents made); returns its size.

    Streams to a temporary file beside it, renamed over the name at the end: a failed write
    (the volume full, a bad chunk) leaves what was there before.
    """
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise InvalidArgumentError("mode must be an integer between 0 and 0o7777")
    parts = parts_of(path)
    if not parts:
        raise InvalidArgumentError(f"write '/' in {label}: that is the volume's root folder")
    try:
        folder, _ = _make_dirs(root, parts[:-1])
    except OSError as exc:
        raise failure("write", label, parts, exc) from None
    temporary = f".corral-upload-{secrets.token_hex(8)}"
    try:
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=folder)
        except OSError as exc:
            raise failure("write", label, parts, exc) from None
        try:
            size = _fill(fd, chunks, label, parts)
            _own(fd)
            os.fchmod(fd, mode)
            os.close(fd)
            fd = -1
            os.rename(temporary, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(temporary, dir_fd=folder)
            except OSError:
                pass  # renamed already, or gone
            if isinstance(exc, OSError):
                raise failure("write", label, parts, exc) from None
            raise
        return size
    finally:
        os.close(folder)


def _fill(fd: int, chunks: Iterable[bytes], label: str, parts: tuple[str, ...]) -> int:
    size = 0
    for chunk in chunks:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError("file content chunks must be bytes")
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]
            size += written
    return size


def _entry(parts: tuple[str, ...], st: os.stat_result, target: str | None) -> EntryInfo:
    mode = st.st_mode
    kind: Literal["file", "dir", "symlink", "other"] = (
        "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
        else "symlink" if stat.S_ISLNK(mode) else "other")
    return EntryInfo(name=parts[-1] if parts else "/", path=_shown(parts), type=kind,
                     size=st.st_size, mode=stat.S_IMODE(mode), mtime=st.st_mtime,
                     uid=st.st_uid, gid=st.st_gid, target=target)


def _describe(folder: int, name: str, parts: tuple[str, ...]) -> EntryInfo:
    """The entry ``name`` of ``folder`` (a descriptor), shown at ``parts``."""
    st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    target = None
    if stat.S_ISLNK(st.st_mode):
        target = os.fsdecode(os.readlink(name, dir_fd=folder))
    return _entry(parts, st, target)


def stat_path(root: int, label: str, path: str) -> EntryInfo:
    """Describe one path (a last link is described, not followed)."""
    parts = parts_of(path)
    try:
        if not parts:
            return _entry(parts, os.fstat(root), None)
        folder = open_dir(root, parts[:-1])
        try:
            return _describe(folder, parts[-1], parts)
        finally:
            os.close(folder)
    except OSError as exc:
        raise failure("stat", label, parts, exc) from None


def list_dir(root: int, label: str, path: str, depth: int = 1) -> list[EntryInfo]:
    """Entries under a folder, ``depth`` levels down, sorted by path; at most
    :data:`MAX_LIST_ENTRIES`. Below the folder, no link is followed."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_LIST_DEPTH:
        raise InvalidArgumentError(f"depth must be an integer between 1 and {MAX_LIST_DEPTH}")
    parts = parts_of(path)
    try:
        top = open_dir(root, parts)
    except OSError as exc:
        raise failure("list", label, parts, exc) from None
    entries: list[EntryInfo] = []
    pending: deque[tuple[tuple[str, ...], int]] = deque([((), 1)])
    try:
        while pending and len(entries) < MAX_LIST_ENTRIES:
            below, level = pending.popleft()
            try:
                folder = openat2(top, "/".join(below) or ".", os.O_RDONLY | os.O_DIRECTORY,
                                 BELOW)
            except OSError as exc:
                if not below:
                    raise failure("list", label, parts, exc) from None
                continue  # swapped or removed meanwhile
            try:
                with os.scandir(folder) as found:
                    for item in found:
                        if len(entries) >= MAX_LIST_ENTRIES:
                            break
                        child = (*below, item.name)
                        try:
                            entries.append(_describe(folder, item.name, (*parts, *child)))
                        except OSError:
                            continue  # gone meanwhile
                        if level < depth and item.is_dir(follow_symlinks=False):
                            pending.append((child, level + 1))
            finally:
                os.close(folder)
    finally:
        os.close(top)
    entries.sort(key=lambda entry: entry.path)
    return entries


def remove(root: int, label: str, path: str, recursive: bool = False) -> None:
    """Remove a file, link (never what it points to) or, with ``recursive``, a folder tree."""
    parts = parts_of(path)
    if not parts:
        raise InvalidArgumentError(f"remove '/' in {label}: refusing to remove the volume's "
                                   "root; remove the volume instead")
    try:
        folder = open_dir(root, parts[:-1])
    except OSError as exc:
        raise failure("remove", label, parts, exc) from None
    try:
        name = parts[-1]
        if stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
            if recursive:
                shutil.rmtree(name, dir_fd=folder)  # by descriptors; follows no link
            else:
                try:
                    os.rmdir(name, dir_fd=folder)
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY:
                        raise
                    raise InvalidArgumentError(
                        f"remove {_shown(parts)!r:.300} in {label}: it is a folder that is "
                        "not empty; pass recursive=True to remove it") from None
        else:
            os.unlink(name, dir_fd=folder)
    except OSError as exc:
        raise failure("remove", label, parts, exc) from None
    finally:
        os.close(folder)


def mkdir(root: int, label: str, path: str) -> bool:
    """Make a folder and its parents; False if it already was one (links followed inside
    the volume)."""
    parts = parts_of(path)
    try:
        fd, made = _make_dirs(root, parts)
    except NotADirectoryError:
        raise AlreadyExistsError(f"mkdir {_shown(parts)!r:.300} in {label}: it, or a folder "
                                 "above it, exists and is not a folder") from None
    except FileExistsError:
        raise AlreadyExistsError(f"mkdir {_shown(parts)!r:.300} in {label}: it exists and is "
                                 "not a folder") from None
    except OSError as exc:
        raise failure("mkdir", label, parts, exc) from None
    os.close(fd)
    return made
