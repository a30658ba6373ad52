"""Snapshots over HTTP, the parts a tenant does not drive: the disk quota refuses a
snapshot past it and keeps nothing of it; an expired snapshot reads as gone at once and is
deleted by the sweep; a snapshot the store does not know (a crash between the node and the
store) is removed when the server starts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url, snapshots
from tests.conftest import IMAGE_DIR, WORKING, sandbox_data_dir

from ._serving import serving
from .conftest import assert_error

pytestmark = pytest.mark.skipif("gvisor" not in WORKING, reason="gVisor does not work here")


@pytest.fixture
def own_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-snapshots-") as path:
        yield path


def _settings(data_dir: Path, **overrides: object) -> ServerSettings:
    return ServerSettings(node=NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR), port=0,
                          keep_sandboxes=False, **overrides)  # type: ignore[arg-type]


def _on_node(data_dir: Path) -> list[str]:
    folder = data_dir / "snapshots"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _wait_until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_a_snapshot_past_the_quota_is_refused_and_nothing_is_kept(own_dir: Path) -> None:
    key = KeyStore(open_engine(database_url(own_dir, None))).create("alpha").key
    with serving(create_app(_settings(own_dir, snapshot_quota_mib=1))) as url:
        with_key = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=with_key, timeout=120) as http:
            created = http.post("/v1/sandboxes", json={"runtime": "gvisor"})
            assert created.status_code == 201, created.text
            sandbox_id = created.json()["id"]
            wrote = http.post(f"/v1/sandboxes/{sandbox_id}/commands",
                              json={"cmd": "head -c 3000000 /dev/urandom > /work/blob"})
            assert wrote.json()["exit_code"] == 0
            refused = http.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={})
            message = assert_error(refused, 429, "resource_exhausted")
            assert "of your 1 MiB for snapshots" in message
            assert http.get("/v1/snapshots").json() == {"snapshots": []}
            assert _on_node(own_dir) == []
            # The sandbox ran on through it all.
            ran = http.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": "echo ok"})
            assert ran.json()["stdout"] == "ok\n"


def test_expired_snapshots_go_and_unknown_ones_are_removed_at_start(own_dir: Path) -> None:
    engine = open_engine(database_url(own_dir, None))
    key = KeyStore(engine).create("alpha").key
    settings = _settings(own_dir, snapshot_sweep_interval=0.2)
    with serving(create_app(settings)) as url, httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        sandbox_id = http.post("/v1/sandboxes", json={"runtime": "gvisor"}).json()["id"]
        for ttl in (59, 7_776_001, "soon"):
            assert_error(http.post(f"/v1/sandboxes/{sandbox_id}/snapshots",
                                   json={"ttl": ttl}), 400, "invalid_argument")
        taken = http.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={"ttl": 60})
        assert taken.status_code == 201, taken.text
        snap = taken.json()
        expires = datetime.fromisoformat(snap["expires_at"])
        created = datetime.fromisoformat(snap["created_at"])
        assert timedelta(seconds=59) < expires - created <= timedelta(seconds=61)
        assert _on_node(own_dir) == [snap["id"]]
        # Its time runs out (the store says so): it reads as gone at once...
        with engine.begin() as db:
            db.execute(update(snapshots).where(snapshots.c.id == snap["id"])
                       .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        assert_error(http.get(f"/v1/snapshots/{snap['id']}"), 404, "not_found")
        assert_error(http.post("/v1/sandboxes", json={"snapshot": snap["id"]}), 404,
                     "not_found")
        # ...and the sweep deletes it.
        _wait_until(lambda: _on_node(own_dir) == [], 60)
        # A snapshot the store does not know, as a crash right after the node took it leaves.
        lost = http.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={}).json()
        with engine.begin() as db:
            db.execute(snapshots.delete().where(snapshots.c.id == lost["id"]))
        assert _on_node(own_dir) == [lost["id"]]
    with serving(create_app(settings)):
        assert _on_node(own_dir) == []  # removed as the server started
