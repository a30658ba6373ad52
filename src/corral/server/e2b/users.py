"""envd's users for the file calls: who a call acts for, where its relative paths start,
and the names ``EntryInfo`` gives owners and groups (docs/research/e2b-protocol.md §5.5).

The answers come from the sandbox's own ``/etc/passwd`` and ``/etc/group``, read through
Corral's file service at each call (at most :data:`MAX_TABLE` bytes of each; a sandbox may
change them at any time, and its content is untrusted: lines that do not parse are
skipped). A call that names no user acts for :data:`DEFAULT_USER`, E2B's; an image that
has no such user falls back to root, so that E2B's file calls still work on it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Final

from corral.api.errors import AuthenticationError, InvalidArgumentError, NotFoundError
from corral.api.limits import normalize_path

from ..services import FileService
from .envd import DEFAULT_USER
#: Most bytes of /etc/passwd and /etc/group read (the rest is ignored).
MAX_TABLE: Final = 1024 * 1024
_ROOT: Final = ("root", 0, 0, "/root")


class UnknownUser(AuthenticationError):
    """A call named a user the sandbox does not have (envd answers 401)."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    def resolve(self, path: str) -> str:
        """``path`` made absolute and normal (Corral's one rule for sandbox paths): a
        relative one starts at the user's home."""
        try:
            return normalize_path(path, self.home)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None


@dataclass(frozen=True)
class Accounts:
    """A sandbox's users and groups as its tables list them."""

    users: dict[str, Account]
    user_names: dict[int, str]
    group_names: dict[int, str]

    def named(self, name: str | None) -> Account:
        """The account a call acts for (``name`` None: the default user)."""
        found = self.users.get(name or DEFAULT_USER)
        if found is not None:
            return found
        if name is None or name == DEFAULT_USER:
            return self.users.get("root") or Account(*_ROOT)
        if name == "root":
            return Account(*_ROOT)
        raise UnknownUser(f"user {name[:64]!r} does not exist in this sandbox")

    def owner(self, uid: int) -> str:
        return self.user_names.get(uid, str(uid))

    def group(self, gid: int) -> str:
        return self.group_names.get(gid, str(gid))


def parse(passwd: str, group: str) -> Accounts:
    """The accounts of ``passwd`` and ``group`` text (bad lines skipped; the first of
    two entries for one name or id wins, as getpwnam's scan does)."""
    users: dict[str, Account] = {}
    user_names: dict[int, str] = {}
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or not fields[0] or not fields[2].isdigit() \
                or not fields[3].isdigit():
            continue
        account = Account(fields[0], int(fields[2]), int(fields[3]),
                          fields[5] if fields[5].startswith("/") else "/")
        users.setdefault(account.name, account)
        user_names.setdefault(account.uid, account.name)
    group_names: dict[int, str] = {}
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] and fields[2].isdigit():
            group_names.setdefault(int(fields[2]), fields[0])
    return Accounts(users, user_names, group_names)


async def load(files: FileService, tenant: str, sandbox_id: str) -> Accounts:
    """The sandbox's accounts, read now."""
    return parse(await _table(files, tenant, sandbox_id, "/etc/passwd"),
                 await _table(files, tenant, sandbox_id, "/etc/group"))


async def _table(files: FileService, tenant: str, sandbox_id: str, path: str) -> str:
    try:
        chunks = await files.read_stream(tenant, sandbox_id, path)
    except NotFoundError:
        return ""
    data = bytearray()
    try:
        async for chunk in chunks:
            data += chunk
            if len(data) >= MAX_TABLE:
                break
    finally:
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]
    return data[:MAX_TABLE].decode("utf-8", "replace")
