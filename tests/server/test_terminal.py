"""Terminals through the server: ``sandbox.pty`` (NDJSON, stdin and resize over HTTP) and
the WebSocket route ``/v1/sandboxes/{id}/terminal`` (binary frames, JSON controls), on
every runtime, against a real server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from corral import AuthenticationError, InvalidArgumentError, Sandbox
from corral.api.models import PtySize

from .conftest import Server

PROMPT = rb"[#$] $"


def _ws_url(server: Server, sandbox_id: str) -> str:
    return server.url.replace("http://", "ws://") + f"/v1/sandboxes/{sandbox_id}/terminal"


@pytest.fixture
def term(server: Server, sandbox: Sandbox) -> Iterator[ClientConnection]:
    with connect(_ws_url(server, sandbox.id), open_timeout=60,
                 additional_headers={"Authorization": f"Bearer {server.key}"}) as ws:
        yield ws


class Screen:
    """What a terminal showed, read as far as needed (from a WebSocket, or from
    ``on_data`` chunks)."""

    def __init__(self) -> None:
        self.text = b""
        self.changed = threading.Condition()

    def feed(self, data: bytes) -> None:
        with self.changed:
            self.text += data
            self.changed.notify_all()

    def wait_for(self, pattern: bytes) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: re.search(pattern, self.text), 120), self.text


def _until(ws: ClientConnection, pattern: bytes, shown: bytearray) -> list[Any]:
    """Read until the output matches ``pattern``; the text messages met on the way."""
    texts = []
    while re.search(pattern, bytes(shown)) is None:
        message = ws.recv(timeout=120)
        if isinstance(message, bytes):
            shown += message
        else:
            texts.append(json.loads(message))
            assert texts[-1]["type"] != "exit", (texts, bytes(shown))
    return texts


def test_the_sdk_pty_creates_types_resizes_and_waits(sandbox: Sandbox) -> None:
    screen = Screen()
    with sandbox.pty.create(cols=100, rows=30, on_data=screen.feed, cwd="/tmp",
                            env={"A": "x"}, user="user") as pty:
        screen.wait_for(PROMPT)
        pty.send_input("tty; stty size; echo $A $PWD $(id -u)\n")
        screen.wait_for(rb"x /tmp 1000\r\n.*" + PROMPT)
        assert re.search(rb"[\r\n]/dev/pts/\d+\r\n30 100\r\n", screen.text), screen.text
        pty.resize(132, 50)
        pty.send_input("stty size\n")
        screen.wait_for(rb"[\r\n]50 132\r\n")
        pty.send_input("exit 4\n")
        result = pty.wait()
    assert result.exit_code == 4
    assert "50 132" in result.stdout


def test_the_sdk_pty_is_killed(sandbox: Sandbox) -> None:
    pty = sandbox.pty.create(cmd="echo ready; sleep 600")
    pty.kill()
    result = pty.wait()
    assert (result.signal, result.reason) == (9, "killed")
    with pytest.raises(InvalidArgumentError, match="from 1 to 1000|less than or equal"):
        sandbox.pty.create(cols=1001, rows=24)
    with pytest.raises(InvalidArgumentError, match="not started on a terminal"):
        started = sandbox.commands.run_background("sleep 600")
        sandbox.commands.resize(started.id, 80, 24)


def test_a_websocket_terminal_runs_a_shell(term: ClientConnection) -> None:
    term.send(json.dumps({"pty": {"cols": 90, "rows": 20}}))
    started = json.loads(term.recv(timeout=60))
    assert started["type"] == "started" and started["pid"] > 0
    shown = bytearray()
    _until(term, PROMPT, shown)
    term.send(b"tty; stty size\n")
    _until(term, rb"[\r\n]20 90\r\n.*" + PROMPT, shown)
    assert re.search(rb"[\r\n]/dev/pts/\d+\r\n20 90\r\n", bytes(shown)), bytes(shown)
    term.send(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
    term.send(b"stty size\n")
    _until(term, rb"[\r\n]40 120\r\n.*" + PROMPT, shown)
    # Ctrl-C reaches the foreground job, once it runs and takes SIGINT's default action (it
    # says so itself; a shell could miss a key that lands before its exec).
    term.send(b"python3 -c 'import signal, time; signal.signal(2, signal.SIG_DFL); "
              b"print(\"sta\" \"rted\", flush=True); time.sleep(600)'; echo not-interrupted\n")
    _until(term, rb"[\r\n]started\r\n", shown)
    term.send(b"\x03")
    term.send(b"exit 5\n")
    texts: list[Any] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            message = term.recv(timeout=120)
            if isinstance(message, bytes):
                shown += message
            else:
                texts.append(json.loads(message))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert [t["type"] for t in texts] == ["exit"] and texts[0]["exit_code"] == 5
    assert not re.search(rb"[\r\n]not-interrupted\r\n", bytes(shown)), bytes(shown)


def test_a_websocket_terminal_takes_a_command_and_signals(term: ClientConnection) -> None:
    term.send(json.dumps({"pty": {"cols": 80, "rows": 24}, "cmd": ["cat"]}))
    assert json.loads(term.recv(timeout=60))["type"] == "started"
    term.send(b"hello\n")
    shown = bytearray()
    _until(term, rb"hello\r\nhello\r\n", shown)  # echoed, then cat's copy
    term.send(json.dumps({"type": "signal", "signal": 15}))
    texts: list[Any] = []
    while not texts:
        message = term.recv(timeout=120)
        if isinstance(message, str):
            texts.append(json.loads(message))
    assert texts[0]["type"] == "exit" and texts[0]["signal"] == 15


@pytest.mark.parametrize("first", [
    json.dumps({"pty": {"cols": 0, "rows": 24}}),
    json.dumps({"pty": {"cols": 80, "rows": 24}, "stream": True}),
    json.dumps({"cmd": "sh"}),
    "not json",
    b"\x00binary first",
])
def test_a_bad_first_message_is_refused(term: ClientConnection, first: str | bytes) -> None:
    term.send(first)
    error = json.loads(term.recv(timeout=60))
    assert error["type"] == "error" and error["error"]["code"] == "invalid_argument", error
    with pytest.raises(ConnectionClosed) as closed:
        term.recv(timeout=60)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_a_bad_control_closes_and_kills(term: ClientConnection, sandbox: Sandbox) -> None:
    term.send(json.dumps({"pty": {"cols": 80, "rows": 24}, "cmd": ["sleep", "600"]}))
    started = json.loads(term.recv(timeout=60))
    assert [p.id for p in sandbox.commands.list()] == [started["id"]]
    term.send(json.dumps({"type": "resize", "cols": 5000, "rows": 24}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            term.recv(timeout=60)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # Killed before the close was sent; the agent lists it until it is reaped: asked until.
    listed = sandbox.commands.list()
    while listed:
        assert [p.id for p in listed] == [started["id"]]
        listed = sandbox.commands.list()


def test_leaving_kills_the_terminal(server: Server, sandbox: Sandbox) -> None:
    with connect(_ws_url(server, sandbox.id), open_timeout=60,
                 additional_headers={"Authorization": f"Bearer {server.key}"}) as ws:
        ws.send(json.dumps({"pty": {"cols": 80, "rows": 24}, "cmd": ["sleep", "600"]}))
        started = json.loads(ws.recv(timeout=60))
    # The server kills it once it sees the client gone: asked until it has.
    listed = sandbox.commands.list()
    while listed:
        assert [p.id for p in listed] == [started["id"]]
        listed = sandbox.commands.list()


def test_the_handshake_is_authenticated(server: Server, default_sandbox: Sandbox) -> None:
    url = _ws_url(server, default_sandbox.id)
    for headers in ({}, {"Authorization": "Bearer crl_nope"},
                    {"Authorization": f"Bearer {server.revoked_key}"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, open_timeout=60, additional_headers=headers)
        response = refused.value.response
        assert response.status_code == 401
        assert json.loads(response.body)["error"]["code"] == "unauthenticated"
    # another tenant's key: its sandbox is not found
    with connect(url, open_timeout=60,
                 additional_headers={"Authorization": f"Bearer {server.other_key}"}) as ws:
        ws.send(json.dumps({"pty": {"cols": 80, "rows": 24}}))
        error = json.loads(ws.recv(timeout=60))
        assert (error["type"], error["error"]["code"]) == ("error", "not_found")
    with pytest.raises(AuthenticationError):
        Sandbox.connect(default_sandbox.id, url=server.url, api_key="crl_nope")
    assert PtySize(cols=1, rows=1)  # the SDK's size type is importable where it is documented
