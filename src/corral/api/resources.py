"""Per-sandbox resource limits: one options object, parsed and bounded in one place."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import InvalidArgumentError
from .limits import LIFETIME_ACTIONS, PAUSED_TTL_RANGE, TIMEOUT_RANGE

MIB = 1024 * 1024

# Bounds a request may ask for. The node further caps memory, disk and CPU to what the
# host has; these are the absolute ranges that are never sensible to exceed.
MEMORY_MIB_RANGE = (32, 256 * 1024)
DISK_MIB_RANGE = (16, 256 * 1024)
PIDS_RANGE = (16, 65536)
CPUS_RANGE = (0.05, 256.0)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": MIB, "k": 1024, "m": MIB, "g": 1024 * MIB, "t": 1024 * 1024 * MIB}


def parse_size_mib(text: str | int, what: str) -> int:
    """Parse ``512M``, ``1G``, ``1.5GiB`` or a plain number of MiB into whole MiB."""
    if isinstance(text, bool):
        raise InvalidArgumentError(f"{what} must be a size such as 512M or 2G")
    if isinstance(text, int):
        return text
    match = _SIZE.match(text) if isinstance(text, str) and len(text) < 32 else None
    if match is None:
        raise InvalidArgumentError(f"{what} {text!r} is not a size; use e.g. 512M or 2G")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit == "" and match.group(3).lower() == "b":
        raise InvalidArgumentError(f"{what} {text!r}: give a unit of K, M, G or T")
    return math.ceil(number * _UNITS[unit] / MIB)


def _bounded(value: float, bounds: tuple[float, float], what: str, unit: str) -> None:
    low, high = bounds
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise InvalidArgumentError(f"{what} must be a number")
    if not low <= value <= high:
        # .15g: whole numbers of up to 15 digits as such (a year is 31536000 s, not 3.2e+07)
        raise InvalidArgumentError(
            f"{what} {value:.15g}{unit} is outside {low:.15g}{unit}..{high:.15g}{unit}")


@dataclass(frozen=True)
class Resources:
    """What one sandbox may use. Every field is checked on construction.

    Attributes:
        memory_mib: memory limit; the sandbox (or its largest process) is killed past it.
        cpus: CPU time as a number of cores (0.5 = half a core).
        pids: processes and threads the sandbox may have at once. Under gVisor it bounds
            the sandbox's host tasks instead (plus an allowance for gVisor itself), and the
            sandbox is stopped, not refused a fork, when it is reached.
        disk_mib: size of the writable layer on top of the image. It is memory-backed
            (tmpfs) today, so writes also count toward ``memory_mib``.
    """

    memory_mib: int = 512
    cpus: float = 1.0
    pids: int = 512
    disk_mib: int = 1024

    def __post_init__(self) -> None:
        _bounded(self.memory_mib, MEMORY_MIB_RANGE, "memory", " MiB")
        _bounded(self.cpus, CPUS_RANGE, "cpus", "")
        _bounded(self.pids, PIDS_RANGE, "pids", "")
        _bounded(self.disk_mib, DISK_MIB_RANGE, "disk", " MiB")
        for name in ("memory_mib", "pids", "disk_mib"):
            if not isinstance(getattr(self, name), int):
                raise InvalidArgumentError(f"{name} must be a whole number")

    @classmethod
    def parse(cls, memory: str | int | None = None, cpus: float | None = None,
              pids: int | None = None, disk: str | int | None = None) -> Resources:
        """Build from user-facing values (sizes as strings like ``512M``)."""
        default = cls()
        return cls(
            memory_mib=default.memory_mib if memory is None else parse_size_mib(memory, "memory"),
            cpus=default.cpus if cpus is None else cpus,
            pids=default.pids if pids is None else pids,
            disk_mib=default.disk_mib if disk is None else parse_size_mib(disk, "disk"),
        )


def check_timeout(seconds: float, what: str = "timeout") -> float:
    """Validate a lifetime or command timeout in seconds."""
    _bounded(seconds, TIMEOUT_RANGE, what, " s")
    return float(seconds)


def check_paused_ttl(seconds: float, what: str = "paused_ttl") -> float:
    """Validate how long a sandbox may stay paused before it is killed, in seconds."""
    _bounded(seconds, PAUSED_TTL_RANGE, what, " s")
    return float(seconds)


def check_action(action: str, what: str) -> str:
    """Validate what to do when a sandbox's idle timeout or lifetime runs out."""
    if action not in LIFETIME_ACTIONS:
        raise InvalidArgumentError(f"{what} must be one of {', '.join(LIFETIME_ACTIONS)}, "
                                   f"not {action!r:.40}")
    return action
