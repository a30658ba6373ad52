"""Helpers for tests that choose their own database or run their own server.

``fresh_database(kind, tmp_path)`` is an empty store on one backend: a SQLite file, or a new
database on the PostgreSQL server named by ``CORRAL_TEST_DATABASE_URL`` (which
``scripts/test`` starts through ``scripts/with-postgres``), dropped afterwards.
``serving(settings)`` runs an app of its own, for tests that restart one.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy
import uvicorn

from corral.server import ServerSettings, create_app

POSTGRES_URL = os.environ.get("CORRAL_TEST_DATABASE_URL", "")
NO_POSTGRES = ("CORRAL_TEST_DATABASE_URL is unset: run scripts/test, or "
               "scripts/with-postgres .venv/bin/pytest ..., to test on PostgreSQL too")
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql",
                 marks=[] if POSTGRES_URL else [pytest.mark.skip(reason=NO_POSTGRES)]),
]
START_TIMEOUT = 60.0


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


@contextmanager
def serving(settings: ServerSettings) -> Iterator[str]:
    """``create_app(settings)`` under uvicorn in a thread; yields its base URL. Leaving
    shuts it down as SIGTERM would: its node stops every sandbox it holds."""
    uv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0,
                                       log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, name="corral-test-server-own", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(60)
    assert not thread.is_alive(), "the server did not shut down"
