"""The terminal WebSocket opened with the console's cookie, against a real server and
sandbox: it works from the server's own origin with the session's token in ``?csrf=``,
and is refused at the handshake from any other origin, without an origin, or without the
token."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from corral import Sandbox

from .conftest import Server

MARKER = "console-terminal-5d2b"


def _session(server: Server) -> tuple[str, str]:
    """A console session of tenant alpha: (the cookie's value, its CSRF token)."""
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        answer = client.post("/ui/api/login", json={"key": server.key})
        assert answer.status_code == 200, answer.text
        return client.cookies["corral_session"], answer.json()["csrf"]


def _url(server: Server, sandbox_id: str, csrf: str | None) -> str:
    base = server.url.replace("http://", "ws://") + f"/v1/sandboxes/{sandbox_id}/terminal"
    return base if csrf is None else f"{base}?csrf={csrf}"


def _refused(url: str, headers: dict[str, str], origin: str | None) -> tuple[int, Any]:
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=60, additional_headers=headers,
                origin=origin)  # type: ignore[arg-type]
    response = refused.value.response
    return response.status_code, json.loads(response.body)["error"]["code"]


def test_the_console_opens_a_terminal_from_its_own_origin(server: Server,
                                                          default_sandbox: Sandbox) -> None:
    cookie, csrf = _session(server)
    with connect(_url(server, default_sandbox.id, csrf), open_timeout=60,
                 additional_headers={"Cookie": f"corral_session={cookie}"},
                 origin=server.url) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({"pty": {"cols": 80, "rows": 24},
                            "cmd": ["echo", MARKER]}))
        assert json.loads(ws.recv(timeout=60))["type"] == "started"
        shown = b""
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                shown += message
                continue
            event = json.loads(message)
            assert event["type"] == "exit", event
            break
        assert MARKER.encode() in shown


def test_other_origins_and_missing_tokens_are_refused(server: Server,
                                                      default_sandbox: Sandbox) -> None:
    cookie, csrf = _session(server)
    headers = {"Cookie": f"corral_session={cookie}"}
    url = _url(server, default_sandbox.id, csrf)
    host = server.url.split("://", 1)[1]
    for origin in ("http://evil.example", f"https://{host}", "null",
                   server.url.replace("127.0.0.1", "localhost")):
        assert _refused(url, headers, origin) == (403, "permission_denied"), origin
    assert _refused(url, headers, None) == (403, "permission_denied")
    for wrong in (None, "", "0" * 64):
        assert _refused(_url(server, default_sandbox.id, wrong), headers, server.url) == (
            401, "unauthenticated")
    # The token in a header, as HTTP requests carry it, does not open a WebSocket.
    assert _refused(_url(server, default_sandbox.id, None),
                    {**headers, "X-Corral-CSRF": csrf}, server.url) == (401, "unauthenticated")
