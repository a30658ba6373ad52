"""Writes to host cgroups. Privileged: needs root on the host.

Every write under ``/sys/fs/cgroup`` is here: making a sandbox's cgroups and their limits,
moving a process in, ``cgroup.kill``, removing them, and remounting the v2 hierarchy with
``favordynmods``. Where the hierarchies are and what a cgroup holds is read by
:mod:`._cgroups`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ._cgroups import (CPU_PERIOD_US, PARENT, ROOT, CgroupView, cgroup_layout,
                       favordynmods_enabled)


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
    if favordynmods_enabled():
        return True
    result = subprocess.run(["mount", "-o", "remount,favordynmods", str(unified)],
                            capture_output=True)
    return True if result.returncode == 0 else None


#: What a sandbox's minimal /dev holds (bwrap's --dev: null, zero, full, random,
#: urandom, tty, and a devpts of its own with its ptmx).
BASE_DEVICES = ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class SandboxCgroups(CgroupView):
    """The cgroups named ``corral/<name>`` in every hierarchy, made, joined and removed."""

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

    def limit_devices(self, allowed: list[tuple[int, int]]) -> Path:
        """Make the sandbox's v1 devices cgroup, letting it use only the character devices
        ``allowed`` (major, minor) and those every sandbox's ``/dev`` holds; returns its
        ``cgroup.procs`` for the sandbox to join. Raises OSError without the controller."""
        path = ROOT / "devices" / PARENT / self.name
        path.mkdir(parents=True, exist_ok=True)
        _write(path / "devices.deny", "a")
        for rule in [*BASE_DEVICES, *(f"c {major}:{minor} rw" for major, minor in allowed)]:
            _write(path / "devices.allow", rule)
        return path / "cgroup.procs"

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

    def freeze(self, timeout: float = 5.0) -> bool:
        """Stop every process in the sandbox where it is (the v2 freezer); True once they
        all are. ``kill`` still ends them; nothing thaws them."""
        if self.unified is None or not self.unified.exists():
            return False
        _write(self.unified / "cgroup.freeze", "1")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "frozen 1" in (self.unified / "cgroup.events").read_text():
                return True
            time.sleep(0.002)
        return False

    def thaw(self) -> None:
        """Let the processes :meth:`freeze` stopped run on."""
        if self.unified is not None and self.unified.exists():
            _write(self.unified / "cgroup.freeze", "0")

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


def remove_node_cgroups(node_key: str) -> None:
    """Remove a node's (empty) parent cgroups; a no-op while sandboxes remain."""
    for base in cgroup_layout().hierarchies:
        with contextlib.suppress(OSError):
            (base / PARENT / node_key).rmdir()
