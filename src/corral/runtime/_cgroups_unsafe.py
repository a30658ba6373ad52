"""Host cgroups for one sandbox. Privileged: needs root on the host.

This host kind runs hybrid cgroups: the v1 controllers (memory, pids, cpu) enforce limits,
and the v2 hierarchy at ``/sys/fs/cgroup/unified`` offers ``cgroup.kill``, which ends every
process of a sandbox at once (runsc's sandbox, gofer and helpers included) without walking
process trees. On a pure v2 host the same files live in one hierarchy; see
:func:`cgroup_layout`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def cgroup_layout() -> Layout:
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


def favor_dynamic_changes() -> bool | None:
    """Remount the v2 hierarchy with ``favordynmods`` if it lacks it; True if it is on now.

    Every sandbox start moves a process into fresh cgroups. Without this option each move
    waits for an RCU grace period on the global cgroup lock: 5-20 ms measured here, most of a
    namespaces sandbox's start. ``favordynmods`` (Linux 6.0+) trades that for slightly slower
    fork/exit, the kernel's documented choice for hosts that create cgroups dynamically.
    Returns None when the host has no v2 hierarchy or the kernel refuses the option.
    """
    unified = cgroup_layout().unified
    if unified is None:
        return None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(unified):
                if "favordynmods" in line:
                    return True
                break
    result = subprocess.run(["mount", "-o", "remount,favordynmods", str(unified)],
                            capture_output=True)
    return True if result.returncode == 0 else None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class SandboxCgroups:
    """The cgroups named ``corral/<name>`` in every hierarchy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.layout = cgroup_layout()
        self.v1 = {c: p / PARENT / name for c, p in self.layout.v1.items()}
        self.unified = self.layout.unified / PARENT / name if self.layout.unified else None

    @property
    def relative_path(self) -> str:
        """The path runsc takes as the OCI ``cgroupsPath``."""
        return f"/{PARENT}/{self.name}"

    def create(self, memory_mib: int, cpus: float, pids: int) -> None:
        """Make the cgroups in every hierarchy and write the v1 limits."""
        for path in [*self.v1.values(), *([self.unified] if self.unified else [])]:
            path.mkdir(parents=True, exist_ok=True)
        limit = str(memory_mib * 1024 * 1024)
        _write(self.v1["memory"] / "memory.limit_in_bytes", limit)
        memsw = self.v1["memory"] / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            _write(memsw, limit)
        _write(self.v1["pids"] / "pids.max", str(pids))
        _write(self.v1["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(self.v1["cpu"] / "cpu.cfs_quota_us", str(int(cpus * CPU_PERIOD_US)))

    def joiner(self, v1: bool) -> Callable[[], None]:
        """A pre-exec hook that moves the calling (child) process into these cgroups."""
        paths = [str(p / "cgroup.procs") for p in self.v1.values()] if v1 else []
        if self.unified is not None:
            paths.append(str(self.unified / "cgroup.procs"))

        def join() -> None:
            for path in paths:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)

        return join

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

    def kill(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the sandbox; True once none is left."""
        if self.unified is None or not self.unified.exists():
            return True
        with contextlib.suppress(FileNotFoundError):
            _write(self.unified / "cgroup.kill", "1")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not (self.unified / "cgroup.procs").read_text().strip():
                    return True
            except FileNotFoundError:
                return True
            time.sleep(0.002)
        return False

    def remove(self, timeout: float = 5.0) -> list[str]:
        """Remove every cgroup of the sandbox (children first); returns what could not go."""
        left = []
        for path in [base / PARENT / self.name for base in self.layout.hierarchies]:
            deadline = time.monotonic() + timeout
            while path.exists():
                try:
                    for child in sorted(path.glob("**/"), key=lambda p: -len(p.parts)):
                        if child != path:
                            child.rmdir()
                    path.rmdir()
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
                        raise
                    if time.monotonic() > deadline:
                        left.append(str(path))
                        break
                    time.sleep(0.005)
        return left


def remove_parent(node_key: str) -> None:
    """Remove a node's (empty) parent cgroups; a no-op while sandboxes remain."""
    for base in cgroup_layout().hierarchies:
        with contextlib.suppress(OSError):
            (base / PARENT / node_key).rmdir()


def leftover_names(node_key: str) -> set[str]:
    """Sandbox ids with cgroups under ``corral/<node_key>`` (for sweeping after a crash)."""
    names: set[str] = set()
    for base in cgroup_layout().hierarchies:
        parent = base / PARENT / node_key
        if parent.is_dir():
            names.update(p.name for p in parent.iterdir() if p.is_dir())
    return names
