"""Structured logs: JSON lines with request ids, route templates and sandbox ids, and never
code, commands, env values, file contents, paths or keys."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from corral import Sandbox
from corral.server import logs

from .conftest import Server

SECRET = "log-secret-91b2e4"


@contextmanager
def captured() -> Iterator[io.StringIO]:
    """What ``corral serve`` would log, at DEBUG; logging is put back as it was after."""
    names = ("corral", "uvicorn")
    saved = [(logging.getLogger(n), logging.getLogger(n).handlers[:],
              logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names]
    stream = io.StringIO()
    logs.configure(logging.DEBUG, stream, names)
    try:
        yield stream
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def test_logs_hold_ids_and_never_secrets(server: Server) -> None:
    with captured() as stream:
        with Sandbox.create("python", timeout=120, env={"TOKEN": SECRET},
                            metadata={"note": SECRET}, **server.sdk()) as sb:
            sb.commands.run(f"echo {SECRET}; python3 -c 'print(\"{SECRET}\")'",
                            env={"API_KEY": SECRET})
            sb.files.write(f"/work/{SECRET}.txt", SECRET)
            with server.http(server.key) as http:
                http.get(f"/v1/sandboxes/{sb.id}/files/stat", params={"path": f"/{SECRET}"},
                         headers={"X-Request-ID": "client-id-123"})
                http.post(f"/v1/sandboxes/{sb.id}/commands", content=b'{"cmd": "' +
                          SECRET.encode() + b'", "bogus": 1}',
                          headers={"Content-Type": "application/json"})
                http.get("/v1/sandboxes", headers={"X-Request-ID": f"bad id {SECRET}"})
            with server.http(f"crl_{SECRET}") as wrong:
                wrong.get(f"/v1/{SECRET}")
        text = stream.getvalue()
    assert SECRET not in text
    assert server.key not in text and server.key[4:20] not in text
    lines = _lines(stream)
    access = [line for line in lines if line.get("event") == "request"]
    assert access and all(line["request_id"] and line["route"] for line in access)
    by_id = {line["request_id"]: line for line in access}
    stat = by_id["client-id-123"]
    assert stat["route"] == "/v1/sandboxes/{sandbox_id}/files/stat"
    assert stat["sandbox_id"] == sb.id and stat["tenant"] == "alpha" and stat["status"] == 404
    assert any(line["route"] == "unmatched" and line["status"] == 401 for line in access)
    created = [line for line in access if line["method"] == "POST"
               and line["route"] == "/v1/sandboxes"]
    assert created and created[0]["sandbox_id"] == sb.id and created[0]["key_id"]
    events = {line.get("event") for line in lines if line.get("sandbox_id") == sb.id}
    assert {"sandbox.create", "sandbox.kill"} <= events
    # Lines written while serving a request carry its id (the node's "started" line).
    started = [line for line in lines if line["logger"].startswith("corral.node")
               and line.get("sandbox_id") == sb.id]
    assert started and all(line.get("request_id") for line in started)


def test_the_request_id_comes_back(server: Server) -> None:
    with server.http(server.key) as http:
        mine = http.get("/v1/sandboxes", headers={"X-Request-ID": "trace-42"})
        made = http.get("/v1/sandboxes", headers={"X-Request-ID": "no spaces allowed"})
        refused = http.get("/v1/sandboxes", headers={"Authorization": "Bearer crl_x"})
    assert mine.headers["x-request-id"] == "trace-42"
    assert made.headers["x-request-id"].startswith("req-")
    assert refused.status_code == 401 and refused.headers["x-request-id"].startswith("req-")


def test_exceptions_are_logged_without_their_message() -> None:
    formatter = logs.JsonLines()
    try:
        raise ValueError(SECRET)
    except ValueError:
        import sys

        record = logging.LogRecord("corral.x", logging.ERROR, __file__, 1, "failed %s",
                                   ("sbx-0123456789abcdef",), sys.exc_info())
    logs.ContextFilter().filter(record)
    line = json.loads(formatter.format(record))
    assert SECRET not in json.dumps(line)
    assert line["exc"]["type"] == "ValueError" and line["sandbox_id"] == "sbx-0123456789abcdef"
