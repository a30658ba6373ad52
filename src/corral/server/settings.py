"""The server's settings, read once at start: flag > ``CORRAL_*`` env > default."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.node import NodeSettings

from .store.schema import database_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
#: Largest JSON (or stdin) request body; file uploads stream and are bounded by the disk.
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Attributes:
        node: where the embedded node keeps sandboxes and images.
        host, port: where to listen (``CORRAL_HOST``, ``CORRAL_PORT``); loopback by default.
        database_url: SQLAlchemy URL (``CORRAL_DATABASE_URL``), default SQLite in the data dir.
        max_body: largest request body outside file uploads, in bytes.
        idle_check_interval: seconds between two looks for sandboxes idle past their
            ``idle_timeout``.
        tls: serve HTTPS with a certificate from the server's own CA (``CORRAL_TLS=1``);
            off by default.
        tls_names: host names or addresses the certificate names besides ``localhost``,
            ``127.0.0.1`` and ``::1`` (``CORRAL_TLS_NAMES``, comma-separated).
        keep_sandboxes: leave running sandboxes running when the server stops, for the next
            server on the same data dir to re-attach (``CORRAL_KEEP_SANDBOXES=0`` stops
            them instead); see ``NodeSettings.orphan_grace``.
    """

    node: NodeSettings
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str = ""
    max_body: int = MAX_BODY
    idle_check_interval: float = 1.0
    tls: bool = False
    tls_names: tuple[str, ...] = ()
    keep_sandboxes: bool = True

    @classmethod
    def from_env(cls, *, data_dir: Path | None = None, host: str | None = None,
                 port: int | None = None, tls: bool | None = None,
                 tls_names: Sequence[str] | None = None) -> ServerSettings:
        node = NodeSettings.from_env(data_dir)
        if tls is None:
            tls = _flag(os.environ.get("CORRAL_TLS", ""))
        if not tls_names:
            tls_names = os.environ.get("CORRAL_TLS_NAMES", "").split(",")
        return cls(
            node=node,
            host=host or os.environ.get("CORRAL_HOST", DEFAULT_HOST),
            port=port if port is not None else int(os.environ.get("CORRAL_PORT",
                                                                  DEFAULT_PORT)),
            database_url=database_url(node.data_dir, os.environ.get("CORRAL_DATABASE_URL")),
            tls=tls,
            tls_names=tuple(n.strip() for n in tls_names if n.strip()),
            keep_sandboxes=_flag(os.environ.get("CORRAL_KEEP_SANDBOXES", "1")),
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def tls_dir(self) -> Path:
        """Where the CA and the server certificate live."""
        return self.node.data_dir / "tls"


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}
