"""Host cgroups, read only: where the hierarchies are, and what a sandbox's cgroups hold.

This host kind runs hybrid cgroups: the v1 controllers (memory, pids, cpu) enforce limits,
and the v2 hierarchy at ``/sys/fs/cgroup/unified`` offers ``cgroup.kill``, which ends every
process of a sandbox at once (runsc's sandbox, gofer and helpers included) without walking
process trees. On a pure v2 host the same files live in one hierarchy; see
:func:`cgroup_layout`.

Nothing here writes: every write (making, limiting, joining, killing, removing, the
``favordynmods`` remount) is in :mod:`._cgroups_unsafe`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ._mounts import mount_line

ROOT = Path("/sys/fs/cgroup")
PARENT = "corral"
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Layout:
    """Where the controllers are mounted on this host.

    Attributes:
        v1: the v1 hierarchies whose limits Corral writes (memory, pids, cpu).
        unified: the v2 hierarchy, for ``cgroup.kill``.
        hierarchies: every mounted hierarchy; runsc creates a sandbox's cgroup in all of
            them (blkio, cpuset, devices, freezer, ...), so removal and sweeping visit all.
    """

    v1: dict[str, Path]
    unified: Path | None
    hierarchies: tuple[Path, ...]


@functools.cache
def cgroup_layout() -> Layout:
    """The host's hierarchies, looked up once per process (mounts do not move under a
    running node): every command reads its sandbox's counters, and this lookup is a
    directory listing and a dozen stats."""
    v1 = {c: ROOT / c for c in V1_CONTROLLERS if (ROOT / c / "cgroup.procs").exists()}
    unified = None
    for candidate in (ROOT / "unified", ROOT):
        if (candidate / "cgroup.controllers").exists():
            unified = candidate
            break
    if (ROOT / "cgroup.procs").exists():
        hierarchies: tuple[Path, ...] = (ROOT,)
    else:
        hierarchies = tuple(sorted(p for p in ROOT.iterdir()
                                   if not p.is_symlink() and (p / "cgroup.procs").exists()))
    return Layout(v1=v1, unified=unified, hierarchies=hierarchies)


def check_host() -> str | None:
    """Why this host cannot limit and kill sandboxes, or None if it can."""
    layout = cgroup_layout()
    missing = [c for c in V1_CONTROLLERS if c not in layout.v1]
    if missing:
        return f"cgroup v1 controllers missing: {', '.join(missing)}"
    if layout.unified is None:
        return "no cgroup v2 hierarchy (needed for cgroup.kill)"
    if os.geteuid() != 0:
        return "cgroups need root: run corral as root"
    return None


def favordynmods_enabled() -> bool | None:
    """Whether the v2 hierarchy is mounted with ``favordynmods``; None without one.

    See :func:`._cgroups_unsafe.favor_dynamic_changes`, which turns it on.
    """
    unified = cgroup_layout().unified
    if unified is None:
        return None
    line = mount_line(unified)
    return line is not None and "favordynmods" in line


def leftover_names(node_key: str) -> set[str]:
    """Sandbox ids with cgroups under ``corral/<node_key>`` (for sweeping after a crash)."""
    names: set[str] = set()
    for base in cgroup_layout().hierarchies:
        parent = base / PARENT / node_key
        if parent.is_dir():
            names.update(p.name for p in parent.iterdir() if p.is_dir())
    return names


class CgroupView:
    """The cgroups named ``corral/<name>`` in every hierarchy, and their counters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.layout = cgroup_layout()
        self.v1 = {c: p / PARENT / name for c, p in self.layout.v1.items()}
        self.unified = self.layout.unified / PARENT / name if self.layout.unified else None

    @property
    def relative_path(self) -> str:
        """The path runsc takes as the OCI ``cgroupsPath``."""
        return f"/{PARENT}/{self.name}"

    def _read(self, controller: str, filename: str) -> str:
        try:
            return (self.v1[controller] / filename).read_text()
        except (OSError, KeyError):
            return ""

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this sandbox so far."""
        for line in self._read("memory", "memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def pids_hits(self) -> int:
        """How many forks the pids limit refused so far."""
        _, _, value = self._read("pids", "pids.events").partition(" ")
        return int(value) if value.strip().isdigit() else 0

    def pids_current(self) -> int:
        """Tasks in the sandbox's pids cgroup now (0 if it is gone)."""
        value = self._read("pids", "pids.current").strip()
        return int(value) if value.isdigit() else 0

    def cpu_seconds(self) -> float:
        """CPU time the sandbox's processes used so far (the unified hierarchy's
        ``cpu.stat``, kept by every cgroup whatever its controllers)."""
        if self.unified is None:
            return 0.0
        try:
            text = (self.unified / "cpu.stat").read_text()
        except OSError:
            return 0.0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) / 1e6
        return 0.0

    def memory(self) -> tuple[int, int, int]:
        """``(used, page cache in it, limit)`` in bytes (limit 0 when unknown)."""
        used = self._read("memory", "memory.usage_in_bytes").strip()
        limit = self._read("memory", "memory.limit_in_bytes").strip()
        cache = 0
        for line in self._read("memory", "memory.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "total_cache" and value.strip().isdigit():
                cache = int(value)
        return (int(used) if used.isdigit() else 0, cache,
                int(limit) if limit.isdigit() else 0)

    def memory_peak(self) -> int:
        value = self._read("memory", "memory.max_usage_in_bytes").strip()
        return int(value) if value.isdigit() else 0

    def pids(self) -> list[int]:
        """The processes in the sandbox's unified cgroup and its children (empty if gone)."""
        if self.unified is None:
            return []
        found: list[int] = []
        for procs in self.unified.glob("**/cgroup.procs"):
            with contextlib.suppress(OSError):
                found += [int(line) for line in procs.read_text().split() if line.isdigit()]
        return found
