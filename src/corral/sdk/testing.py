"""Testing helpers: the SDK against a Corral server app running in this process.

:func:`in_process` runs an app's startup and shutdown (its lifespan) and hands back a URL;
every :class:`corral.AsyncSandbox` (or ``ApiClient``) given that URL talks to the app
directly, with no socket::

    app = create_app(settings)
    async with in_process(app) as url:
        async with await AsyncSandbox.create(url=url, api_key=key) as sb:
            print((await sb.commands.run("echo hi")).stdout)

Responses stream as the app sends them (httpx's own ``ASGITransport`` buffers a whole
response first, which would hold a command's output until it ends), and closing a
response early tells the app its client went away, as a real disconnect would. An
exception the app lets escape is raised to the caller, not turned into a 500.

The URLs end in ``.invalid`` (RFC 2606), a name no real server can have, and are
registered only while the ``async with`` lasts; production code never reaches here.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from . import _http

__all__ = ["StreamingASGITransport", "in_process"]

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]


@contextlib.asynccontextmanager
async def in_process(app: ASGIApp) -> AsyncIterator[str]:
    """Start ``app`` (any ASGI app: its lifespan runs as a server would run it) and yield
    a URL the SDK reaches it at."""
    url = f"http://{secrets.token_hex(6)}.corral.invalid"
    async with _lifespan(app) as state:
        _http.IN_PROCESS[url] = StreamingASGITransport(app, state=state)
        try:
            yield url
        finally:
            del _http.IN_PROCESS[url]


@contextlib.asynccontextmanager
async def _lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """The ASGI lifespan protocol: startup before the body, shutdown after it."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()

    async def send(message: Message) -> None:
        await outbox.put(message)

    async def run() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state},
                  inbox.get, send)

    task = asyncio.get_running_loop().create_task(run())

    async def step(name: str) -> None:
        await inbox.put({"type": f"lifespan.{name}"})
        reply = asyncio.ensure_future(outbox.get())
        await asyncio.wait({reply, task}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            task.result()  # the app raised: raise it here
            raise RuntimeError(f"the app ended without answering lifespan.{name}")
        message = reply.result()
        if message["type"] != f"lifespan.{name}.complete":
            raise RuntimeError(f"the app's {name} failed: {message.get('message', '')}")

    await step("startup")
    try:
        yield state
    finally:
        await step("shutdown")
        await task


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """An httpx transport calling an ASGI app in this event loop, streaming responses."""

    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 50000),
                 state: dict[str, Any] | None = None) -> None:
        """``state``: what the app's lifespan stored, copied into every request's scope."""
        self._app = app
        self._client = client
        self._state = state

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": request.url.scheme,
            "path": request.url.path, "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query, "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "server": (request.url.host, request.url.port or 80), "client": self._client,
        }
        if self._state is not None:
            scope["state"] = dict(self._state)
        body = aiter(request.stream)  # type: ignore[arg-type]
        body_done = False
        gone = asyncio.Event()  # the client closed the response
        sent: asyncio.Queue[Message | BaseException | None] = asyncio.Queue()

        async def receive() -> Message:
            nonlocal body_done
            if not body_done:
                try:
                    chunk = await anext(body)
                except StopAsyncIteration:
                    body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                return {"type": "http.request", "body": chunk, "more_body": True}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if not gone.is_set():  # after a disconnect, like a server's socket: dropped
                await sent.put(message)

        async def run() -> None:
            try:
                await self._app(scope, receive, send)
            except BaseException as exc:  # handed to whoever reads the response
                await sent.put(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                await sent.put(None)

        task = asyncio.get_running_loop().create_task(run())
        start = await sent.get()
        if isinstance(start, BaseException):
            raise start
        if start is None or start["type"] != "http.response.start":
            await task
            raise RuntimeError(f"the app sent no response to {request.method} {request.url}")
        return httpx.Response(start["status"], headers=start.get("headers", []),
                              stream=_Body(sent, gone, task), request=request)


class _Body(httpx.AsyncByteStream):
    """A response body read from the app's messages as they come."""

    def __init__(self, sent: asyncio.Queue[Message | BaseException | None],
                 gone: asyncio.Event, task: asyncio.Task[None]) -> None:
        self._sent, self._gone, self._task = sent, gone, task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (message := await self._sent.get()) is not None:
            if isinstance(message, BaseException):
                raise message
            if message["type"] != "http.response.body":
                continue
            if message.get("body"):
                yield bytes(message["body"])
            if not message.get("more_body", False):
                break

    async def aclose(self) -> None:
        self._gone.set()
        await self._task
        while not self._sent.empty():  # what the app raised after its last message
            message = self._sent.get_nowait()
            if isinstance(message, BaseException):
                raise message
