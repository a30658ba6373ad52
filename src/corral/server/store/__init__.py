"""Persistence of the control plane: tenants, API keys, sandboxes (SQLAlchemy Core).

SQLite by default at ``<data_dir>/corral.db``; any SQLAlchemy URL otherwise
(``CORRAL_DATABASE_URL``). Only portable Core constructs are used, so PostgreSQL needs a
driver and no code. The store is synchronous (the CLI uses it as is); the server calls it
through a thread so a slow disk never stalls the event loop.
"""

from .keys import ApiKey, KeyStore, NewKey
from .sandboxes import SandboxRecord, SandboxStore
from .schema import open_engine

__all__ = ["ApiKey", "KeyStore", "NewKey", "SandboxRecord", "SandboxStore", "open_engine"]
