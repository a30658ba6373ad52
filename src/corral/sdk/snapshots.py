"""``Snapshot``: your snapshots of sandboxes, listed, looked up and deleted.

A snapshot is taken of a running sandbox with :meth:`corral.AsyncSandbox.snapshot` (the
sandbox runs on) and started from with ``Sandbox.create(snapshot=...)``. It comes in two
kinds:

- with memory (the default; gVisor only): its
  memory, processes (a code context's kernel and its variables too) and files. A sandbox
  started from it goes on where it was, with its image, runtime, resources, env, network
  and volumes; it gets its own id, port token and files (and, networked, its own address).
- files only (``memory=False``; any runtime): its files, kept as an image of yours. A
  sandbox started from it is a new one on that image.

Each is kept for its ``ttl`` (60 seconds to 90 days; default the server's, 7 days), then
deleted; your snapshots together count against a disk quota of yours. Memory snapshots
hold whatever the sandbox's memory held, secrets included: keep them as you would those.

Example::

    from corral import Sandbox
    from corral.sdk import Snapshot

    with Sandbox.create(runtime="gvisor") as sb:
        sb.run_code("import pandas as pd; df = pd.read_csv('big.csv')")
        snap = sb.snapshot("loaded")
    for info in Snapshot.list():
        print(info.id, info.name, info.memory, info.size_bytes, info.expires_at)
    with Sandbox.create(snapshot=snap) as again:      # df is there
        print(again.run_code("len(df)").text)
    Snapshot.delete(snap.id)
"""

from __future__ import annotations

import os

from corral.api import models

from ._http import ApiClient, segment

CaFile = str | os.PathLike[str]


class AsyncSnapshot:
    """Your snapshots on a server: :meth:`list`, :meth:`get`, :meth:`delete`. Each takes
    ``url``, ``api_key``, ``ca_file`` and ``max_retries`` as
    :meth:`corral.AsyncSandbox.create` does; a snapshot is described by a
    :class:`corral.api.models.SnapshotInfo`."""

    @staticmethod
    async def list(*, url: str | None = None, api_key: str | None = None,
                   ca_file: CaFile | None = None,
                   max_retries: int | None = None) -> list[models.SnapshotInfo]:
        """Your snapshots that have not expired, oldest first.

        Example::

            for info in await AsyncSnapshot.list():
                print(info.id, info.name, info.sandbox_id, info.expires_at)
        """
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            reply = await api.json("GET", "/v1/snapshots")
        finally:
            await api.aclose()
        return models.SnapshotList.model_validate(reply).snapshots

    @staticmethod
    async def get(snapshot_id: str, *, url: str | None = None, api_key: str | None = None,
                  ca_file: CaFile | None = None,
                  max_retries: int | None = None) -> models.SnapshotInfo:
        """Your snapshot ``snapshot_id`` (``snap-...``); NotFoundError if you have none of
        that id (never had, deleted, or expired)."""
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            reply = await api.json("GET", f"/v1/snapshots/{segment(snapshot_id, 'snapshot id')}")
        finally:
            await api.aclose()
        return models.SnapshotInfo.model_validate(reply)

    @staticmethod
    async def delete(snapshot_id: str, *, url: str | None = None,
                     api_key: str | None = None, ca_file: CaFile | None = None,
                     max_retries: int | None = None) -> None:
        """Delete your snapshot ``snapshot_id`` and free its disk; sandboxes started from it
        run on. NotFoundError if you have none of that id."""
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            await api.call("DELETE", f"/v1/snapshots/{segment(snapshot_id, 'snapshot id')}")
        finally:
            await api.aclose()
