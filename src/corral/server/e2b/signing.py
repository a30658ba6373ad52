"""Signed file URLs (docs/research/e2b-protocol.md §5.7): what stands in for
``X-Access-Token`` on envd's ``/files``.

A signature is ``v1_`` and the unpadded standard base64 of the SHA-256 of
``path:operation:username:token`` (``:expiration`` appended when the URL expires), where
``operation`` is ``read`` (GET) or ``write`` (POST), ``username`` is empty for the default
user and ``token`` is the sandbox's envd token. A URL that names no sandbox (the SDKs'
own, in single-origin mode) is tried against each live sandbox's token, at most
:data:`MAX_SIGNED_SCAN` of them: two SHA-256s each, a few milliseconds at that bound.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from typing import Final

from starlette.datastructures import QueryParams

from corral.api.errors import InvalidArgumentError

#: Most live sandboxes a signature naming no sandbox is tried against.
MAX_SIGNED_SCAN: Final = 4096
#: Set in the scope by the authentication layer when a signature stood in for the token.
SIGNED_SCOPE: Final = "corral.e2b.signed"
_SIGNATURE: Final = re.compile(r"^v1_[A-Za-z0-9+/]{43}$")


def signature(path: str, operation: str, user: str, token: str,
              expiration: int | None) -> str:
    """The v1 signature of a file URL (``user`` empty for the default user)."""
    raw = f"{path}:{operation}:{user}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).decode().rstrip("=")


def signed_by(query: QueryParams, method: str, candidates: Iterable[str],
              token_of: Callable[[str], str], now: float | None = None) -> str:
    """The sandbox (among ``candidates``) whose token signed this request; raises
    :class:`InvalidArgumentError` with the reason otherwise."""
    given = query.get("signature", "")
    if not _SIGNATURE.match(given):
        raise InvalidArgumentError("the signature is not a v1 file URL signature")
    raw_expiry = query.get("signature_expiration")
    expiration: int | None = None
    if raw_expiry is not None:
        if not raw_expiry.isdigit() or len(raw_expiry) > 12:
            raise InvalidArgumentError("signature_expiration must be unix seconds")
        expiration = int(raw_expiry)
    path = query.get("path", "")
    operation = "read" if method in ("GET", "HEAD") else "write"
    user = query.get("username", "")
    for sandbox_id in candidates:
        wanted = signature(path, operation, user, token_of(sandbox_id), expiration)
        if hmac.compare_digest(wanted.encode(), given.encode()):
            if expiration is not None and expiration < (now if now is not None
                                                        else time.time()):
                raise InvalidArgumentError("the signed URL has expired; ask for a new one")
            return sandbox_id
    raise InvalidArgumentError(f"the signature does not match a {operation} of this path "
                               "by this user in a live sandbox")
