"""``GET /v1/pools``: the node's warm pools and how they serve (operators' keys only)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from corral.api.audit import PoolInfo, PoolList
from corral.api.errors import ErrorCode
from corral.node import Node

from ..auth import OperatorTenant
from ..openapi import errors

router = APIRouter(prefix="/v1/pools", tags=["operators"])


@router.get("", responses=errors(ErrorCode.PERMISSION_DENIED,
                                 why="the key is not an operator's"))
async def list_(request: Request, _tenant: OperatorTenant) -> PoolList:
    """Each warm pool (image, runtime, size) with its ready sandboxes, hits and misses."""
    node: Node = request.app.state.node
    return PoolList(pools=[PoolInfo(image=p.spec.image, runtime=p.runtime, size=p.spec.size,
                                    ready=p.stats.ready, hits=p.stats.hits,
                                    misses=p.stats.misses) for p in node.pools])
