"""Host mounts, read only: what ``/proc/self/mountinfo`` says is mounted where.

Nothing here mounts or unmounts; that is :mod:`._mounts_unsafe`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    """Decode mountinfo's octal escapes (space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` (symlinks resolved), deepest first."""
    prefix = os.path.realpath(directory).rstrip("/")
    found = []
    with open(MOUNTINFO) as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: -len(p.parts))


def mount_line(point: Path) -> str | None:
    """The mountinfo line of the mount on top at ``point``, or None if nothing is there."""
    found = None
    with open(MOUNTINFO) as f:
        for line in f:
            if _unescape(line.split()[4]) == str(point):
                found = line
    return found
