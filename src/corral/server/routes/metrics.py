"""``/metrics``: Prometheus exposition of :mod:`corral.server.metrics`, behind the API key
like every route but the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..auth import Tenant
from ._deps import Metrics

router = APIRouter(tags=["meta"])


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition format",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(_: Tenant, metrics: Metrics) -> Response:
    """Counters and gauges of the whole server: never labelled by tenant or sandbox."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
