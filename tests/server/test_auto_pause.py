"""Auto-pause against the real server on each runtime: an idle sandbox is paused and the
next call resumes it with its state; a running command or an open port connection keeps it
from pausing; ``on_timeout="pause"`` pauses instead of killing; a sandbox paused past its
``paused_ttl`` is killed; list, get and ``corral sandbox ls`` say why.

The tests watch with ``GET /v1/sandboxes`` (listing is not activity), with bounded waits.
"""

from __future__ import annotations

import time

from typer.testing import CliRunner

from corral import Sandbox
from corral.api.models import SandboxInfo
from corral.cli import app

from .conftest import Server

IDLE = 2
DEADLINE = 60.0
#: An app that answers ``/slow`` only after three idle timeouts, and ``/`` at once.
SLOW_APP = f"""
import http.server, time
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep({3 * IDLE})
        body = b"done"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
"""


def _listed(server: Server, sandbox: Sandbox) -> SandboxInfo:
    found = [s for s in Sandbox.list(**server.sdk()) if s.id == sandbox.id]
    assert len(found) == 1
    return found[0]


def _until(server: Server, sandbox: Sandbox, state: str) -> SandboxInfo:
    deadline = time.monotonic() + DEADLINE
    while (info := _listed(server, sandbox)).state != state:
        assert time.monotonic() < deadline, f"{sandbox.id} is still {info.state}, not {state}"
        time.sleep(0.2)
    return info


def test_an_idle_sandbox_is_paused_and_a_call_resumes_it_as_it_was(
        server: Server, runtime: str) -> None:
    with Sandbox.create(runtime=runtime, timeout=600, idle_timeout=IDLE, on_idle="pause",
                        **server.sdk()) as sb:
        assert (sb.info.idle_timeout, sb.info.on_idle) == (IDLE, "pause")
        sb.files.write("/work/kept.txt", "before the pause\n")
        sb.run_code("x = 41")
        paused = _until(server, sb, "paused")
        assert paused.state_reason == f"paused: idle for {IDLE} s"
        assert paused.paused_at is not None and paused.stop_reason is None
        assert sb.commands.run("cat /work/kept.txt").stdout == "before the pause\n"
        resumed = sb.refresh()
        assert (resumed.state, resumed.paused_at) == ("running", None)
        assert resumed.state_reason == "resumed: by a command"
        assert sb.run_code("x + 1").text == "42"


def test_a_running_command_keeps_it_from_pausing(server: Server, runtime: str) -> None:
    with Sandbox.create(runtime=runtime, timeout=600, idle_timeout=IDLE, on_idle="pause",
                        **server.sdk()) as sb:
        sb.commands.run_background(f"sleep {3 * IDLE}; echo ran > /work/done")
        _until(server, sb, "paused")
        # Had it paused while the command ran, the command would have stopped with it, and
        # its file would not be there at the resume this read makes.
        assert sb.files.read_text("/work/done") == "ran\n"


def test_an_open_port_connection_keeps_it_from_pausing(server: Server, runtime: str) -> None:
    with Sandbox.create(runtime=runtime, timeout=600, idle_timeout=IDLE, on_idle="pause",
                        public_ports=[8080], **server.sdk()) as sb:
        sb.files.write("/work/slow.py", SLOW_APP)
        # Started in the background of a command that ends: no command runs from here on.
        sb.commands.run("setsid python3 /work/slow.py </dev/null >/dev/null 2>&1 &")
        with server.http() as anyone:
            deadline = time.monotonic() + DEADLINE
            while anyone.get(f"/v1/sandboxes/{sb.id}/ports/8080/").status_code != 200:
                assert time.monotonic() < deadline, "the app did not start listening"
                time.sleep(0.2)
            assert sb.commands.list() == []
            # Three idle timeouts with nothing relayed: a pause would cut the connection.
            slow = anyone.get(f"/v1/sandboxes/{sb.id}/ports/8080/slow")
            assert (slow.status_code, slow.text) == (200, "done")
        assert _listed(server, sb).state_reason is None  # never paused
        assert _until(server, sb, "paused").state_reason == f"paused: idle for {IDLE} s"


def test_on_timeout_pause_keeps_it_and_resumes_it_with_a_whole_lifetime(
        server: Server, runtime: str) -> None:
    with Sandbox.create(runtime=runtime, timeout=2, on_timeout="pause",
                        **server.sdk()) as sb:
        assert sb.info.on_timeout == "pause"
        sb.files.write("/work/kept.txt", "kept")
        paused = _until(server, sb, "paused")
        assert paused.state_reason == "paused: lifetime ran out (on_timeout=pause)"
        asked = time.time()
        assert sb.files.read_text("/work/kept.txt") == "kept"
        resumed = sb.refresh()
        assert resumed.state == "running" and resumed.state_reason == "resumed: by a file call"
        assert resumed.expires_at.timestamp() >= asked + 2


def test_a_sandbox_paused_past_its_ttl_is_killed_saying_why(server: Server,
                                                             runtime: str) -> None:
    with Sandbox.create(runtime=runtime, timeout=600, paused_ttl=1,
                        **server.sdk()) as sb:
        assert sb.pause().paused_at is not None
        stopped = _until(server, sb, "stopped")
        assert stopped.stop_reason == stopped.state_reason == \
            "paused for more than 1 s (paused_ttl)"


def test_list_get_and_the_cli_say_why(server: Server) -> None:
    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key,
                         "COLUMNS": "250"})
    label = f"why-{time.monotonic_ns()}"
    with Sandbox.create(timeout=600, metadata={"why": label}, **server.sdk()) as sb:
        assert sb.pause().state_reason == "paused: by the API"
        assert sb.refresh().state_reason == _listed(server, sb).state_reason == \
            "paused: by the API"
        table = cli.invoke(app, ["sandbox", "ls", "--meta", f"why={label}"])
        assert table.exit_code == 0, table.output
        header, row = _lines_naming(table.stdout, "reason", sb.id)
        assert "state" in header and "paused" in row and "paused: by the API" in row
    table = cli.invoke(app, ["sandbox", "list", "--meta", f"why={label}"])
    _, row = _lines_naming(table.stdout, "reason", sb.id)
    assert "stopped" in row and "killed by request" in row


def _lines_naming(text: str, *words: str) -> list[str]:
    """The first line with each word, in order."""
    lines = text.splitlines()
    return [next(line for line in lines if word in line) for word in words]


def test_the_servers_paused_ttl_bounds_a_create(server: Server) -> None:
    with server.http(server.key) as http:
        for body, message in (
                ({"paused_ttl": 0}, "paused_ttl 0 s is outside 1 s..31536000 s"),
                ({"paused_ttl": 31536001}, "is outside"),
                ({"paused_ttl": 2592001}, "more than this server allows (2592000 s"),
                ({"on_idle": "pause"}, "on_idle=pause needs idle_timeout"),
                ({"on_timeout": "later", "idle_timeout": 5}, "on_timeout")):
            refused = http.post("/v1/sandboxes", json=body)
            assert refused.status_code == 400, refused.text
            assert message in refused.json()["error"]["message"]
        made = http.post("/v1/sandboxes", json={"paused_ttl": 2592000})
        assert made.status_code == 201 and made.json()["paused_ttl"] == 2592000
        assert http.delete(f"/v1/sandboxes/{made.json()['id']}").status_code == 204
