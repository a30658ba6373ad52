"""``Retry-After`` on every answer that means nothing was done (``429 rate_limited``,
``503 unavailable``), however it is made: the error shape, an exception a service raised
(through the app's real handlers), an E2B Connect RPC's error; and on no other."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from corral.api.errors import (ErrorCode, RateLimitedError, ResourceExhaustedError,
                               RuntimeUnavailableError, SandboxError, SandboxNotRunningError,
                               UnavailableError)
from corral.server import errors, ports
from corral.server.e2b.connect import ConnectError

pytestmark = [pytest.mark.rootless]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_the_error_shape_says_retry_after_only_when_nothing_was_done(code: ErrorCode) -> None:
    response = errors.error_response(code, "no")
    assert ("retry-after" in response.headers) is (code in errors.RETRY_LATER)
    if code in errors.RETRY_LATER:
        assert response.headers["retry-after"] == "1"
        assert response.status_code in (429, 503)
    # A wait given is kept, whatever the case of its name.
    given = errors.error_response(code, "no", headers={"retry-after": "9"})
    assert given.headers.getlist("retry-after") == ["9"]


def _raising(error: SandboxError) -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/x")
    async def fail() -> None:
        raise error

    return app


async def _answer(error: SandboxError) -> httpx.Response:
    transport = httpx.ASGITransport(app=_raising(error))
    async with httpx.AsyncClient(transport=transport, base_url="http://t.invalid") as client:
        return await client.get("/x")


def _waiting(error: SandboxError, seconds: float) -> SandboxError:
    error.retry_after = seconds
    return error


@pytest.mark.anyio
@pytest.mark.parametrize(("error", "status", "retry_after"), [
    (UnavailableError("the node is shutting down"), 503, "1"),
    (_waiting(UnavailableError("a snapshot in use"), 2.2), 503, "3"),
    (_waiting(RateLimitedError("too many"), 7), 429, "7"),
    (ResourceExhaustedError("quota full"), 429, None),
    (RuntimeUnavailableError("no runsc"), 503, None),
])
async def test_a_raised_error_is_answered_with_its_retry_after(
        error: SandboxError, status: int, retry_after: str | None) -> None:
    response = await _answer(error)
    assert response.status_code == status
    assert response.json()["error"]["code"] == error.code.value
    assert response.headers.get("retry-after") == retry_after


@pytest.mark.parametrize(("error", "retry_after"), [
    (UnavailableError("shutting down"), "1"),
    (_waiting(RateLimitedError("too many"), 4), "4"),
    (SandboxNotRunningError("sandbox sbx-1 was not found"), None),  # E2B's 503 for it
    (ResourceExhaustedError("quota full"), None),
])
def test_a_connect_error_says_retry_after_only_when_nothing_was_done(
        error: SandboxError, retry_after: str | None) -> None:
    response = ConnectError.of(error).response()
    assert response.status_code in (429, 503)
    assert response.headers.get("retry-after") == retry_after


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_a_refused_port_credential_says_retry_after(kind: str) -> None:
    """The port gateway's answer to too many wrong credentials (a plain request, or a
    WebSocket handshake answered in HTTP)."""
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"} if kind == "websocket" else {
            "type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": kind, "extensions": {"websocket.http.response": {}}, "headers": []}
    await ports._refuse(scope, receive, send, RateLimitedError("too many wrong port "
                                                                "credentials"))
    start = sent[0]
    assert start["status"] == 429
    headers = dict(start["headers"])  # type: ignore[call-overload]
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    body = b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]
    assert int(headers[b"content-length"]) == len(body) and b"rate_limited" in body
