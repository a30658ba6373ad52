"""Host files for agent integrations, confined to directories the developer allow-lists.

The lesson of CVE-2026-25592 (a model-chosen local path in a download tool wrote into the
host's Startup folder): a path that reaches the host from a tool call is attacker input.
:class:`HostDirectories` accepts a path only if it names a file inside one of its
directories, and enforces that when opening, not just when checking:

* refused outright: empty names, NUL or control characters, backslashes and drive letters
  (Windows-style paths), ``..`` components, and absolute paths outside the directories;
* each directory component is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the
  one before (``openat``), starting from the allow-listed directory itself (resolved once,
  through its symlinks, when the allow-list is made), so a symlink anywhere below it, made
  before or during the call, is refused rather than followed;
* a write goes to a new temporary file (``O_EXCL | O_NOFOLLOW``) in the already-opened
  target directory, then is renamed over the name: a symlink planted at the name is
  replaced, never written through; every check happens before the first byte is written.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from corral.api.errors import InvalidArgumentError, PermissionDeniedError

#: Largest file read from or written to the host through these helpers.
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
_WINDOWS: Final = re.compile(r"^[A-Za-z]:|[\\]")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class HostDirectories:
    """Directories on the host that files may be read from or written to.

    Example::

        exports = HostDirectories("/srv/agent/exports")
        exports.write_bytes("report.csv", data)          # /srv/agent/exports/report.csv
        exports.write_bytes("../../etc/cron.d/x", data)  # PermissionDeniedError
    """

    def __init__(self, *directories: str | os.PathLike[str],
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        roots = []
        names: list[tuple[Path, Path]] = []  # (a name the developer gave, what it resolves to)
        for directory in directories:
            root = Path(os.path.realpath(directory))
            if not root.is_dir():
                raise InvalidArgumentError(f"allow-listed directory {str(directory)!r:.200} "
                                           "does not exist")
            roots.append(root)
            names += [(root, root), (Path(os.path.abspath(directory)), root)]
        self.roots: tuple[Path, ...] = tuple(roots)
        self._names = tuple(names)
        self.max_bytes = max_bytes

    def __bool__(self) -> bool:
        return bool(self.roots)

    def __repr__(self) -> str:
        return f"HostDirectories({', '.join(map(str, self.roots))})"

    def locate(self, path: str | os.PathLike[str]) -> tuple[Path, tuple[str, ...]]:
        """The allow-listed directory ``path`` is in, and its components below it.

        Relative paths are relative to the first directory. Nothing is opened here.
        """
        if not self.roots:
            raise PermissionDeniedError("no host directory is allow-listed for files")
        text = os.fspath(path)
        if not isinstance(text, str) or not text:
            raise InvalidArgumentError("a host path must be a non-empty string")
        if _CONTROL.search(text) or _WINDOWS.search(text):
            raise PermissionDeniedError(f"host path {text!r:.200} refused: backslashes, drive "
                                        "letters and control characters are not accepted")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PermissionDeniedError(f"host path {text!r:.200} refused: '..' is not "
                                        "accepted")
        if not text.startswith("/"):
            if not parts:
                raise InvalidArgumentError("a host path must name a file")
            return self.roots[0], tuple(parts)
        for name, root in self._names:
            below = _below(name, parts)
            if below:
                return root, below
        raise PermissionDeniedError(f"host path {text!r:.200} is outside the allow-listed "
                                    f"directories ({', '.join(map(str, self.roots))})")

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        """A regular file's content (links anywhere in the path are refused)."""
        root, parts = self.locate(path)
        with _directory(root, parts[:-1], create=False) as folder:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=folder)
            except OSError as exc:
                raise _refused(path, exc) from None
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise PermissionDeniedError(f"host path {str(path)!r:.200} is not a "
                                                "regular file")
                if info.st_size > self.max_bytes:
                    raise PermissionDeniedError(f"host file {str(path)!r:.200} is larger than "
                                                f"{self.max_bytes} bytes")
                return f.read(self.max_bytes + 1)[:self.max_bytes]

    def write_bytes(self, path: str | os.PathLike[str],
                    data: bytes | Iterable[bytes]) -> Path:
        """Write a file atomically (missing directories are made below the allow-listed
        one); returns where it went."""
        root, parts = self.locate(path)
        with _directory(root, parts[:-1], create=True) as folder:
            name = parts[-1]
            temp = f".{name[:200]}.corral-{secrets.token_hex(6)}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=folder)
            try:
                written = 0
                with os.fdopen(fd, "wb") as f:
                    for chunk in ([data] if isinstance(data, (bytes, bytearray)) else data):
                        written += len(chunk)
                        if written > self.max_bytes:
                            raise PermissionDeniedError(
                                f"host file {str(path)!r:.200} would be larger than "
                                f"{self.max_bytes} bytes")
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=folder)
                raise
        return root.joinpath(*parts)


def _below(root: Path, parts: list[str]) -> tuple[str, ...]:
    """``parts`` (an absolute path's) below ``root``, or () if it is not inside it."""
    anchor = root.parts[1:]
    if len(parts) > len(anchor) and tuple(parts[:len(anchor)]) == anchor:
        return tuple(parts[len(anchor):])
    return ()


@contextlib.contextmanager
def _directory(root: Path, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
    """A descriptor of ``root/parts...``, each component opened without following links."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise PermissionDeniedError(f"no directory {part!r:.200} below "
                                                f"{root}") from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refused(part, exc) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _refused(path: object, exc: OSError) -> PermissionDeniedError:
    why = ("it is (or passes through) a symbolic link" if exc.errno in (40, 20)  # ELOOP, ENOTDIR
           else exc.strerror or type(exc).__name__)
    return PermissionDeniedError(f"host path {str(path)!r:.200} refused: {why}")
