"""How a cluster's parts know each other: one secret, and what is derived from it.

The cluster secret (``<data dir>/cluster-secret``, mode 0600, 256 random bits, made by the
first ``corral serve --cluster auto`` or given to every host as a file) is:

* Ray's token (``RAY_AUTH_MODE=token``): no process without it can talk to Ray's GCS or
  raylets, so no tenant or sandbox can call a node actor or submit Ray work;
* the root of the **node token**, HMAC-SHA256(secret, "corral node calls"): every node
  actor method takes it and compares it in constant time before doing anything, and a node
  server admits a request only with it in ``X-Corral-Cluster`` (:func:`node_auth`). Only
  the control plane (API servers) sends it; the node acts as the tenant the control plane
  names in ``X-Corral-Tenant``, having authenticated the caller's key itself.

Sandboxes never see either: a node server is started with Ray's variables removed from its
environment, and a sandbox's environment is built from its request alone.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Final

from starlette.datastructures import Headers
from starlette.types import Scope

from corral.api.errors import InvalidArgumentError, PermissionDeniedError

from ..server.auth import Alternative
from ..server.store.keys import TENANT_NAME, KeyRef, KeyStore

#: Headers the control plane sends a node server with each request it passes on.
CLUSTER_HEADER: Final = "x-corral-cluster"
#: Set in the scope of a request the control plane passed on (node-only routes want it).
CLUSTER_SCOPE: Final = "corral.cluster"
TENANT_HEADER: Final = "x-corral-tenant"
KEY_HEADER: Final = "x-corral-key-id"
OPERATOR_HEADER: Final = "x-corral-operator"
SECRET_FILE: Final = "cluster-secret"
_KEY_ID = re.compile(r"^[A-Za-z0-9:._-]{1,64}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


def load_secret(path: Path, *, create: bool = False, what: str = "cluster secret") -> str:
    """The cluster secret (or node token) kept at ``path``; ``create``: make one if there
    is none."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    try:
        mode = path.stat().st_mode
        secret = path.read_text().strip()
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"no {what} at {path}: copy the head's {SECRET_FILE} there (mode 0600), "
            "or start the first API server with `corral serve --cluster auto`") from None
    if mode & 0o077:
        raise PermissionDeniedError(f"the {what} {path} is readable by others: "
                                    f"`chmod 600 {path}`")
    if not _SECRET.match(secret):
        raise InvalidArgumentError(f"the {what} in {path} is not 32-128 URL-safe characters")
    return secret


def write_secret(path: Path, value: str) -> None:
    """Keep ``value`` at ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value)
    os.chmod(path, 0o600)


def node_token(secret: str) -> str:
    """What the control plane shows a node: derived, so the Ray token is never sent."""
    return hmac.new(secret.encode(), b"corral node calls", hashlib.sha256).hexdigest()


def check_token(presented: object, expected: str) -> None:
    """Refuse a node actor call that does not come from the control plane."""
    if not isinstance(presented, str) or not hmac.compare_digest(presented.encode(),
                                                                 expected.encode()):
        raise PermissionDeniedError("this call does not carry the cluster's node token")


#: The key id the node actor's own calls carry; no caller's key id is ever passed as this.
CONTROL_KEY: Final = "control"


def forward_headers(token: str, key: KeyRef) -> dict[str, str]:
    """The headers a node server needs to act for ``key``'s tenant."""
    if key.id == CONTROL_KEY:
        raise PermissionDeniedError("this key id cannot be passed on to a node")
    headers = {CLUSTER_HEADER: token, TENANT_HEADER: key.tenant, KEY_HEADER: key.id}
    if key.operator:
        headers[OPERATOR_HEADER] = "1"
    return headers


def node_auth(token: str, keys: KeyStore, then: Alternative | None = None) -> Alternative:
    """A node server's authentication of the control plane: a request carrying
    ``X-Corral-Cluster`` is admitted as the tenant it names if the token matches; one that
    does not carry it goes to ``then`` (and on to the API key, which a node has none of)."""
    known: set[str] = set()

    async def authenticate(scope: Scope) -> KeyRef | str | None:
        headers = Headers(scope=scope)
        presented = headers.get(CLUSTER_HEADER)
        if presented is None:
            return await then(scope) if then is not None else None
        if not hmac.compare_digest(presented.encode(), token.encode()):
            return "the cluster token is not valid"
        tenant = headers.get(TENANT_HEADER, "")
        key_id = headers.get(KEY_HEADER, "cluster")
        if not TENANT_NAME.match(tenant) or not _KEY_ID.match(key_id):
            return "the control plane named no valid tenant and key"
        scope[CLUSTER_SCOPE] = True
        if tenant not in known:
            keys.ensure_tenant(tenant)
            if len(known) < 100_000:
                known.add(tenant)
        return KeyRef(id=key_id, tenant=tenant, operator=headers.get(OPERATOR_HEADER) == "1")

    return authenticate
