"""E2B's control-plane bodies, restated from the wire (docs/research/e2b-protocol.md §4.3).

Requests ignore fields Corral has no use for yet (``secure``, ``autoResume``, ...), as
E2B's server does for fields it does not know, so that every SDK release can create.
Answers use E2B's camelCase names; optional fields the SDK reads are always sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_NAME = Annotated[str, Field(min_length=1, max_length=256)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VolumeMount(_Request):
    name: _NAME
    path: Annotated[str, Field(min_length=1, max_length=4096)]


_ENTRY = Annotated[str, Field(min_length=1, max_length=300)]
_ENTRIES = Annotated[list[_ENTRY], Field(max_length=256)]


class Network(_Request):
    """``network`` at create and the body of ``PUT /sandboxes/{id}/network``: E2B's egress
    lists (``allowOut`` entries are exceptions to ``denyOut``). The fields Corral cannot
    honour are kept so that a request naming them is refused, not half-done."""

    allowOut: _ENTRIES | None = None
    denyOut: _ENTRIES | None = None
    allowPublicTraffic: bool | None = None
    # Update only (``allow_internet_access`` is snake_case on the wire, as at create).
    allow_internet_access: bool | None = None
    dnsServers: list[Any] | None = None
    egressProxy: Any = None
    maskRequestHost: Any = None
    httpsPorts: list[Any] | None = None
    rules: Any = None


class NewSandbox(_Request):
    """``POST /sandboxes`` (e2b ≤ 2.50) and ``POST /v2/sandboxes`` (2.51 and later)."""

    templateID: _NAME
    timeout: Annotated[int, Field(ge=1)] = 300
    autoPause: bool = False
    metadata: dict[str, str] | None = None
    envVars: dict[str, str] | None = None
    volumeMounts: list[VolumeMount] | None = None
    mcp: dict[str, Any] | None = None
    allow_internet_access: bool | None = None
    network: Network | None = None


class SnapshotCreate(_Request):
    """``POST /sandboxes/{id}/snapshots``."""

    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    memory: bool = True


class SnapshotInfo(BaseModel):
    """A snapshot as E2B names one: its id (a template id that creates from it) and names."""

    snapshotID: str
    names: list[str]


class Fork(_Request):
    """``POST /sandboxes/{id}/fork`` (2.45 always sends both; 2.63 what it was given)."""

    timeout: Annotated[int, Field(ge=1)] | None = None
    count: Annotated[int, Field(ge=1, le=20)] = 1


class Connect(_Request):
    """``POST /sandboxes/{id}/connect`` and its ``/v2`` twin."""

    timeout: Annotated[int, Field(ge=1)] | None = None


class Timeout(_Request):
    timeout: Annotated[int, Field(ge=1)]


class Sandbox(BaseModel):
    """The create and connect answer (E2B's ``Sandbox``)."""

    templateID: str
    sandboxID: str
    clientID: str
    envdVersion: str
    alias: str | None = None
    envdAccessToken: str
    trafficAccessToken: str
    domain: str | None


class Lifecycle(BaseModel):
    autoResume: bool
    onTimeout: Literal["kill", "pause"]


class ListedSandbox(BaseModel):
    """A ``GET /v2/sandboxes`` item."""

    templateID: str
    sandboxID: str
    clientID: str
    alias: str | None = None
    startedAt: datetime
    endAt: datetime
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    state: Literal["running", "paused"]
    envdVersion: str
    metadata: dict[str, str]


class SandboxDetail(ListedSandbox):
    """``GET /sandboxes/{id}``."""

    envdAccessToken: str
    domain: str | None
    allowInternetAccess: bool
    lifecycle: Lifecycle


class Error(BaseModel):
    code: int
    message: str


class ForkResult(BaseModel):
    """One copy of a fork: its ``sandbox``, or the ``error`` that kept it from starting."""

    sandbox: Sandbox | None = None
    error: Error | None = None


class SandboxMetric(BaseModel):
    """One ``GET /sandboxes/{id}/metrics`` sample (every field required by the SDKs)."""

    timestamp: datetime
    timestampUnix: int
    cpuCount: int
    cpuUsedPct: float
    memUsed: int
    memTotal: int
    memCache: int
    diskUsed: int
    diskTotal: int
