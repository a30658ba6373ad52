"""The server's settings, read once at start: flag > ``CORRAL_*`` env > default."""

from __future__ import annotations

import os
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
    """

    node: NodeSettings
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str = ""
    max_body: int = MAX_BODY
    idle_check_interval: float = 1.0

    @classmethod
    def from_env(cls, *, data_dir: Path | None = None, host: str | None = None,
                 port: int | None = None) -> ServerSettings:
        node = NodeSettings.from_env(data_dir)
        return cls(
            node=node,
            host=host or os.environ.get("CORRAL_HOST", DEFAULT_HOST),
            port=port if port is not None else int(os.environ.get("CORRAL_PORT",
                                                                  DEFAULT_PORT)),
            database_url=database_url(node.data_dir, os.environ.get("CORRAL_DATABASE_URL")),
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
