"""What every data-plane route of the E2B API (envd's services, ``/files``, the code
interpreter) asks first: which live sandbox of the caller's the request is for, and E2B's
answer when there is none."""

from __future__ import annotations

from typing import Final

from fastapi import Request
from starlette.responses import JSONResponse

from ..services import SandboxService

#: Longest sandbox id looked at; a longer one is no sandbox.
MAX_ID: Final = 64


def sandbox_of(request: Request) -> tuple[str, str] | None:
    """(tenant, sandbox id) of the live sandbox the request's token was for, else None."""
    sandbox_id = request.headers.get("e2b-sandbox-id", "")
    tenant = request.scope.get("corral.tenant")
    service: SandboxService = request.app.state.sandboxes
    if not sandbox_id or not tenant or service.owner(sandbox_id) != tenant:
        return None
    return tenant, sandbox_id


def not_found(request: Request) -> JSONResponse:
    """E2B's proxy answer for a sandbox it does not know (any more): 502 "… was not
    found", which the SDKs read as "not running"."""
    sandbox_id = request.headers.get("e2b-sandbox-id", "")[:MAX_ID]
    return JSONResponse({"code": 502, "message": f"The sandbox {sandbox_id} was not found"},
                        status_code=502)
