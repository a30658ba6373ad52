"""Resolve a user name or uid against the sandbox's own /etc/passwd and /etc/group.

Parsed by hand rather than through NSS: the agent's libc is not the image's, and the
answer must come from the image's files only.
"""

from __future__ import annotations

import os

from .errors import RequestError
from .root import Root


class User:
    def __init__(self, name: str, uid: int, gid: int, home: str, groups: tuple[int, ...]) -> None:
        self.name, self.uid, self.gid, self.home, self.groups = name, uid, gid, home, groups


def _read_table(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.count(":") >= 3]
    except OSError:
        return []


def resolve_user(spec: object, root: Root | None = None) -> User:
    """Return the user for ``spec`` (a name, a uid, or None for the agent's own user).

    ``root``: where the sandbox's ``/`` lies for the agent (see :mod:`.root`).
    """
    root = root or Root()
    passwd = _read_table(root.host("/etc/passwd"))
    if spec is None:
        spec = os.getuid()
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise RequestError("invalid_argument", "user must be a name or a uid")
    if isinstance(spec, str) and spec.isdigit():
        spec = int(spec)
    if isinstance(spec, int):
        if not 0 <= spec < 2**31:
            raise RequestError("invalid_argument", f"uid {spec} out of range")
        row = next((r for r in passwd if len(r) >= 7 and r[2] == str(spec)), None)
        if row is None:
            return User(name=str(spec), uid=spec, gid=spec, home="/", groups=())
    else:
        row = next((r for r in passwd if len(r) >= 7 and r[0] == spec), None)
        if row is None:
            raise RequestError("not_found", f"user {spec!r} does not exist in this sandbox")
    try:
        uid, gid = int(row[2]), int(row[3])
    except ValueError:
        raise RequestError("invalid_argument",
                           f"malformed /etc/passwd entry for {row[0]!r}") from None
    groups = tuple(
        int(g[2]) for g in _read_table(root.host("/etc/group"))
        if len(g) >= 4 and g[2].isdigit() and row[0] in g[3].split(",")
    )
    return User(name=row[0], uid=uid, gid=gid, home=row[5] or "/", groups=groups)
