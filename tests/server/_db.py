"""Helpers for tests that choose their own database or run their own server.

``fresh_database(kind, tmp_path)`` is an empty store on one backend: a SQLite file, or a new
database on the PostgreSQL server named by ``CORRAL_TEST_DATABASE_URL`` (which
``scripts/test`` starts through ``scripts/with-postgres``), dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy


POSTGRES_URL = os.environ.get("CORRAL_TEST_DATABASE_URL", "")
NO_POSTGRES = ("CORRAL_TEST_DATABASE_URL is unset: run scripts/test, or "
               "scripts/with-postgres .venv/bin/pytest ..., to test on PostgreSQL too")
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql",
                 marks=[] if POSTGRES_URL else [pytest.mark.skip(reason=NO_POSTGRES)]),
]


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``kind`` (``sqlite`` or ``postgresql``), as a SQLAlchemy URL."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'corral.db'}"
        return
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"corral_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as db:
            db.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        try:
            yield sqlalchemy.make_url(POSTGRES_URL).set(database=name).render_as_string(
                hide_password=False)
        finally:
            with admin.connect() as db:  # FORCE: an engine left open must not block it
                db.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
