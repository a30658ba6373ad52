"""Sandboxes' metrics over time: ``GET /v1/sandboxes/{id}/metrics`` (one sandbox, a time
range) and ``GET /v1/metrics/sandboxes`` (the newest samples of several, for a list's
sparklines). Looking is not activity: nothing here touches or resumes a sandbox."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from corral.api import models
from corral.api.errors import InvalidArgumentError
from corral.api.limits import DEFAULT_METRICS_POINTS, MAX_METRICS_IDS, MAX_METRICS_POINTS

from ..auth import Tenant
from ..services.sampler import MetricsSampler
from ._deps import SandboxId

router = APIRouter(tags=["metrics"])

#: A time as a query gives it: Unix seconds, or RFC 3339 (with its offset).
_TIME = Annotated[str | None, Query(max_length=64)]
_UNIX = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
#: The latest time a query may name (the year 9999 in Unix seconds).
_LATEST = 253402300799.0


def parse_time(value: str | None, name: str) -> float | None:
    """``value`` as epoch seconds; InvalidArgumentError saying what is accepted."""
    if value is None or value == "":
        return None
    text = value.strip()
    if _UNIX.match(text):
        seconds = float(text)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            when = None
        if when is None or when.tzinfo is None or "T" not in text.upper():
            raise InvalidArgumentError(
                f"{name} {value!r:.70} is not a time: give Unix seconds (1765121400) or an "
                "RFC 3339 time with its offset (2026-12-07T15:30:00Z)")
        seconds = when.timestamp()
    if not math.isfinite(seconds) or not 0 <= seconds <= _LATEST:
        raise InvalidArgumentError(f"{name} {value!r:.70} is out of range (1970 to 9999)")
    return seconds


def _sampler(request: Request) -> MetricsSampler:
    sampler: MetricsSampler = request.app.state.sampler
    return sampler


@router.get("/v1/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(request: Request, sandbox_id: SandboxId, tenant: Tenant,
                          start: _TIME = None, end: _TIME = None) -> models.SandboxMetrics:
    """The sandbox's samples from ``start`` to ``end`` (Unix seconds or RFC 3339; both
    optional: the whole kept history), oldest first. A stopped sandbox's are kept for the
    server's metrics retention. Does not count as activity and never resumes it."""
    since, until = parse_time(start, "start"), parse_time(end, "end")
    if since is not None and until is not None and until < since:
        raise InvalidArgumentError("end is before start: give a range whose end is at or "
                                   "after its start")
    return await _sampler(request).sandbox_metrics(tenant, sandbox_id, since, until)


@router.get("/v1/metrics/sandboxes")
async def sandboxes_metrics(
        request: Request, tenant: Tenant,
        ids: Annotated[str, Query(max_length=MAX_METRICS_IDS * 65)],
        points: Annotated[int, Query(ge=1, le=MAX_METRICS_POINTS)] = DEFAULT_METRICS_POINTS,
) -> models.SandboxesMetrics:
    """The newest ``points`` samples (1 to 120, default 30) of each sandbox in ``ids``
    (comma-separated, 1 to 100), oldest first. Only the caller's own sandboxes are in the
    answer: another tenant's, or an unknown id, is simply absent."""
    return _sampler(request).latest_of(tenant, metrics_ids(ids), points)


def metrics_ids(ids: str) -> list[str]:
    """``ids`` of ``GET /v1/metrics/sandboxes``: distinct, 1 to 100."""
    wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
    if not wanted:
        raise InvalidArgumentError("ids is empty: give 1 to 100 sandbox ids, comma-separated")
    if len(wanted) > MAX_METRICS_IDS:
        raise InvalidArgumentError(f"ids names {len(wanted)} sandboxes; at most "
                                   f"{MAX_METRICS_IDS} at once: split the request")
    return wanted
