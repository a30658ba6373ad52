"""Apps listening inside a sandbox, reached through the server: ``sb.ports``.

A process in the sandbox listening on a port (on ``0.0.0.0`` or ``127.0.0.1``) is reachable
at :meth:`AsyncPorts.url`: path-based (``{server}/v1/sandboxes/{id}/ports/{port}/``, any
HTTP client) or host-based (``http://{port}-{id}.localhost:8470/``, one origin per port:
what a browser app wants). HTTP/1.1, streaming, SSE and WebSocket are proxied. A port
needs a credential unless it is public: :attr:`AsyncPorts.token` (header
``X-Corral-Port-Token``, or ``?token=`` once in a browser), a signed URL
(:meth:`AsyncPorts.signed_url`), or your API key.

Example::

    sb = await AsyncSandbox.create()
    await sb.commands.run_background("python3 -m http.server 8000")
    url = sb.ports.url(8000)
    r = httpx.get(url, headers={"X-Corral-Port-Token": sb.ports.token})
    share = await sb.ports.signed_url(8000, expires_in=300)   # works for 5 minutes
    await sb.ports.set_public([8000])                          # anyone, no credential
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from corral.api import models
from corral.api.models import check_port
from corral.api.errors import SandboxError

from ._http import checked, segment

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox

#: The header a port token travels in.
TOKEN_HEADER = "X-Corral-Port-Token"


class AsyncPorts:
    """A sandbox's exposed ports: their URLs, the token that opens them, who may reach them."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    def _info(self) -> models.PortsInfo:
        ports = self._sandbox.info.ports
        if ports is None:
            raise SandboxError("the server did not describe this sandbox's ports (a server "
                               "older than exposed ports?)")
        return ports

    @property
    def token(self) -> str:
        """The sandbox's port token: send it as ``X-Corral-Port-Token``, or open a port's
        URL once with ``?token=`` in a browser (it then holds a cookie instead)."""
        return self._info().token

    @property
    def public(self) -> list[int]:
        """Ports anyone may reach without a credential (as last fetched)."""
        return list(self._info().public)

    def url(self, port: int, *, host_based: bool = False) -> str:
        """The URL of ``port`` through the server (it still needs a credential unless public).

        ``host_based``: ``http://{port}-{id}.{domain}/``, an origin of its own per port
        (use it for web apps in a browser); default path-based,
        ``{server}/v1/sandboxes/{id}/ports/{port}/``, which any HTTP client can reach.
        """
        check_port(port)
        base = self._sandbox._api.url
        if not host_based:
            return f"{base}/v1/sandboxes/{segment(self._sandbox.id)}/ports/{port}/"
        parts = urlsplit(base)
        netloc = f"{port}-{self._sandbox.id}.{self._info().domain}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return f"{parts.scheme}://{netloc}/"

    async def signed_url(self, port: int, expires_in: float = 60.0, *, path: str = "/",
                         host_based: bool = False) -> str:
        """A URL to ``port`` (at ``path``) that anyone holding it may use until it expires,
        with no other credential. Visiting it in a browser leaves a cookie that lasts as
        long, so the page's own requests work too."""
        body = checked(models.SignedUrlRequest, port=port, expires_in=float(expires_in),
                       path=path, host_based=host_based)
        reply = models.SignedUrl.model_validate(await self._sandbox._api.json(
            "POST", f"/v1/sandboxes/{segment(self._sandbox.id)}/signed-urls", body=body))
        return reply.url

    async def get(self) -> models.PortsInfo:
        """The token and public ports as the server has them now."""
        return (await self._sandbox.refresh()).ports or self._info()

    async def set_public(self, ports: Iterable[int]) -> models.PortsInfo:
        """Make exactly ``ports`` public (reachable without a credential); ``[]`` makes
        every port private again."""
        body = checked(models.PortsUpdate, public=list(ports))
        info = models.PortsInfo.model_validate(await self._sandbox._api.json(
            "PUT", f"/v1/sandboxes/{segment(self._sandbox.id)}/ports", body=body))
        self._sandbox.info = self._sandbox.info.model_copy(update={"ports": info})
        return info
