"""Plain values the node hands out: results, file entries, sandbox descriptions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

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
