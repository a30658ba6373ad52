"""Between E2B's control plane and Corral's: templates, states, tokens, errors, pages.

* Templates: E2B's stock ``base`` starts Corral's default ``python`` image, and
  ``code-interpreter-v1`` the ``code-interpreter`` image (Python, R, JavaScript,
  TypeScript and Java kernels) where the server has it built, else ``python`` too; a
  ``snap-…`` id starts from that snapshot; any other name is one of the tenant's images
  (or a built-in one).
* States: E2B knows ``running`` and ``paused`` only. A starting sandbox is ``running``; a
  stopping or stopped one is gone (404, left out of lists), as E2B forgets killed ones.
* Tokens: ``envdAccessToken`` and ``trafficAccessToken`` are HMACs of a server secret
  and the sandbox id, so every connect answers the same value without storing any, and a
  later data plane can check them.
* Errors: every answer under the E2B mount is ``{"code": <status>, "message": <str>}``
  (:class:`ErrorShape`), the body the SDKs parse; Corral's ``{"error": {...}}`` would make
  them raise ``KeyError('code')``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final, Literal
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api import models as corral
from corral.api.errors import InvalidArgumentError

from ..secret import load_or_make
from . import connect, models

#: What the create answer claims: 0.6.4, the highest gate in the SDKs (docs/research/
#: e2b-protocol.md §5.9). What the SDK then does by itself (a default user, octet-stream
#: uploads of file-like and iterable data, close_stdin) is served; what the gates above
#: 0.5.7 unlock is asked for per call (file metadata, watch options) and refused per call
#: where Corral lacks it.
ENVD_VERSION: Final = "0.6.4"
#: E2B's ``clientID`` is the node that runs the sandbox; Corral has one.
CLIENT_ID: Final = "corral"
#: E2B's stock templates, started as Corral's default image.
STOCK_TEMPLATES: Final = frozenset({"base", "code-interpreter-v1"})
DEFAULT_IMAGE: Final = "python"
#: E2B's code interpreter template, and the image with its kernels (if built).
CODE_INTERPRETER_TEMPLATE: Final = "code-interpreter-v1"
CODE_INTERPRETER_IMAGE: Final = "code-interpreter"
SNAPSHOT_PREFIX: Final = "snap-"
#: E2B's states by Corral's; the others (stopping, stopped) are not shown.
E2bState = Literal["running", "paused"]
_STATES: Final[dict[str, E2bState]] = {"starting": "running", "running": "running",
                                       "paused": "paused"}
MAX_PAGE: Final = 100
#: Where the SDKs send signed file URLs: envd's ``/files`` at the server's root, the
#: mount's prefix dropped (docs/research/e2b-protocol.md §5.7).
SIGNED_FILES: Final = "/files"
#: E2B's "all traffic" entry: in ``denyOut`` it leaves only ``allowOut`` reachable.
ALL_TRAFFIC: Final = frozenset({"0.0.0.0/0", "::/0"})
_EVERYWHERE: Final = ["0.0.0.0/0", "::/0"]
#: Network fields of E2B that Corral has no equivalent of: a request naming one is refused.
_UNSUPPORTED_NETWORK: Final = ("dnsServers", "egressProxy", "maskRequestHost", "httpsPorts",
                               "rules")


def image_of(template: str, public: Collection[str] = ()) -> tuple[str, str | None]:
    """``(image, snapshot id)`` a create's ``templateID`` asks for; ``public``: the built
    public images."""
    if template == CODE_INTERPRETER_TEMPLATE and CODE_INTERPRETER_IMAGE in public:
        return CODE_INTERPRETER_IMAGE, None
    if template in STOCK_TEMPLATES:
        return DEFAULT_IMAGE, None
    if template.startswith(SNAPSHOT_PREFIX):
        return DEFAULT_IMAGE, template
    return template, None


def e2b_state(state: str) -> E2bState | None:
    """The E2B state of a Corral one; None for a sandbox E2B would not know any more."""
    return _STATES.get(state)


class Tokens:
    """Per-sandbox access tokens derived from a secret kept in ``path`` (made once, 0600)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._secret: bytes | None = None

    def _key(self) -> bytes:
        if self._secret is None:
            self._secret = load_or_make(self._path)
        return self._secret

    def envd(self, sandbox_id: str) -> str:
        return self._derive("envd", sandbox_id)

    def traffic(self, sandbox_id: str) -> str:
        return self._derive("traffic", sandbox_id)

    def _derive(self, use: str, sandbox_id: str) -> str:
        return hmac.new(self._key(), f"{use}:{sandbox_id}".encode(),
                        hashlib.sha256).hexdigest()


