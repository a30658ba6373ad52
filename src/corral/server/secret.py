"""Server secrets kept in the data dir: made once (32 random bytes), written 0600 without
following a link, read at each start."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

SECRET_BYTES: Final = 32


def load_or_make(path: Path) -> bytes:
    """The secret in ``path``, made there first if it is missing or not one."""
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = b""
    if len(secret) == SECRET_BYTES:
        return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_bytes(SECRET_BYTES)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(fresh)
    os.replace(temp, path)
    return fresh
