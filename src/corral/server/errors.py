"""Every error the server answers, in one shape: ``{"error": {"code", "message"}}``.

The status comes from :data:`corral.api.errors.HTTP_STATUS`, the table the SDK reads back.
Validation messages name the field and the rule, never the value sent (it may be a secret
or code). Unexpected exceptions are logged with a reference the client is given. Answers
may carry headers: ``Retry-After`` on every ``429 rate_limited`` and ``503 unavailable``,
which are refused before anything was done (:data:`RETRY_LATER`). ``429
resource_exhausted`` (a quota) and ``503 runtime_unavailable`` carry none: waiting does
not change them.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from corral.api.errors import ErrorCode, SandboxError, code_for_status, http_status
from corral.api.models import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

MAX_MESSAGE = 2000


#: Codes that mean the server refused before doing anything: their answers (429, 503)
#: always carry ``Retry-After``, and the SDKs send them again after it.
RETRY_LATER: Final = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE})


def retry_after(seconds: float | None) -> dict[str, str]:
    """The ``Retry-After`` header for a wait of ``seconds`` (whole seconds, at least 1;
    None: 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds or 0)))}


def error_response(code: ErrorCode, message: str, status: int | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one error shape; a code of :data:`RETRY_LATER` gets ``Retry-After: 1`` unless
    ``headers`` name a wait."""
    body = ErrorBody(error=ErrorDetail(code=code.value, message=message[:MAX_MESSAGE]))
    if code in RETRY_LATER and not any(k.lower() == "retry-after" for k in headers or {}):
        headers = {**(headers or {}), **retry_after(None)}
    return JSONResponse(body.model_dump(), status_code=status or http_status(code),
                        headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    """Route every exception the app can raise to the one error shape."""

    @app.exception_handler(SandboxError)
    async def sandbox_error(_: Request, exc: SandboxError) -> JSONResponse:
        wait = retry_after(exc.retry_after) if exc.code in RETRY_LATER else None
        return error_response(exc.code, exc.message, headers=wait)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "")
        if request.method in ("POST", "PUT") and "json" not in kind and any(
                tuple(e.get("loc", ())) == ("body",) for e in exc.errors()):
            return error_response(ErrorCode.INVALID_ARGUMENT,
                                  "the request body must be JSON, sent with "
                                  "Content-Type: application/json")
        return error_response(ErrorCode.INVALID_ARGUMENT, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(code_for_status(exc.status_code), str(exc.detail),
                              exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = secrets.token_hex(6)
        # The path as sent is not logged (the access line names its route template), nor
        # the exception's message, which may quote a request field: only its type and stack.
        log.error("internal error %s on %s: %s", ref, request.method, type(exc).__name__,
                  exc_info=exc)
        return error_response(ErrorCode.INTERNAL, f"internal error (reference {ref})")