def listed(info: corral.SandboxInfo) -> models.ListedSandbox:
    """A Corral sandbox as a list item (the caller has left out stopped ones)."""
    resources = info.resources.to_resources()
    return models.ListedSandbox(
        templateID=info.image, sandboxID=info.id, clientID=CLIENT_ID,
        startedAt=info.created_at, endAt=info.expires_at,
        cpuCount=max(1, math.ceil(resources.cpus)), memoryMB=resources.memory_mib,
        diskSizeMB=resources.disk_mib, state=e2b_state(info.state) or "running",
        envdVersion=ENVD_VERSION, metadata=dict(info.metadata))


def detail(info: corral.SandboxInfo, tokens: Tokens, domain: str | None
           ) -> models.SandboxDetail:
    return models.SandboxDetail(
        **listed(info).model_dump(), envdAccessToken=tokens.envd(info.id), domain=domain,
        allowInternetAccess=internet_open(info.network),
        lifecycle=models.Lifecycle(autoResume=True, onTimeout=info.on_timeout))


def sandbox(info: corral.SandboxInfo, tokens: Tokens, domain: str | None,
            template: str | None = None) -> models.Sandbox:
    """The create/connect answer; ``template``: the ``templateID`` the create named."""
    return models.Sandbox(
        templateID=template or info.image, sandboxID=info.id, clientID=CLIENT_ID,
        envdVersion=ENVD_VERSION, envdAccessToken=tokens.envd(info.id),
        trafficAccessToken=tokens.traffic(info.id), domain=domain)


