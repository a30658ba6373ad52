"""Structured logs: one JSON object a line, each request's carrying its request id.

The library only emits records (loggers ``corral.*``; the access log is
``corral.server.access``); :func:`configure` — called by ``corral serve`` alone — adds the
handler that writes them as JSON lines. What a line may hold is fixed here:

* the message, formatted from its arguments by Corral's own code (never a request field
  but ids, names and numbers);
* fields from a fixed list (:data:`FIELDS`): request id, tenant, key id (never the key),
  method, route *template* (``/v1/sandboxes/{sandbox_id}/files``: no query string, no
  file path), sandbox id, status, duration, client address;
* for an exception, its type and stack frames but not its message (a message can quote
  a request field).

So a log never holds code, commands, env values, file contents, paths, keys or headers.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.node.validation import SANDBOX_ID

from .auth import tenant_of
from .ratelimit import KEY_ID_SCOPE

ACCESS_LOGGER: Final = "corral.server.access"
#: Extra fields a line may carry, in this order.
FIELDS: Final = ("event", "request_id", "tenant", "key_id", "method", "route", "sandbox_id",
                 "status", "duration_ms", "client", "action", "outcome")
#: A client's ``X-Request-ID`` is kept if it looks like an id; otherwise one is made.
REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
REQUEST_ID_HEADER: Final = "x-request-id"
#: Where the request's id and the request's record of what happened live in the scope.
REQUEST_ID_SCOPE: Final = "corral.request_id"
SANDBOX_SCOPE: Final = "corral.sandbox_id"

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "corral_request_id", default=None)
"""The id of the request being served; log lines emitted while serving it carry it."""

access = logging.getLogger(ACCESS_LOGGER)


class ContextFilter(logging.Filter):
    """Adds the request id of the request being served, and a sandbox id named by the
    message's arguments (``"sandbox %s stopped"``), to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "sandbox_id", None) is None:
            args = record.args if isinstance(record.args, tuple) else ()
            record.sandbox_id = next((a for a in args
                                      if isinstance(a, str) and SANDBOX_ID.match(a)), None)
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, the fields of
    :data:`FIELDS` that are set, and ``exc`` (type and frames) for an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, tb = record.exc_info
            line["exc"] = {"type": kind.__name__,
                           "stack": traceback.format_tb(tb)[-20:] if tb else []}
        return json.dumps(line, default=str)


def configure(level: int | str = logging.INFO, stream: IO[str] | None = None,
              loggers: Iterable[str] = ("corral", "uvicorn")) -> logging.Handler:
    """Write the records of ``loggers`` to ``stream`` (stderr) as JSON lines. For
    daemons (``corral serve``); the library never calls it. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines())
    handler.addFilter(ContextFilter())
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h.formatter, JsonLines)]
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return handler


def new_request_id() -> str:
    return f"req-{secrets.token_hex(8)}"


class RequestLog:
    """Outermost middleware: gives each request an id (the client's ``X-Request-ID`` if it
    looks like one), returns it in the ``X-Request-ID`` header, and logs one access line
    once the response has ended."""

    def __init__(self, app: ASGIApp, route: Callable[[str], tuple[str, str | None]]) -> None:
        self.app = app
        self._route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _client_request_id(scope) or new_request_id()
        scope[REQUEST_ID_SCOPE] = rid
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            request_id.reset(token)
            template, sandbox_id = self._route(scope["path"])
            client = scope.get("client")
            access.info("%s %s %d", scope["method"], template, status, extra={
                "event": "request", "request_id": rid, "tenant": tenant_of(scope),
                "key_id": scope.get(KEY_ID_SCOPE), "method": scope["method"],
                "route": template, "sandbox_id": scope.get(SANDBOX_SCOPE) or sandbox_id,
                "status": status, "client": client[0] if client else None,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)})


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if REQUEST_ID.match(text) else None
    return None
