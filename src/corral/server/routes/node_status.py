"""``GET /v1/node``: what a cluster's node holds, for the control plane only.

Answered only to a request the control plane passed on with the node token
(:func:`corral.cluster.trust.node_auth`); anything else gets 404, as if the route did not
exist, and the route is in no published document. The control plane places sandboxes on
what this says (free CPU and memory, images, warm pools) and learns from it which sandboxes
the node still runs.
"""

from __future__ import annotations

import os

from typing import Annotated

from fastapi import APIRouter, Body, Request

from corral.api.errors import InvalidArgumentError, NotFoundError
from corral.node import Node
from corral.node.pools import PoolSpec

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


def _from_control_plane(request: Request) -> None:
    """Only the node's own actor calls these: the node token, and the control plane's
    own name. A tenant's request passed on by the control plane carries the token too, but
    its caller's key id, never ``control``."""
    from corral.cluster.node_actor import CONTROL_TENANT
    from corral.cluster.trust import CLUSTER_SCOPE, CONTROL_KEY
    from corral.server.auth import tenant_of
    from corral.server.ratelimit import KEY_ID_SCOPE
    if (request.scope.get(CLUSTER_SCOPE) is not True
            or tenant_of(request.scope) != CONTROL_TENANT
            or request.scope.get(KEY_ID_SCOPE) != CONTROL_KEY):
        raise NotFoundError("no such route")


@router.put("/pools")
async def set_pools(request: Request, body: Annotated[str, Body(embed=True, alias="pools",
                                                                 max_length=4096)]
                    ) -> dict[str, object]:
    """Keep these warm pools (``CORRAL_POOLS`` syntax), as the control plane spreads the
    cluster's pools over its nodes."""
    _from_control_plane(request)
    node: Node = request.app.state.node
    specs = PoolSpec.parse_list(body)
    if any(spec.tenant_image for spec in specs):
        raise InvalidArgumentError("pools of tenants' images are not served in cluster mode")
    await node.set_pools(specs)
    return {"pools": [p.spec.text for p in node.pools]}


@router.get("")
async def status(request: Request) -> dict[str, object]:
    _from_control_plane(request)
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
    held = node.gpus.holders()
    return {
        "sandboxes": sandboxes,
        "gpus": [{"name": gpu.name, "minor": gpu.minor, "free": gpu.minor not in held}
                 for gpu in node.gpus.host.gpus],
        "images": sorted(image.name for image in node.images.list()),
        "pools": [{"image": p.spec.image, "runtime": p.runtime, "size": p.spec.size,
                   "ready": p.stats.ready, "hits": p.stats.hits, "misses": p.stats.misses,
                   "spec": p.spec.text} for p in node.pools],
        "capacity": {"cpus": os.cpu_count() or 1, "memory_mib": total,
                     "available_memory_mib": available,
                     "max_sandboxes": node.settings.max_sandboxes},
    }