def metadata_filter(raw: str | None) -> dict[str, str]:
    """E2B's list filter: ``k=v&k2=v2`` with keys and values percent-encoded, sent as one
    (so doubly encoded) query value; the framework undid the outer encoding."""
    if not raw:
        return {}
    try:
        return dict(parse_qsl(raw, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise InvalidArgumentError(
            "metadata must be key=value pairs joined by '&', each part percent-encoded"
        ) from None


def states_filter(raw: str | None) -> frozenset[str]:
    """The states a list asks for (``running,paused``; absent: both)."""
    if not raw:
        return frozenset(_STATES.values())
    wanted = frozenset(s.strip() for s in raw.split(",") if s.strip())
    unknown = wanted - set(_STATES.values())
    if unknown:
        raise InvalidArgumentError(f"unknown state {sorted(unknown)[0]!r:.40}; "
                                   "ask for running, paused or both, comma-separated")
    return wanted


def _cursor(item: models.ListedSandbox) -> tuple[str, str]:
    return item.startedAt.isoformat(), item.sandboxID


def page(items: Sequence[models.ListedSandbox], order: str, limit: int,
         token: str | None) -> tuple[list[models.ListedSandbox], str | None]:
    """One page of ``items`` by start time, and the token of the next (None: the last).

    The token names the last item shown, not an offset, so sandboxes that start or stop
    between two pages neither repeat nor skip the ones that stay."""
    if order not in ("asc", "desc"):
        raise InvalidArgumentError("order must be asc or desc")
    ranked = sorted(items, key=_cursor, reverse=order == "desc")
    if token:
        after = _decode_token(token)
        ranked = [i for i in ranked
                  if (_cursor(i) > after if order == "asc" else _cursor(i) < after)]
    shown = ranked[:limit]
    more = len(ranked) > limit
    return shown, _encode_token(_cursor(shown[-1])) if more and shown else None


def _encode_token(cursor: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, str]:
    try:
        started, sandbox_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        datetime.fromisoformat(started)
        return str(started), str(sandbox_id)
    except (ValueError, TypeError):
        raise InvalidArgumentError("nextToken is not one this server gave; start the list "
                                   "again without it") from None


class ErrorShape:
    """ASGI middleware: answers under ``prefix`` (and on :data:`SIGNED_FILES`, where the
    SDKs' signed file URLs land) that are errors get E2B's body.

    It sits outside every refusing layer (server cap, header bound, authentication,
    rate limits, body bound) and the routes, so 401, 413, 429, 503 and an unknown path's
    404 all reach the SDK as ``{"code": <status>, "message": <str>}``. Corral's message is
    kept; a body that is not Corral's error shape is quoted as the message; an RPC's
    Connect error (a string code, :mod:`.connect`) passes as it is.
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    def _applies(self, scope: Scope) -> bool:
        if scope["type"] != "http":
            return False
        path: str = scope["path"]
        return (path == self.prefix or path.startswith(self.prefix + "/")
                or path == SIGNED_FILES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        parts: list[bytes] = []

        async def reshaping(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if message["type"] == "http.response.body" and held is not None:
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = e2b_error_body(int(held["status"]), b"".join(parts))
                headers = [(k, v) for k, v in held.get("headers", [])
                           if k.lower() not in (b"content-length", b"content-type")]
                headers += [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, reshaping)


def e2b_error_body(status: int, body: bytes) -> bytes:
    """E2B's error body for an answer of ``status`` whose body was ``body``."""
    message: str | None = None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if connect.is_connect_error(parsed):
        return body  # an RPC's error: the SDKs read Connect's string code
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
    if message is None:
        message = body.decode("utf-8", "replace")[:2000] or f"HTTP {status}"
    return json.dumps({"code": status, "message": message}).encode()


def network_of(allow_internet: bool | None, network: models.Network | None,
               internet: bool) -> str | dict[str, list[str]]:
    """Corral's network policy for E2B's egress settings.

    ``allow_internet_access: false`` alone is no network at all (loopback only, no interface
    to open later); with a ``network`` object, or ``denyOut`` holding ``0.0.0.0/0``, it
    leaves only ``allowOut`` reachable, on an interface that ``update_network`` can open
    further; another ``denyOut`` blocks those entries and allows the rest; nothing said is
    E2B's default, "internet on", which gets what the operator chose (``internet``:
    ``CORRAL_E2B_INTERNET``; off by default, so loopback only). Whatever this gives, the
    operator's rules still apply (private ranges stay closed). ``allowOut`` as exceptions
    inside a partial ``denyOut`` has no equivalent (Corral's deny wins).
    ``allowPublicTraffic`` is not a network matter here (SDKs send ``true`` unasked): a
    sandbox's ports are reached as Corral's are, with its port token."""
    if network is not None:
        named = [f for f in _UNSUPPORTED_NETWORK if getattr(network, f) not in (None, [], {})]
        if named:
            raise InvalidArgumentError(
                f"network.{named[0]} is not supported by Corral's E2B API; Corral sandboxes "
                "reach the network through the node's own resolver and proxy")
    allow = list(network.allowOut or ()) if network is not None else []
    deny = list(network.denyOut or ()) if network is not None else []
    if allow_internet is False and network is None:
        return "none"  # no interface at all (update_network then says how to get one)
    if allow_internet is False or ALL_TRAFFIC & set(deny):
        # An interface with only ``allowOut`` open (perhaps nothing), to open more later.
        return {"allow": allow, "deny": [d for d in deny if d not in ALL_TRAFFIC]}
    if deny:
        if allow:
            raise InvalidArgumentError(
                "allowOut as exceptions to a partial denyOut is not supported (in Corral a "
                "deny always wins): deny 0.0.0.0/0 and list what to allow, or list only what "
                "to deny")
        return {"allow": list(_EVERYWHERE), "deny": deny}
    return "all" if internet else "none"


def internet_open(network: corral.NetworkSpec) -> bool:
    """Whether a policy lets a sandbox reach the internet at large (E2B's
    ``allowInternetAccess``): ``"all"``, or lists that allow every address."""
    if isinstance(network, corral.NetworkLists):
        return bool(ALL_TRAFFIC & set(network.allow))
    return network == "all"


def snapshot(info: corral.SnapshotInfo) -> models.SnapshotInfo:
    return models.SnapshotInfo(snapshotID=info.id, names=[info.name] if info.name else [])


def snapshot_page(items: Sequence[corral.SnapshotInfo], limit: int, token: str | None
                  ) -> tuple[list[corral.SnapshotInfo], str | None]:
    """One page of ``items`` (sorted by creation) after the snapshot ``token`` names, and
    the next page's token (None on the last page)."""
    start = 0
    if token:
        ids = [item.id for item in items]
        if token not in ids:
            raise InvalidArgumentError("nextToken is not one this server gave, or its "
                                       "snapshot is gone; list again from the start")
        start = ids.index(token) + 1
    shown = list(items[start:start + limit])
    more = start + limit < len(items)
    return shown, (shown[-1].id if more and shown else None)
