"""What the cluster's API answers by asking several nodes, or its own records: the logic
behind :mod:`.gateway`'s routes (which parse, authorize, call these and serialize).

Each sends the same request to the nodes that hold what is asked for, in parallel, and
merges the answers as a single server would give them; a node that does not answer is left
out (its sandboxes are listed from the shared records, ``lost``, once its loss is seen).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from corral.api.errors import NotFoundError

from ..server.store.keys import KeyRef
from .control import Cluster
from .directory import LIVE, LOST, STOPPED


async def list_sandboxes(cluster: Cluster, key: KeyRef, params: Mapping[str, str]
                         ) -> tuple[int, Any]:
    """The tenant's sandboxes with ``params``' filters: (200, the list), or a node's
    refusal of the filters as it gave it."""
    state = params.get("state")
    found: list[dict[str, Any]] = []
    if state != "lost":
        nodes = await asyncio.to_thread(cluster.directory.nodes_of, key.tenant)
        replies = await asyncio.gather(*(cluster.call(key, node, "GET", "/v1/sandboxes",
                                                      params=params) for node in nodes),
                                       return_exceptions=True)
        for node, reply in zip(nodes, replies, strict=True):
            if isinstance(reply, BaseException):
                continue  # lost since: its sandboxes are listed below once marked
            status, payload = reply
            if status != 200:
                return status, payload
            for info in payload["sandboxes"]:
                info["node"] = node
                found.append(info)
    if state in (None, "lost"):
        lost = await asyncio.to_thread(cluster.directory.of_tenant, key.tenant, (LOST,))
        for row in lost:
            if _metadata_matches(row.info, params):
                found.append({**row.info, "state": "lost", "state_reason": row.reason,
                              "paused_at": None, "node": row.node})
    found.sort(key=lambda info: str(info.get("created_at", "")))
    return 200, {"sandboxes": found}


def _metadata_matches(info: dict[str, Any], params: Mapping[str, str]) -> bool:
    metadata = info.get("metadata") or {}
    return all(metadata.get(k.removeprefix("metadata.")) == v for k, v in params.items()
               if k.startswith("metadata."))


async def sandbox_metrics(cluster: Cluster, key: KeyRef, wanted: list[str], points: int
                          ) -> dict[str, Any]:
    """The newest samples of each of the tenant's live sandboxes in ``wanted``."""
    by_node: dict[str, list[str]] = {}
    for found in await asyncio.to_thread(cluster.directory.get_many, wanted):
        if found.tenant == key.tenant and found.state == LIVE:
            by_node.setdefault(found.node, []).append(found.id)
    nodes = sorted(by_node)
    replies = await asyncio.gather(*(cluster.call(
        key, node, "GET", "/v1/metrics/sandboxes",
        params={"ids": ",".join(by_node[node]), "points": str(points)}) for node in nodes),
        return_exceptions=True)
    merged: dict[str, Any] = {}
    interval = 0.0
    for reply in replies:
        if isinstance(reply, BaseException) or reply[0] != 200:
            continue  # a node that does not answer: its sandboxes are left out
        interval = max(interval, float(reply[1]["interval"]))
        merged.update(reply[1]["sandboxes"])
    return {"interval": interval, "sandboxes": merged}


async def public_images(cluster: Cluster, key: KeyRef) -> dict[str, Any]:
    """The public images the nodes hold: each name once, as the first node describes it."""
    nodes = cluster.ready_nodes()
    replies = await asyncio.gather(*(cluster.call(key, node, "GET", "/v1/images")
                                     for node in nodes), return_exceptions=True)
    seen: dict[str, Any] = {}
    for reply in replies:
        if isinstance(reply, BaseException) or reply[0] != 200:
            continue
        for image in reply[1]["images"]:
            if image.get("public"):
                seen.setdefault(str(image.get("name")), image)
    return {"images": [seen[k] for k in sorted(seen)], "used_bytes": 0, "quota_bytes": 0}


async def describe_nodes(cluster: Cluster) -> list[dict[str, Any]]:
    """Every node the cluster knows: its state, labels, capacity and what it holds."""
    records = await asyncio.to_thread(cluster.directory.nodes)
    views = {view.name: view for view in cluster.views()}
    out = []
    for record in records:
        view = views.get(record.name)
        cpus, memory = view.allocated() if view else (0.0, 0)
        out.append({
            "name": record.name, "url": record.url, "state": record.state,
            "reason": record.reason, "labels": record.labels, "cordoned": record.cordoned,
            "draining": record.draining, "seen_at": _iso(record.seen_at),
            "lost_at": _iso(record.lost_at),
            "cpus": view.cpus if view else None,
            "memory_mib": view.memory_mib if view else None,
            "allocated_cpus": cpus, "allocated_memory_mib": memory,
            "sandboxes": len(view.sandboxes) if view else 0,
            "images": sorted(view.images) if view else [],
            "pools": view.pool_ready if view else {}})
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def set_node(cluster: Cluster, name: str, **flags: bool) -> dict[str, Any]:
    """Cordon, drain or release a node, in the shared records and this server's view."""
    if not await asyncio.to_thread(cluster.directory.set_node, name, **flags):
        raise NotFoundError(f"no node {name!r:.80}; `corral node ls` lists them")
    for view in cluster.views():
        if view.name == name:
            for flag, value in flags.items():
                setattr(view, flag, value)
    return {"name": name, **flags}


async def drain(cluster: Cluster, name: str, kill: bool) -> dict[str, Any]:
    """Place nothing more on ``name``; with ``kill``, end what it runs now."""
    result = await set_node(cluster, name, draining=True)
    ended: list[str] = []
    if kill:
        rows = await asyncio.to_thread(cluster.directory.on_node, name, (LIVE,))
        ended = await cluster.end(name, [(row.id, row.tenant) for row in rows])
        await asyncio.to_thread(cluster.directory.set_state, ended, STOPPED,
                                f"node {name} was drained", was=(LIVE,))
        for sandbox_id in ended:
            cluster.forget(sandbox_id)
    return {**result, "ended": ended}
