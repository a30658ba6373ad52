"""E2B's host-based URLs, for SDK releases that know only ``E2B_DOMAIN`` (no
``E2B_API_URL`` or ``E2B_SANDBOX_URL``: e2b before 2.5): ``https://api.<domain>`` for the
control plane, ``https://49983-<sandbox id>.<domain>`` for envd and
``https://49999-<sandbox id>.<domain>`` for the code interpreter
(docs/research/e2b-protocol.md §2.1).

:class:`HostRouting`, the outermost layer, maps such a request onto the E2B mount before
anything else sees it: its path gains the mount's prefix, and a sandbox host's id and port
become the ``E2b-Sandbox-Id`` and ``E2b-Sandbox-Port`` headers that single-origin requests
carry (the host wins over headers that say otherwise). Every later layer (the port
gateway, authentication, limits, the audit trail, E2B's error shape) then treats it as the
same request made to ``/e2b``. Other hosts, and other ports' hosts (a sandbox's own web
apps: the port gateway's), pass untouched.
"""

from __future__ import annotations

import re
from typing import Final

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ..ports import CLAIMED

#: envd's and the code interpreter's ports: the only sandbox hosts that are E2B's.
E2B_PORTS: Final = ("49983", "49999")
_SANDBOX_HEADERS: Final = (b"e2b-sandbox-id", b"e2b-sandbox-port")


class HostRouting:
    """ASGI middleware: ``api.<domain>`` and ``<49983|49999>-<id>.<domain>`` onto the mount
    at ``prefix``."""

    def __init__(self, app: ASGIApp, prefix: str, domain: str) -> None:
        self.app = app
        self.prefix = prefix
        port = r"(?::[0-9]{1,5})?"
        name = re.escape(domain.lower())
        self._api = re.compile(rf"^api\.{name}{port}$")
        self._sandbox = re.compile(rf"^({'|'.join(E2B_PORTS)})-(sbx-[0-9a-f]{{16}})\.{name}"
                                   rf"{port}$")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "").lower()
            if self._api.match(host):
                scope = self._onto_mount(scope)
            elif (found := self._sandbox.match(host)) is not None:
                scope = self._onto_mount(scope, found[2], found[1])
        await self.app(scope, receive, send)

    def _onto_mount(self, scope: Scope, sandbox_id: str | None = None,
                    port: str | None = None) -> Scope:
        moved = dict(scope)
        moved[CLAIMED] = True  # not a sandbox web app's port, whatever the host looks like
        moved["path"] = self.prefix + scope["path"]
        raw = scope.get("raw_path")
        if raw is not None:
            moved["raw_path"] = self.prefix.encode() + raw
        if sandbox_id is not None and port is not None:
            headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _SANDBOX_HEADERS]
            headers += [(b"e2b-sandbox-id", sandbox_id.encode()),
                        (b"e2b-sandbox-port", port.encode())]
            moved["headers"] = headers
        return moved
