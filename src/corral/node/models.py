"""Plain values the node hands out: results, file entries, sandbox descriptions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from corral.api.resources import Resources


class SandboxState(enum.Enum):
    """Lifecycle of a sandbox as the node sees it.

    ``STARTING -> RUNNING -> STOPPING -> STOPPED``; a failed start goes straight to STOPPED.
    """

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class CommandResult:
    """How a finished command ended, and what it printed.

    Attributes:
        exit_code: the exit status; ``128 + n`` when killed by signal ``n``.
        stdout: standard output decoded as UTF-8 (undecodable bytes replaced).
        stderr: standard error, likewise.
        signal: the signal that ended the command, if any.
        reason: why Corral ended it, if it did: ``"timeout"``, ``"killed"``, or a limit
            such as ``"killed: memory limit 512 MiB"``.
        truncated: True when output beyond the capture limit was dropped.
    """

    exit_code: int
    stdout: str
    stderr: str
    signal: int | None = None
    reason: str | None = None
    duration: float = 0.0
    truncated: bool = False
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class ProcessInfo:
    """A command still running in a sandbox."""

    id: int
    pid: int
    argv: list[str]
    started_at: float


@dataclass(frozen=True)
class EntryInfo:
    """One file, directory or link inside a sandbox."""

    name: str
    path: str
    type: str  # "file" | "dir" | "symlink" | "other"
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int
    target: str | None = None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> EntryInfo:
        def text(key: str) -> str:
            value = raw.get(key)
            return value[:4096] if isinstance(value, str) else ""

        def number(key: str) -> int:
            value = raw.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        mtime = raw.get("mtime")
        target = raw.get("target")
        return cls(name=text("name"), path=text("path"), type=text("type"), size=number("size"),
                   mode=number("mode"), mtime=float(mtime) if isinstance(mtime, (int, float))
                   else 0.0, uid=number("uid"), gid=number("gid"),
                   target=target[:4096] if isinstance(target, str) else None)


@dataclass(frozen=True)
class SandboxInfo:
    """A snapshot of a sandbox's description and state."""

    id: str
    image: str
    runtime: str
    state: SandboxState
    resources: Resources
    created_at: float
    expires_at: float
    metadata: dict[str, str]
    stop_reason: str | None = None
