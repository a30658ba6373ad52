"""Wire models of the audit log (``GET /v1/audit``), shared by the server and clients.

A record says who (tenant, key id — never the key), did what (an action name), to which
sandbox, when, from where, and how it ended. It holds no request content: no command,
path, env, metadata or file data.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class AuditEvent(BaseModel):
    """One audited request."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int
    at: datetime
    tenant: str
    key_id: str | None = None
    action: str
    sandbox_id: str | None = None
    outcome: str
    status: int
    request_id: str | None = None
    client: str | None = None


class AuditList(BaseModel):
    """Newest first; ask again with ``before=next_before`` for older ones."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    events: list[AuditEvent]
    next_before: int | None = None


class PoolInfo(BaseModel):
    """One warm pool of the node (``corral serve --pool``), as an operator sees it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    image: str
    runtime: str
    size: int  # how many it keeps ready
    ready: int  # ready now
    hits: int  # creates it served
    misses: int  # creates that matched it and found it empty


class PoolList(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    pools: list[PoolInfo]
