"""Signed file URLs of Corral's own API: a download (GET) or an upload (PUT) of one path
of one sandbox that anyone holding the URL may make until it expires, with no key.

The owner asks for one (``POST /v1/sandboxes/{id}/files/signed-urls``); the URL is the
ordinary ``.../files?path=`` route plus ``corral_expires`` (unix seconds) and
``corral_signature``, an HMAC-SHA256 under a server secret (``file-url-secret`` in the
data dir) of the sandbox, the operation, the path, the user an upload is written as, and
the expiry. :class:`FileUrlAuth`, an authentication alternative, admits such a request as
the sandbox's tenant (key id ``file-url:<sandbox>``, so the audit trail and rate limits
see it) when the signature matches, the URL has not expired, and its query carries
nothing the signature does not cover (an upload's ``mode``, say). A signature does not
outlive its sandbox's id, and a URL lasts at most
:data:`~corral.api.limits.MAX_SIGNED_URL_LIFETIME`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.types import Scope

from .auth import Alternative
from .logs import SANDBOX_SCOPE
from .secret import load_or_make
from .services import SandboxService
from .store import KeyRef

EXPIRES_PARAM: Final = "corral_expires"
SIGNATURE_PARAM: Final = "corral_signature"
#: The query parameters a signed URL may carry: what the signature covers.
_COVERED: Final = frozenset({"path", "user", EXPIRES_PARAM, SIGNATURE_PARAM})
_ROUTE: Final = re.compile(r"^/v1/sandboxes/([^/]{1,64})/files$")
_OPERATIONS: Final = {"GET": "read", "PUT": "write"}
Operation = Literal["read", "write"]


class FileUrls:
    """Signs file URLs and checks them."""

    def __init__(self, secret_path: Path) -> None:
        self._path = secret_path
        self._secret: bytes | None = None

    def _key(self) -> bytes:
        if self._secret is None:
            self._secret = load_or_make(self._path)
        return self._secret

    def sign(self, sandbox_id: str, operation: Operation, path: str, user: str,
             expires: int) -> str:
        message = f"corral-file\n{sandbox_id}\n{operation}\n{path}\n{user}\n{expires}"
        return hmac.new(self._key(), message.encode(), hashlib.sha256).hexdigest()

    def query(self, sandbox_id: str, operation: Operation, path: str, user: str | None,
              expires_in: float) -> tuple[str, int]:
        """The query string of a signed URL, and when it expires (unix seconds)."""
        expires = math.ceil(time.time() + expires_in)
        fields: dict[str, str | int] = {"path": path}
        if user:
            fields["user"] = user
        fields[EXPIRES_PARAM] = expires
        fields[SIGNATURE_PARAM] = self.sign(sandbox_id, operation, path, user or "", expires)
        return urlencode(fields), expires

    def check(self, sandbox_id: str, method: str, query: QueryParams) -> str | None:
        """Why the signed request is refused; None when it is admitted."""
        operation = _OPERATIONS.get(method)
        if operation is None:
            return "a signed file URL is a GET (download) or a PUT (upload)"
        if set(query.keys()) - _COVERED or any(len(query.getlist(k)) > 1 for k in query):
            return ("a signed file URL carries path, user and its signature once each, "
                    "nothing else")
        expires = query.get(EXPIRES_PARAM, "")
        if not expires.isdigit() or len(expires) > 12:
            return f"a signed file URL needs {EXPIRES_PARAM} (unix seconds)"
        wanted = self.sign(sandbox_id, "read" if operation == "read" else "write",
                           query.get("path", ""), query.get("user", ""), int(expires))
        given = query.get(SIGNATURE_PARAM, "")
        if not hmac.compare_digest(wanted.encode(), given.encode("utf-8", "replace")):
            return (f"the signature is not this sandbox's for a {operation} of this path; "
                    "ask the owner for a new URL")
        if int(expires) < time.time():
            return "the signed file URL has expired; ask the owner for a new one"
        return None


class FileUrlAuth:
    """Authentication for signed file URLs (an :data:`~corral.server.auth.Alternative`);
    any other request goes to ``then`` (None: the API key decides)."""

    def __init__(self, urls: FileUrls, sandboxes: SandboxService,
                 then: Alternative | None = None) -> None:
        self.urls = urls
        self.sandboxes = sandboxes
        self.then = then

    async def __call__(self, scope: Scope) -> KeyRef | str | None:
        match = _ROUTE.match(scope.get("path", ""))
        query = QueryParams(scope.get("query_string", b""))
        if match is None or SIGNATURE_PARAM not in query:
            return await self.then(scope) if self.then is not None else None
        sandbox_id = match.group(1)
        refused = self.urls.check(sandbox_id, scope.get("method", ""), query)
        if refused is not None:
            return refused
        owner = self.sandboxes.owner(sandbox_id)
        if owner is None:
            return f"sandbox {sandbox_id} is not live; its signed URLs ended with it"
        scope[SANDBOX_SCOPE] = sandbox_id
        return KeyRef(id=f"file-url:{sandbox_id}", tenant=owner)
