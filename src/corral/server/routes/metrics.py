"""``/metrics``: Prometheus exposition of :mod:`corral.server.metrics`, behind the API key
like every route but the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..auth import Tenant, is_operator
from ._deps import Metrics

router = APIRouter(tags=["meta"])


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition format",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request, _: Tenant, metrics: Metrics) -> Response:
    """Counters and gauges of the whole server, never labelled by sandbox; an operator's
    key also gets each tenant's figures (``corral_tenant_*``)."""
    return Response(metrics.exposition(is_operator(request.scope)),
                    media_type=CONTENT_TYPE_LATEST)
