"""Malformed requests: every one is refused with the one error shape and a fitting status.

Validation failures are 400 ``invalid_argument`` (never FastAPI's 422); oversized bodies
are 413 ``request_too_large``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import Sandbox
from corral.api.errors import (
    HTTP_STATUS,
    ErrorCode,
    RateLimitedError,
    RequestTooLargeError,
    ResourceExhaustedError,
    code_for_status,
)
from corral.sdk._http import ApiClient

from .conftest import Server, assert_error


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[]",
    b'{"image": "python", "bogus": 1}',
    b'{"timeout": 1e12}',
    b'{"timeout": "60"}',
    b'{"resources": {"memory": "900T"}}',
    b'{"resources": {"cpus": 100000}}',
    b'{"resources": {"pids": 10}}',
    b'{"resources": {"memory": "lots"}}',
    b'{"resources": {"gpus": 1}}',
    b'{"env": {"A": 1}}',
    b'{"metadata": "x"}',
    b'{"image": ""}',
], ids=lambda b: b.decode()[:40])
def test_bad_create_bodies_are_400(server: Server, body: bytes) -> None:
    with server.http(server.key) as http:
        response = http.post("/v1/sandboxes", content=body,
                             headers={"Content-Type": "application/json"})
        message = assert_error(response, 400, "invalid_argument")
    assert "Traceback" not in message


def test_validation_messages_do_not_echo_values(server: Server) -> None:
    secret = "s3cr3t-value-" * 3
    with server.http(server.key) as http:
        response = http.post("/v1/sandboxes", json={"env": {"TOKEN": 42, "X": secret},
                                                    "bogus": secret})
        message = assert_error(response, 400, "invalid_argument")
    assert "s3cr3t" not in message and "env.TOKEN" in message and "bogus" in message


def test_bad_command_bodies_are_400(server: Server, default_sandbox: Sandbox) -> None:
    base = f"/v1/sandboxes/{default_sandbox.id}/commands"
    with server.http(server.key) as http:
        for body in [{"cmd": ""}, {"cmd": []}, {"cmd": 5}, {"cmd": "id", "timeout": -1},
                     {"cmd": "id", "stream": True, "background": True},
                     {"cmd": "id", "stdin_base64": "***"}, {"cmd": "id", "shell": True},
                     {"cmd": "id", "env": {"1X": "y"}}]:
            assert_error(http.post(base, json=body), 400, "invalid_argument")
        assert_error(http.post(f"{base}/1/signal", json={"signal": 99}), 400,
                     "invalid_argument")
        files = f"/v1/sandboxes/{default_sandbox.id}/files"
        assert_error(http.get(files), 400, "invalid_argument")  # no path
        assert_error(http.get(f"{files}/list", params={"path": "/", "depth": 1000}), 400,
                     "invalid_argument")
        assert_error(http.get(f"{files}/stat", params={"path": "a\0b"}), 400,
                     "invalid_argument")


def test_a_body_that_is_not_json_says_so(server: Server) -> None:
    with server.http(server.key) as http:
        message = assert_error(http.post("/v1/sandboxes", content=b"image=python"), 400,
                               "invalid_argument")
    assert "application/json" in message


def test_oversized_bodies_are_413(server: Server, default_sandbox: Sandbox) -> None:
    huge = b'{"cmd": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    with server.http(server.key) as http:
        base = f"/v1/sandboxes/{default_sandbox.id}/commands"
        assert_error(http.post(base, content=huge, headers={"Content-Type": "application/json"}),
                     413, "request_too_large")

        def chunked() -> object:  # no Content-Length: cut off while read
            for _ in range(3):
                yield b"x" * (1024 * 1024)

        assert_error(http.post(base, content=chunked(),  # type: ignore[arg-type]
                               headers={"Content-Type": "application/json"}),
                     413, "request_too_large")
        assert_error(http.post(f"{base}/1/stdin", content=b"x" * (2 * 1024 * 1024)), 413,
                     "request_too_large")
    # Within the model's bounds, so the SDK sends it; past the server's body bound.
    env = {f"V{i}": "x" * 100_000 for i in range(20)}
    with pytest.raises(RequestTooLargeError):
        default_sandbox.commands.run("true", env=env)


def test_unknown_routes_and_methods_keep_the_shape(server: Server) -> None:
    with server.http(server.key) as http:
        assert_error(http.get("/v1/nothing"), 404, "not_found")
        assert_error(http.patch("/v1/sandboxes"), 405, "invalid_argument")


def test_status_table_maps_back() -> None:
    """Every code has a status; a body-less status maps back to its one code, or for the
    three shared statuses to what a proxy means by it (a rate limit, a failing upstream,
    an unavailable one), whose classes are still ``except``-able as the other code's where
    it was already the parent class."""
    shared = {429: {ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.RATE_LIMITED},
              502: {ErrorCode.PORT_UNAVAILABLE, ErrorCode.AGENT_ERROR},
              503: {ErrorCode.RUNTIME_UNAVAILABLE, ErrorCode.UNAVAILABLE}}
    assert set(HTTP_STATUS) == set(ErrorCode)
    for code, status in HTTP_STATUS.items():
        if status in shared:
            assert code in shared[status]
        else:
            assert code_for_status(status) is code
    assert len(set(HTTP_STATUS.values())) == len(HTTP_STATUS) - len(shared)
    assert code_for_status(429) is ErrorCode.RATE_LIMITED
    assert code_for_status(503) is ErrorCode.UNAVAILABLE
    assert code_for_status(502) is ErrorCode.AGENT_ERROR
    assert issubclass(RateLimitedError, ResourceExhaustedError)
    assert code_for_status(418) is ErrorCode.INVALID_ARGUMENT
    assert code_for_status(599) is ErrorCode.INTERNAL


def test_sdk_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral import AuthenticationError

    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="CORRAL_API_KEY"):
        ApiClient("http://127.0.0.1:1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_unexpected_exceptions_keep_the_shape(tmp_path: Path) -> None:
    """A bug in a route answers 500 ``internal`` with a reference, never a traceback."""
    import httpx

    from corral.node import NodeSettings
    from corral.server import ServerSettings, create_app

    app = create_app(ServerSettings(node=NodeSettings(data_dir=tmp_path,
                                                      image_dir=tmp_path / "images")))
    key = app.state.keys.create("alpha").key

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    # In-process, without the lifespan: no node starts.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/v1/boom", headers={"Authorization": f"Bearer {key}"})
    message = assert_error(response, 500, "internal")
    assert "secret detail" not in message and "reference" in message
