"""Exposed ports through a real server: an app inside a real sandbox, reached over HTTP,
SSE and WebSocket, path- and host-based, with each kind of credential and without.

The app is tests/server/_port_app.py. Every request goes to the test server on loopback;
the server reaches the app through the sandbox's agent, never a network.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from corral import Sandbox
from corral.api.errors import InvalidArgumentError

from .conftest import Server

APP = Path(__file__).with_name("_port_app.py").read_text()
PORT = 8000
#: Bounds on waiting for the app to listen: tries, and seconds between them.
LISTEN_TRIES, LISTEN_PAUSE = 200, 0.05


def start_app(sb: Sandbox, port: int = PORT) -> None:
    sb.files.write("/tmp/app.py", APP)
    sb.commands.run_background(["python3", "/tmp/app.py", str(port)])
    with httpx.Client(headers={"X-Corral-Port-Token": sb.ports.token}, timeout=30) as http:
        for _ in range(LISTEN_TRIES):
            if http.get(sb.ports.url(port) + "echo").status_code == 200:
                return
            time.sleep(LISTEN_PAUSE)
    pytest.fail(f"the app did not listen on port {port}")


@pytest.fixture(scope="module")
def app_sandbox(server: Server) -> Iterator[Sandbox]:
    with Sandbox.create("python", **server.sdk()) as sb:
        start_app(sb)
        yield sb


def echo(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    seen: dict[str, Any] = answer.json()
    seen["header"] = dict(seen["headers"])
    return seen


def test_a_private_port_needs_a_credential(server: Server, app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    url = sb.ports.url(PORT) + "echo"
    with httpx.Client(timeout=30) as http:
        refused = http.get(url)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        assert "X-Corral-Port-Token" in refused.json()["error"]["message"]
        assert http.get(url, headers={"X-Corral-Port-Token": "x" * 43}).status_code == 401
        assert http.get(url, headers={"Authorization": f"Bearer {server.other_key}"}
                        ).status_code == 401  # another tenant's key
        seen = echo(http.get(url, headers={"X-Corral-Port-Token": sb.ports.token,
                                           "Authorization": "Bearer the-apps-own"}))
        assert "x-corral-port-token" not in seen["header"]
        assert seen["header"]["authorization"] == "Bearer the-apps-own"  # not ours: kept
        assert seen["path"] == "/echo"
        assert seen["header"]["x-forwarded-prefix"] == f"/v1/sandboxes/{sb.id}/ports/{PORT}"
        # The owner's key opens it too, and never reaches the app; in the e2b form too.
        seen = echo(http.get(url, headers={"Authorization": f"Bearer {server.key}"}))
        assert "authorization" not in seen["header"]
        e2b = server.keys.create("alpha", e2b=True)
        seen = echo(http.get(url, headers={"Authorization": f"Bearer {e2b.key}"}))
        assert "authorization" not in seen["header"]
        server.keys.revoke(e2b.id)


def test_a_token_visit_leaves_a_cookie_that_stands_for_it(app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    base = sb.ports.url(PORT)
    with httpx.Client(timeout=30) as http:
        visit = http.get(base + "echo/a", params={"token": sb.ports.token, "q": "1"})
        assert visit.status_code == 303
        assert visit.headers["location"] == f"/v1/sandboxes/{sb.id}/ports/{PORT}/echo/a?q=1"
        cookie = visit.headers["set-cookie"]
        assert sb.ports.token not in cookie  # the cookie holds a signature, not the token
        assert f"Path=/v1/sandboxes/{sb.id}/ports/{PORT}/" in cookie
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        held = visit.cookies["corral_port"]
        seen = echo(http.get(base + "echo/a?q=1",
                             headers={"Cookie": f"mine=2; corral_port={held}"}))
        assert seen["query"] == "q=1"
        assert seen["header"]["cookie"] == "mine=2"  # the app's own cookie only
        # The cookie opens this port only.
        assert http.get(sb.ports.url(PORT + 1) + "echo",
                        headers={"Cookie": f"corral_port={held}"}).status_code == 401
    with httpx.Client(timeout=30) as fresh:  # no cookie: the wrong token is all there is
        assert fresh.get(base + "echo", params={"token": "wrong"}).status_code == 401


def test_a_signed_url_works_until_it_expires(app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    url = sb.ports.signed_url(PORT, expires_in=2, path="/echo/signed")
    assert url.startswith(sb.ports.url(PORT) + "echo/signed?corral_expires=")
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        assert http.get(url).status_code == 303  # a GET gets a cookie for its page
        seen = echo(http.post(url))  # anything else goes through as is
        assert seen["query"] == ""
        tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
        assert http.get(tampered).status_code == 401
        other_port = url.replace(f"/ports/{PORT}/", f"/ports/{PORT + 1}/")
        assert http.get(other_port).status_code == 401
        expires = int(url.split("corral_expires=")[1].split("&")[0])
        time.sleep(max(0.0, expires - time.time()) + 1.1)
        expired = http.get(url)
        assert expired.status_code == 401
        assert "expired" in expired.json()["error"]["message"]
    with pytest.raises(InvalidArgumentError):
        sb.ports.signed_url(PORT, expires_in=0)
    with pytest.raises(InvalidArgumentError):
        sb.ports.signed_url(PORT, expires_in=2 * 86400)


def test_a_public_port_needs_nothing_and_can_be_closed_again(app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    url = sb.ports.url(PORT) + "echo"
    with httpx.Client(timeout=30) as http:
        assert sb.ports.set_public([PORT]).public == [PORT]
        try:
            assert sb.ports.public == [PORT]
            echo(http.get(url))
        finally:
            sb.ports.set_public([])
        assert http.get(url).status_code == 401
    with pytest.raises(InvalidArgumentError):
        sb.ports.set_public([0])


def test_host_based_urls_give_each_port_an_origin(app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    url = sb.ports.url(PORT, host_based=True)
    host = url.split("//")[1].rstrip("/")
    assert host.startswith(f"{PORT}-{sb.id}.localhost:")
    # *.localhost is loopback to a browser; here the request goes to 127.0.0.1 by hand.
    server_address = sb.ports.url(PORT).split("/v1/")[0]
    with httpx.Client(base_url=server_address, timeout=30) as http:
        refused = http.get("/echo", headers={"Host": host})
        assert refused.status_code == 401
        seen = echo(http.get("/echo/x?y=1", headers={"Host": host,
                                                      "X-Corral-Port-Token": sb.ports.token}))
        assert seen["path"] == "/echo/x" and seen["query"] == "y=1"
        assert seen["header"]["host"] == host
        assert "x-forwarded-prefix" not in seen["header"]
        visit = http.get("/echo", params={"token": sb.ports.token}, headers={"Host": host})
        assert visit.status_code == 303 and "Path=/;" in visit.headers["set-cookie"]
        # The API is not served on a port's host, whatever the path: the app answers
        # (the client holds the visit's cookie now).
        answer = http.get("/v1/sandboxes", headers={"Host": host})
        assert answer.status_code == 404 and answer.json() == {"error": "no such page"}


def test_the_apps_cookies_stay_with_its_port(app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    with httpx.Client(headers={"X-Corral-Port-Token": sb.ports.token}, timeout=30) as http:
        answer = http.get(sb.ports.url(PORT) + "cookies")
        assert answer.headers.get_list("set-cookie") == [
            f"plain=1; HttpOnly; Path=/v1/sandboxes/{sb.id}/ports/{PORT}/inner"]
        # A page on the server's own origin runs sandboxed.
        assert answer.headers["content-security-policy"].startswith("sandbox ")


def test_bodies_stream_both_ways(app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    body = bytes(range(256)) * (8 * 4096)  # 8 MiB
    with httpx.Client(headers={"X-Corral-Port-Token": sb.ports.token}, timeout=60) as http:
        got = http.post(sb.ports.url(PORT) + "upload", content=body).json()
        assert got == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 100_000):
                yield body[start:start + 100_000]
        got = http.post(sb.ports.url(PORT) + "upload", content=chunks(),
                        headers={"Content-Length": str(len(body))}).json()
        assert got["sha256"] == hashlib.sha256(body).hexdigest()
        download = http.get(sb.ports.url(PORT) + "bytes", params={"n": len(body)})
        assert download.headers["content-length"] == str(len(body))
        assert download.content == body


def test_server_sent_events_arrive_as_they_are_sent(app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    sb.files.remove("/tmp/go") if sb.files.exists("/tmp/go") else None
    with httpx.Client(headers={"X-Corral-Port-Token": sb.ports.token}, timeout=60) as http:
        with http.stream("GET", sb.ports.url(PORT) + "events") as events:
            assert events.headers["content-type"] == "text/event-stream"
            lines = events.iter_lines()
            assert next(line for line in lines if line) == "data: first"
            # The second event waits for this file: the first one came while it waited.
            sb.files.write("/tmp/go", b"")
            assert next(line for line in lines if line) == "data: second"


def test_websockets_are_relayed(app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    url = sb.ports.url(PORT).replace("http://", "ws://") + "ws"
    with ws_connect(url, additional_headers={"X-Corral-Port-Token": sb.ports.token},
                    max_size=4 * 1024 * 1024) as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
        big = bytes(range(256)) * 4096  # 1 MiB
        ws.send(big)
        assert ws.recv() == big
    with pytest.raises(InvalidStatus) as refused:
        with ws_connect(url):
            pass
    assert refused.value.response.status_code == 401
    # A browser cannot set headers on a WebSocket: ?token= works for it.
    with ws_connect(url + f"?token={sb.ports.token}") as ws:
        ws.send("query")
        assert ws.recv() == "query"


def test_a_closed_port_and_a_bad_one_answer_at_once(server: Server,
                                                    app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    headers = {"X-Corral-Port-Token": sb.ports.token}
    with httpx.Client(headers=headers, timeout=30) as http:
        closed = http.get(sb.ports.url(9) + "x")
        assert closed.status_code == 502
        assert closed.json()["error"]["code"] == "port_unavailable"
        assert "port 9" in closed.json()["error"]["message"]
        for bad in ("0", "65536", "999999"):
            answer = http.get(f"{server.url}/v1/sandboxes/{sb.id}/ports/{bad}/")
            assert answer.status_code == 400, bad
            assert "between 1 and 65535" in answer.json()["error"]["message"]
        missing = http.get(f"{server.url}/v1/sandboxes/sbx-0000000000000000/ports/80/")
        assert missing.status_code == 404
        bare = http.get(f"{server.url}/v1/sandboxes/{sb.id}/ports/{PORT}?a=1")
        assert bare.status_code == 303
        assert bare.headers["location"] == f"/v1/sandboxes/{sb.id}/ports/{PORT}/?a=1"


def test_port_traffic_keeps_an_idle_sandbox_alive(server: Server) -> None:
    with Sandbox.create("python", idle_timeout=2, **server.sdk()) as sb:
        # Detached (setsid), so no command of the sandbox runs: a running command counts as
        # activity too, and port traffic must be all that keeps it alive here.
        sb.files.write("/tmp/app.py", APP)
        sb.commands.run(["sh", "-c", f"setsid python3 /tmp/app.py {PORT} "
                         "</dev/null >/dev/null 2>&1 &"])
        assert sb.commands.list() == []
        with httpx.Client(headers={"X-Corral-Port-Token": sb.ports.token}, timeout=30) as http:
            for _ in range(LISTEN_TRIES):  # until the app listens (502 before)
                if http.get(sb.ports.url(PORT) + "echo").status_code == 200:
                    break
                time.sleep(LISTEN_PAUSE)
            deadline = time.monotonic() + 5  # 2.5 idle timeouts, bounded
            while time.monotonic() < deadline:
                echo(http.get(sb.ports.url(PORT) + "echo"))
                time.sleep(0.3)
        assert sb.refresh().state == "running"
    with httpx.Client(timeout=30) as http:  # once stopped, its ports are gone
        answer = http.get(sb.ports.url(PORT) + "echo",
                          headers={"X-Corral-Port-Token": sb.ports.token})
        assert answer.status_code == 404


def test_ports_are_described_and_refused_by_name(server: Server) -> None:
    with Sandbox.create("python", public_ports=[3000, 3000, 8080], **server.sdk()) as sb:
        assert sb.ports.public == [3000, 8080]
        assert len(sb.ports.token) >= 43
        with server.http(server.key) as http:
            info = http.get(f"/v1/sandboxes/{sb.id}/ports").json()
            assert info == {"token": sb.ports.token, "public": [3000, 8080],
                            "domain": "localhost"}
            for body in ({"public": [70000]}, {"public": ["80"]}, {"public": [1] * 65},
                         {"public": [80], "extra": 1}):
                answer = http.put(f"/v1/sandboxes/{sb.id}/ports", json=body)
                assert answer.status_code == 400, json.dumps(body)
            for body in ({"port": 0}, {"port": 80, "expires_in": -1},
                         {"port": 80, "path": "no-slash"}, {"port": 80, "path": "/a b"}):
                answer = http.post(f"/v1/sandboxes/{sb.id}/signed-urls", json=body)
                assert answer.status_code == 400, json.dumps(body)
        with server.http(server.other_key) as other:
            assert other.get(f"/v1/sandboxes/{sb.id}/ports").status_code == 404
            assert other.post(f"/v1/sandboxes/{sb.id}/signed-urls",
                              json={"port": 80}).status_code == 404


def test_each_runtime_exposes_ports_even_without_a_network(server: Server,
                                                          runtime: str) -> None:
    """network="none" (the default) leaves the sandbox loopback only; its ports are still
    reached, through its agent."""
    with Sandbox.create("python", runtime=runtime, **server.sdk()) as sb:
        assert sb.info.network == "none"
        start_app(sb)
        with httpx.Client(headers={"X-Corral-Port-Token": sb.ports.token}, timeout=30) as http:
            assert echo(http.get(sb.ports.url(PORT) + "echo"))["path"] == "/echo"
        url = sb.ports.url(PORT).replace("http://", "ws://") + "ws"
        with ws_connect(url, additional_headers={"X-Corral-Port-Token": sb.ports.token}) as ws:
            ws.send(b"\x00\x01")
            assert ws.recv() == b"\x00\x01"


def _established(sb: Sandbox, port: int) -> int:
    """Connections to ``port`` established inside the sandbox (from /proc/net/tcp{,6})."""
    out = sb.commands.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null").stdout
    suffix = f":{port:04X}"
    return sum(1 for line in out.splitlines()[1:]
               if len(line.split()) > 3 and line.split()[1].endswith(suffix)
               and line.split()[3] == "01")


def test_a_client_that_leaves_a_stream_closes_the_apps_connection(
        app_sandbox: Sandbox) -> None:
    sb = app_sandbox
    start_app(sb, PORT + 2)
    sb.files.remove("/tmp/go") if sb.files.exists("/tmp/go") else None
    before = _established(sb, PORT + 2)  # the server may keep the probes' one alive
    with httpx.Client(headers={"X-Corral-Port-Token": sb.ports.token}, timeout=60) as http:
        with http.stream("GET", sb.ports.url(PORT + 2) + "events") as events:
            lines = events.iter_lines()  # kept: dropping it would close the stream
            assert next(line for line in lines if line) == "data: first"
            assert _established(sb, PORT + 2) == before + 1
    for _ in range(100):  # bounded: 10 s
        if _established(sb, PORT + 2) == before:
            break
        time.sleep(0.1)
    assert _established(sb, PORT + 2) == before
