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
#: GPUs one sandbox may ask for; a model name asks for one GPU of that model.
GPUS_RANGE = (0, 8)
MAX_GPU_MODEL = 64
_GPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")

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
        gpus: NVIDIA GPUs the sandbox has to itself (0..8; see docs/gpu.md).
        gpu_model: with ``gpus``, only GPUs whose name contains this (``"H200"``).
    """

    memory_mib: int = 512
    cpus: float = 1.0
    pids: int = 512
    disk_mib: int = 1024
    gpus: int = 0
    gpu_model: str | None = None

    def __post_init__(self) -> None:
        _bounded(self.memory_mib, MEMORY_MIB_RANGE, "memory", " MiB")
        _bounded(self.cpus, CPUS_RANGE, "cpus", "")
        _bounded(self.pids, PIDS_RANGE, "pids", "")
        _bounded(self.disk_mib, DISK_MIB_RANGE, "disk", " MiB")
        for name in ("memory_mib", "pids", "disk_mib", "gpus"):
            if not isinstance(getattr(self, name), int):
                raise InvalidArgumentError(f"{name} must be a whole number")
        _bounded(self.gpus, GPUS_RANGE, "gpu", "")
        if self.gpu_model is not None:
            if not isinstance(self.gpu_model, str) or not _GPU_MODEL.match(self.gpu_model):
                raise InvalidArgumentError(
                    f"gpu model {str(self.gpu_model)!r:.80} is not a GPU name: give 1-64 "
                    "letters, digits, spaces, '.', '_' or '-' (such as \"H200\")")
            if self.gpus < 1:
                raise InvalidArgumentError("a gpu model needs gpus of at least 1")

    @classmethod
    def parse(cls, memory: str | int | None = None, cpus: float | None = None,
              pids: int | None = None, disk: str | int | None = None,
              gpu: str | int | None = None) -> Resources:
        """Build from user-facing values (sizes as strings like ``512M``; ``gpu`` a count
        or a model name, see :func:`parse_gpu`)."""
        default = cls()
        gpus, model = parse_gpu(gpu)
        return cls(
            memory_mib=default.memory_mib if memory is None else parse_size_mib(memory, "memory"),
            cpus=default.cpus if cpus is None else cpus,
            pids=default.pids if pids is None else pids,
            disk_mib=default.disk_mib if disk is None else parse_size_mib(disk, "disk"),
            gpus=gpus, gpu_model=model,
        )

    @property
    def gpu(self) -> str | int:
        """The ``gpu`` a request gives for these: a count, or a model name (one GPU)."""
        if self.gpu_model is None:
            return self.gpus
        return self.gpu_model if self.gpus == 1 else f"{self.gpu_model}:{self.gpus}"


def parse_gpu(value: str | int | None) -> tuple[int, str | None]:
    """A request's ``gpu``: a count (``1``; 0 or None: none), a model name (``"H200"``: one
    GPU whose name contains it) or ``"<model>:<count>"`` (``"H200:2"``)."""
    if value is None:
        return 0, None
    if isinstance(value, bool):
        raise InvalidArgumentError("gpu must be a count (0-8) or a model name such as H200")
    if isinstance(value, int):
        return value, None
    if not isinstance(value, str) or len(value) > MAX_GPU_MODEL + 3:
        raise InvalidArgumentError("gpu must be a count (0-8) or a model name such as H200")
    model, _, count = value.rpartition(":") if ":" in value else (value, "", "1")
    if value.isdigit():
        return int(value), None
    if not count.isdigit() or len(count) > 2:
        raise InvalidArgumentError(f"gpu {value!r:.80}: write a model name, or "
                                   "<model>:<count> such as H200:2")
    return int(count), model


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
