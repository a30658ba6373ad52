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


class NewSandbox(_Request):
    """``POST /sandboxes`` (e2b ≤ 2.50) and ``POST /v2/sandboxes`` (2.51 and later)."""

    templateID: _NAME
    timeout: Annotated[int, Field(ge=1)] = 300
    autoPause: bool = False
    metadata: dict[str, str] | None = None
    envVars: dict[str, str] | None = None
    volumeMounts: list[VolumeMount] | None = None
    mcp: dict[str, Any] | None = None


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
