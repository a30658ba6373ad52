"""Persistence of the control plane: tenants, API keys, sandboxes (SQLAlchemy Core).

SQLite by default at ``<data_dir>/corral.db``; any SQLAlchemy URL otherwise
(``CORRAL_DATABASE_URL``), e.g. ``postgresql+psycopg://user@host/db`` for PostgreSQL
(tested on 15, whose driver psycopg is a dependency). Only portable Core constructs are
used. The store is synchronous (the CLI uses it as is); the server calls it through a thread
so a slow disk never stalls the event loop.
"""

from .keys import ApiKey, KeyRef, KeyStore, NewKey
from .sandboxes import SandboxRecord, SandboxStore
from .schema import open_engine

__all__ = ["ApiKey", "KeyRef", "KeyStore", "NewKey", "SandboxRecord", "SandboxStore",
           "open_engine"]
