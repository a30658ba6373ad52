"""Host-side observations: what a sandbox must never change."""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Mounts that come and go with tests running beside this one (sandboxes' roots in temporary
#: data dirs, test network namespaces): not something a sandbox could have made.
_TRANSIENT = ("/tmp/", "/var/tmp/", "/run/netns/", "/run/user/")


def host_mounts() -> set[tuple[str, str]]:
    """(mount point, filesystem type) of every host mount outside transient test places."""
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            fstype = fields[fields.index("-") + 1]
            if not point.startswith(_TRANSIENT):
                found.add((point, fstype))
    return found


def release_agents() -> dict[Path, str]:
    """The host's cgroup v1 ``release_agent`` files (the classic container escape writes one)."""
    return {path: path.read_text() for path in CGROUP_ROOT.glob("*/release_agent")}
