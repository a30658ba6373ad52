"""``GET /v1/node``: what a cluster's node holds, for the control plane only.

Answered only to a request the control plane passed on with the node token
(:func:`corral.cluster.trust.node_auth`); anything else gets 404, as if the route did not
exist, and the route is in no published document. The control plane places sandboxes on
what this says (free CPU and memory, images, warm pools) and learns from it which sandboxes
the node still runs.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Request

from corral.api.errors import NotFoundError
from corral.node import Node

from ..services import SandboxService

router = APIRouter(prefix="/v1/node", include_in_schema=False)


def _memory_mib() -> tuple[int, int]:
    """The host's memory and what is available now, in MiB (from /proc/meminfo)."""
    values: dict[str, int] = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                values[name] = int(rest.split()[0]) // 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


@router.get("")
async def status(request: Request) -> dict[str, object]:
    from corral.cluster.trust import CLUSTER_SCOPE
    if request.scope.get(CLUSTER_SCOPE) is not True:
        raise NotFoundError("no such route")
    node: Node = request.app.state.node
    service: SandboxService = request.app.state.sandboxes
    total, available = _memory_mib()
    sandboxes = []
    for sandbox in node.list():
        owner = service.owner(sandbox.id)
        if owner is None:
            continue  # starting, and not yet recorded: the create's answer will say
        sandboxes.append({"id": sandbox.id, "tenant": owner, "state": sandbox.state.value,
                          "image": sandbox.image, "cpus": sandbox.resources.cpus,
                          "memory_mib": sandbox.resources.memory_mib})
    return {
        "sandboxes": sandboxes,
        "images": sorted(image.name for image in node.images.list()),
        "pools": [{"image": p.spec.image, "runtime": p.runtime, "size": p.spec.size,
                   "ready": p.stats.ready} for p in node.pools],
        "capacity": {"cpus": os.cpu_count() or 1, "memory_mib": total,
                     "available_memory_mib": available,
                     "max_sandboxes": node.settings.max_sandboxes},
    }
