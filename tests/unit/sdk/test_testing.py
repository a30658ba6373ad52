"""``corral.sdk.testing``: an ASGI app served to the SDK in process, streaming, no socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from corral.api.errors import NotFoundError
from corral.sdk import _http
from corral.sdk._http import ApiClient
from corral.sdk.testing import in_process

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]


class Probe:
    """A tiny app: its lifespan, a streamed response held open, what it saw."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.release = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.app = Starlette(routes=[Route("/echo", self.echo, methods=["POST"]),
                                     Route("/stream", self.stream),
                                     Route("/missing", self.missing)],
                             lifespan=self.lifespan)

    def lifespan(self, app: Any) -> Any:
        probe = self

        class Span:
            async def __aenter__(self) -> None:
                probe.events.append("startup")

            async def __aexit__(self, *exc: object) -> None:
                probe.events.append("shutdown")

        return Span()

    async def echo(self, request: Request) -> Response:
        return JSONResponse({"body": (await request.body()).decode(),
                             "auth": request.headers.get("authorization")})

    async def stream(self, request: Request) -> Response:
        async def body() -> Any:
            try:
                yield b"first\n"
                await self.release.wait()
                yield b"second\n"
            except asyncio.CancelledError:
                self.disconnected.set()
                raise

        return StreamingResponse(body())

    async def missing(self, request: Request) -> Response:
        return JSONResponse({"error": {"code": "not_found", "message": "no such thing"}},
                            status_code=404)


async def test_requests_reach_the_app_with_body_and_key() -> None:
    probe = Probe()
    async with in_process(probe.app) as url:
        assert probe.events == ["startup"]
        assert url.endswith(".corral.invalid") and url in _http.IN_PROCESS
        client = ApiClient(url, "crl_key")
        try:
            reply = await client.json("POST", "/echo", content=b"hello")
            assert reply == {"body": "hello", "auth": "Bearer crl_key"}
            with pytest.raises(NotFoundError, match="no such thing"):
                await client.call("GET", "/missing")
        finally:
            await client.aclose()
    assert probe.events == ["startup", "shutdown"]
    assert url not in _http.IN_PROCESS


async def test_responses_stream_and_an_early_close_is_a_disconnect() -> None:
    probe = Probe()
    async with in_process(probe.app) as url:
        client = ApiClient(url, "crl_key")
        try:
            async with client.stream("GET", "/stream") as response:
                lines = response.aiter_lines()
                assert await anext(lines) == "first"  # while the app still holds the rest
                probe.release.set()
                assert await anext(lines) == "second"
            probe.release.clear()
            async with client.stream("GET", "/stream") as response:
                assert await anext(response.aiter_lines()) == "first"
            await probe.disconnected.wait()  # bounded by the test's timeout
        finally:
            await client.aclose()
