"""Exposed ports under attack, through the real server of ``tests/server`` (its ``server``
fixture: tenants alpha and beta) and the app of ``tests/server/_port_app.py`` in real
sandboxes.

Each test makes an attack and checks that it failed, by the answer and by the app's own
record of what reached it (``/echo``, ``/ws-headers``, ``/seen``), and that the legitimate
way in still works. The attacks: a tunnel aimed at the host's loopback or the server's own
port; one sandbox's credentials, or another tenant's key, on a sandbox; credentials leaking
to the app; forged forwarding headers and ``Host``; cookies planted beyond a port; CR/LF
and other bytes in the path or query; brute force (against a server of the test's own with
a small failure budget, :mod:`tests.server._guarded`); many connections at once and a
client that never reads; stopped and malformed sandbox ids.

Every request to the shared server comes from a loopback address of this module's own
(:data:`ADDRESS`): wrong credentials count against the sender's address, so they spend no
other module's budget; and uvicorn trusts ``X-Forwarded-For`` from 127.0.0.1 only, so a
forged one sent from here is a forgery the proxy must not pass on.
"""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect_async
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from corral import Sandbox
from tests.server._guarded import Guarded, guarded_server
from tests.server.conftest import Server, assert_error, server, server_dir  # noqa: F401
from tests.server.test_ports import PORT, echo, start_app

#: The loopback address this module's requests to the shared server come from.
ADDRESS = "127.0.0.211"
TOKEN = "X-Corral-Port-Token"
#: Bounds every wait below; never asserted on.
DEADLINE = 60.0
#: Statuses a hostile request may get: refusals, and the app's answer or its absence.
CLEAN = {200, 303, 400, 401, 404, 502}


@pytest.fixture(scope="module")
def first(server: Server) -> Iterator[Sandbox]:  # noqa: F811 - the imported fixture
    """Tenant alpha's sandbox running the app on PORT: the one attacked."""
    with Sandbox.create("python", timeout=600, metadata={"role": "port-target"},
                        **server.sdk()) as sb:
        start_app(sb)
        yield sb


@pytest.fixture(scope="module")
def second(server: Server) -> Iterator[Sandbox]:  # noqa: F811
    """A sibling of the same tenant running the same app: the one reached for."""
    with Sandbox.create("python", timeout=600, metadata={"role": "port-sibling"},
                        **server.sdk()) as sb:
        start_app(sb)
        yield sb


@pytest.fixture(autouse=True)
def responses_match_spec(request: pytest.FixtureRequest) -> Iterator[None]:
    """As in tests/server: every answer the shared server gave stays on its OpenAPI spec."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").spec_check.fail_if_off_spec()


def client(headers: dict[str, str] | None = None, address: str = ADDRESS) -> httpx.Client:
    """From ``address``, no proxy from the environment, redirects not followed."""
    return httpx.Client(headers=headers or {}, timeout=60.0, trust_env=False,
                        transport=httpx.HTTPTransport(local_address=address))


def ws(url: str, headers: dict[str, str] | None = None) -> ClientConnection:
    return ws_connect(url, additional_headers=headers or {}, proxy=None, open_timeout=30,
                      close_timeout=10, source_address=(ADDRESS, 0))


def ws_url(sb: Sandbox, page: str) -> str:
    return sb.ports.url(PORT).replace("http://", "ws://") + page


def host_of(sb: Sandbox, port: int = PORT) -> str:
    """The host-based name of ``port`` of ``sb`` (with the server's port)."""
    return urlsplit(sb.ports.url(port, host_based=True)).netloc


def prefix_of(sb: Sandbox, port: int = PORT) -> str:
    return f"/v1/sandboxes/{sb.id}/ports/{port}"


def seen(sb: Sandbox) -> list[str]:
    """The request targets the sandbox's app received so far."""
    with client({TOKEN: sb.ports.token}) as http:
        answer = http.get(sb.ports.url(PORT) + "seen")
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def marker() -> str:
    """A path of the echo page no other request used."""
    return f"/echo/{uuid.uuid4().hex}"


def reached(sb: Sandbox, path: str) -> bool:
    return any(target.split("?")[0] == path for target in seen(sb))


@dataclass(frozen=True)
class Raw:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_get(server: Server, target: bytes, headers: dict[str, str]) -> Raw | None:  # noqa: F811
    """One GET with ``target`` sent byte for byte (httpx would normalize it); None if the
    server closed the connection without an answer."""
    port = int(server.url.rsplit(":", 1)[1])
    head = {"Host": f"127.0.0.1:{port}", **headers, "Connection": "close"}
    request = (b"GET " + target + b" HTTP/1.1\r\n"
               + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items()) + b"\r\n")
    data = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30,
                                  source_address=(ADDRESS, 0)) as sock:
        sock.sendall(request)
        while len(data) < 1 << 20:  # an error or an echo: far smaller
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        return None
    top, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return Raw(int(lines[0].split()[1]), found, body)


# -- 1. a tunnel reaches the sandbox's own loopback, never the host's ---------------------------

class HostListener:
    """A TCP server on the HOST's 127.0.0.1 (and ::1 where the host has it, the same port)
    answering every connection with a marker, and counting them."""

    def __init__(self) -> None:
        self.marker = f"host-listener-{uuid.uuid4().hex}".encode()
        self.accepted = 0
        self._stop = threading.Event()
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.1", 0))
        self.port = v4.getsockname()[1]
        self._socks = [v4]
        if socket.has_ipv6:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(("::1", self.port))
                self._socks.append(v6)
            except OSError:
                v6.close()  # no IPv6 loopback on this host: 127.0.0.1 alone
        for sock in self._socks:
            sock.listen(16)
        self._thread = threading.Thread(target=self._serve, name="host-listener",
                                        daemon=True)

    def _serve(self) -> None:
        answer = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                  % (len(self.marker), self.marker))
        deadline = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select(self._socks, [], [], 0.1)
            for sock in ready:
                conn, _ = sock.accept()
                self.accepted += 1
                with conn:
                    conn.settimeout(5)
                    try:
                        conn.sendall(answer)
                    except OSError:
                        pass  # the peer went: it was counted, which is what matters

    def __enter__(self) -> HostListener:
        self._thread.start()
        # It works: a connection from the host gets the marker (and is not counted after).
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as probe:
            got = bytearray()
            while self.marker not in got and len(got) < 4096:
                chunk = probe.recv(4096)
                if not chunk:
                    break
                got += chunk
        assert self.marker in got
        self.accepted = 0
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self._socks:
            sock.close()


NETWORKS = [
    pytest.param("none", id="none"),
    pytest.param({"allow": []}, id="networked",
                 marks=pytest.mark.skipif(shutil.which("nft") is None,
                                          reason="a networked sandbox needs nftables")),
]


@pytest.mark.parametrize("network", NETWORKS)
def test_a_port_is_the_sandboxs_own_never_the_hosts_or_the_servers(
        server: Server, runtime: str, network: Any) -> None:  # noqa: F811
    server_port = int(server.url.rsplit(":", 1)[1])
    with HostListener() as host, Sandbox.create("python", runtime=runtime, network=network,
                                                timeout=600, **server.sdk()) as sb:
        assert (sb.info.network == "none") == (network == "none")
        owner = {"Authorization": f"Bearer {server.key}"}
        for credential in ({TOKEN: sb.ports.token}, owner):
            with client(credential) as http:
                for port, path in ((host.port, "marker"), (server_port, "v1/sandboxes"),
                                   (server_port, "openapi.json")):
                    answer = http.get(sb.ports.url(port) + path)
                    assert_error(answer, 502, "port_unavailable")
                    assert host.marker not in answer.content
        with pytest.raises(InvalidStatus) as refused:
            with ws(sb.ports.url(host.port).replace("http://", "ws://") + "ws",
                    {TOKEN: sb.ports.token}):
                pass
        assert refused.value.response.status_code == 502
        assert host.accepted == 0, "a port request reached the host's loopback"
        # The same port number, served inside the sandbox: now the sandbox's app answers.
        start_app(sb, host.port)
        with client({TOKEN: sb.ports.token}) as http:
            seen_here = echo(http.get(sb.ports.url(host.port) + "echo/inside"))
            assert seen_here["path"] == "/echo/inside"
        assert host.accepted == 0, "a port request reached the host's loopback"


# -- 2. credentials are bound to one sandbox and port -------------------------------------------

def test_one_sandboxs_credentials_never_open_another(server: Server, first: Sandbox,  # noqa: F811
                                                     second: Sandbox) -> None:
    a, b = first, second
    path = marker()
    with client() as http:
        visit = http.get(a.ports.url(PORT) + "echo", params={"token": a.ports.token})
        assert visit.status_code == 303
        cookie = visit.cookies["corral_port"]
        http.cookies.clear()
        signed = urlsplit(a.ports.signed_url(PORT, expires_in=300, path=path)).query
        b_url = b.ports.url(PORT) + path[1:]
        a_other_port = a.ports.url(PORT + 1) + path[1:]  # nothing listens: 502 if let in
        attempts = {
            "a's token": http.get(b_url, headers={TOKEN: a.ports.token}),
            "a's ?token=": http.get(b_url, params={"token": a.ports.token}),
            "a's cookie": http.get(b_url, headers={"Cookie": f"corral_port={cookie}"}),
            "a's signed URL": http.get(f"{b_url}?{signed}"),
            "a's signed URL on a POST": http.post(f"{b_url}?{signed}"),
            "a's cookie, a's other port": http.get(a_other_port,
                                                   headers={"Cookie": f"corral_port={cookie}"}),
            "a's signed URL, a's other port": http.get(f"{a_other_port}?{signed}"),
            "a's token, b's host": http.get(f"{server.url}{path}",
                                            headers={"Host": host_of(b), TOKEN: a.ports.token}),
        }
        for name, answer in attempts.items():
            assert answer.status_code == 401, (name, answer.status_code, answer.text)
            assert_error(answer, 401, "unauthenticated")
        with pytest.raises(InvalidStatus) as refused:
            with ws(ws_url(b, "ws"), {TOKEN: a.ports.token}):
                pass
        assert refused.value.response.status_code == 401
        assert not reached(b, path) and not reached(a, path)
        # Each credential still opens its own sandbox's port.
        assert echo(http.get(a.ports.url(PORT) + path[1:],
                             headers={"Cookie": f"corral_port={cookie}"}))["path"] == path
        assert echo(http.post(f"{a.ports.url(PORT)}{path[1:]}?{signed}"))["path"] == path
        assert echo(http.get(b_url, headers={TOKEN: b.ports.token}))["path"] == path
    assert reached(b, path)


def test_another_tenants_key_opens_no_port_and_the_app_never_sees_it(
        server: Server, first: Sandbox) -> None:  # noqa: F811
    path = marker()
    url = first.ports.url(PORT) + path[1:]
    with client() as http:
        for headers in ({"Authorization": f"Bearer {server.other_key}"},
                        {"X-API-Key": server.other_key},
                        {"Authorization": f"Bearer {server.revoked_key}"}):
            assert_error(http.get(url, headers=headers), 401, "unauthenticated")
            assert_error(http.post(url, headers=headers, content=b"x"), 401, "unauthenticated")
        with pytest.raises(InvalidStatus) as refused:
            with ws(ws_url(first, "ws"), {"Authorization": f"Bearer {server.other_key}"}):
                pass
        assert refused.value.response.status_code == 401
        assert not reached(first, path)
        # The owner's key opens it.
        assert echo(http.get(url, headers={"Authorization": f"Bearer {server.key}"})
                    )["path"] == path
    assert reached(first, path)


# -- 3. what served as the credential never reaches the app -------------------------------------

def _without_credentials(seen_there: dict[str, Any], secrets: list[str], name: str) -> None:
    headers = {k for k, _ in seen_there["headers"]}
    assert not headers & {"x-corral-port-token", "authorization", "x-api-key"}, name
    cookies = [v for k, v in seen_there["headers"] if k == "cookie"]
    assert not any("corral_port" in c for c in cookies), name
    text = json.dumps(seen_there)
    for secret in secrets:
        assert secret not in text, name


def _credentials(server: Server, sb: Sandbox, page: str) -> tuple[str, str, list[str]]:  # noqa: F811
    """A cookie from a ``?token=`` visit, a signed URL's query for ``page``, and every
    secret that must stay away from the app."""
    with client() as http:
        visit = http.get(sb.ports.url(PORT) + "echo", params={"token": sb.ports.token})
        assert visit.status_code == 303
        cookie = visit.cookies["corral_port"]
    signed = urlsplit(sb.ports.signed_url(PORT, expires_in=300, path=page)).query
    signature = signed.split("corral_signature=")[1].split("&")[0]
    return cookie, signed, [sb.ports.token, cookie.split(".")[1], signature, server.key]


def test_credentials_never_reach_the_app_over_http(server: Server,  # noqa: F811
                                                   first: Sandbox) -> None:
    sb = first
    url = sb.ports.url(PORT)
    cookie, signed, secrets = _credentials(server, sb, "/echo/signed")
    with client() as http:
        cases = {
            "token header": http.get(url + "echo/h?keep=1", headers={TOKEN: sb.ports.token}),
            "token header, ?token= too": http.get(f"{url}echo/h?keep=1&token={sb.ports.token}",
                                                  headers={TOKEN: sb.ports.token}),
            "token header, cookie too": http.get(url + "echo/h?keep=1", headers={
                TOKEN: sb.ports.token, "Cookie": f"corral_port={cookie}"}),
            "cookie": http.get(url + "echo/c?keep=1",
                               headers={"Cookie": f"mine=1; corral_port={cookie}; also=2"}),
            "quoted cookie": http.get(url + "echo/c?keep=1",
                                      headers={"Cookie": f'corral_port="{cookie}"; mine=1'}),
            "?token= on a POST": http.post(f"{url}echo/q?keep=1&token={sb.ports.token}"),
            "signed URL on a POST": http.post(f"{url}echo/signed?{signed}&keep=1"),
            "signed URL on a POST, second": http.post(f"{url}echo/signed?keep=1&{signed}"),
            "owner's Bearer key": http.get(url + "echo/k?keep=1",
                                           headers={"Authorization": f"Bearer {server.key}"}),
            "owner's X-API-Key": http.get(url + "echo/x?keep=1",
                                          headers={"X-API-Key": server.key}),
        }
        visit = http.get(url + "echo/v", params={"keep": "1", "token": sb.ports.token})
        assert visit.status_code == 303 and sb.ports.token not in visit.headers["location"]
        cases["the page a ?token= visit leads to"] = http.get(
            server.url + visit.headers["location"])  # the client holds the visit's cookie
        for name, answer in cases.items():
            seen_there = echo(answer)
            assert seen_there["query"] == "keep=1", (name, seen_there["query"])
            _without_credentials(seen_there, secrets, name)
        cookies = [v for k, v in echo(cases["cookie"])["headers"] if k == "cookie"]
        assert cookies == ["mine=1; also=2"]  # the app's own cookies are its own


def test_corrals_credentials_never_reach_the_app_whatever_let_the_request_in(
        server: Server, first: Sandbox) -> None:  # noqa: F811
    sb = first
    url = sb.ports.url(PORT)
    signed = urlsplit(sb.ports.signed_url(PORT, expires_in=300, path="/echo/s")).query
    signature = signed.split("corral_signature=")[1]
    leaks = []
    with client({TOKEN: sb.ports.token}) as http:
        for name, answer in (
                ("Bearer key", http.get(url + "echo/k", headers={
                    "Authorization": f"Bearer {server.key}"})),
                ("X-API-Key", http.get(url + "echo/k", headers={"X-API-Key": server.key})),
                ("signed URL", http.get(f"{url}echo/s?{signed}"))):
            text = json.dumps(echo(answer))
            leaks += [name] if server.key in text or signature in text else []
    sb.ports.set_public([PORT])
    try:
        with client() as http:
            answer = http.get(url + "echo/p", headers={"Authorization": f"Bearer {server.key}"})
            leaks += ["public port"] if server.key in json.dumps(echo(answer)) else []
    finally:
        sb.ports.set_public([])
    assert not leaks, f"Corral credentials that reached the app: {leaks}"


def test_credentials_never_reach_the_app_over_websocket(server: Server,  # noqa: F811
                                                        first: Sandbox) -> None:
    sb = first
    base = ws_url(sb, "ws-headers")
    cookie, signed, secrets = _credentials(server, sb, "/ws-headers")
    cases = [
        ("token header", f"{base}?keep=1", {TOKEN: sb.ports.token}),
        ("?token=", f"{base}?keep=1&token={sb.ports.token}", {}),
        ("cookie", f"{base}?keep=1", {"Cookie": f"mine=1; corral_port={cookie}"}),
        ("signed URL", f"{base}?{signed}&keep=1", {}),
        ("owner's Bearer key", f"{base}?keep=1", {"Authorization": f"Bearer {server.key}"}),
        ("owner's X-API-Key", f"{base}?keep=1", {"X-API-Key": server.key}),
    ]
    for name, url, headers in cases:
        with ws(url, headers) as conn:
            conn.send("tell")
            seen_there = json.loads(conn.recv(timeout=30))
            assert seen_there["path"] == "/ws-headers", name
            assert seen_there["query"] == "keep=1", (name, seen_there["query"])
            _without_credentials(seen_there, secrets, name)
            conn.send("still relayed")
            assert conn.recv(timeout=30) == "still relayed"


def test_a_message_the_app_sends_first_is_relayed(first: Sandbox) -> None:
    with ws(ws_url(first, "ws-greet"), {TOKEN: first.ports.token}) as conn:
        conn.send("after the greeting")
        assert conn.recv(timeout=30) == "hello"  # the app sent it before echoing


# -- 4. forwarding headers and Host -------------------------------------------------------------

FORGED = [("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-Host", "evil.example"),
          ("X-Forwarded-Proto", "https"), ("X-Forwarded-Prefix", "/evil-prefix"),
          ("X-Forwarded-Port", "1"), ("x-forwarded-for", "198.51.100.8"),
          ("X-FORWARDED-HOST", "evil2.example")]


def _forwarded_as_the_proxy_says(seen_there: dict[str, Any], host: str,
                                 prefix: str | None) -> None:
    values: dict[str, list[str]] = {}
    for name, value in seen_there["headers"]:
        values.setdefault(name, []).append(value)
    assert values["x-forwarded-for"] == [ADDRESS]
    assert values["x-forwarded-proto"] == ["http"]
    assert values["x-forwarded-host"] == [host]
    assert values.get("x-forwarded-prefix") == ([prefix] if prefix else None)
    assert "x-forwarded-port" not in values
    text = json.dumps(seen_there)
    assert "198.51.100" not in text and "evil" not in text


def test_forged_forwarding_headers_are_replaced_by_the_proxys_own(
        server: Server, first: Sandbox) -> None:  # noqa: F811
    sb = first
    server_host = urlsplit(server.url).netloc
    with client() as http:
        path_based = http.get(sb.ports.url(PORT) + "echo",
                              headers=[(TOKEN, sb.ports.token), *FORGED])
        _forwarded_as_the_proxy_says(echo(path_based), server_host, prefix_of(sb))
        host_based = http.get(f"{server.url}/echo", headers=[
            ("Host", host_of(sb)), (TOKEN, sb.ports.token), *FORGED])
        _forwarded_as_the_proxy_says(echo(host_based), host_of(sb), None)
    headers: dict[str, str] = {TOKEN: sb.ports.token}
    headers.update(FORGED[:5])  # one of each: websockets' dict keeps the first spelling
    with ws(ws_url(sb, "ws-headers"), headers) as conn:
        conn.send("tell")
        _forwarded_as_the_proxy_says(json.loads(conn.recv(timeout=30)), server_host,
                                     prefix_of(sb))


def test_a_forged_rfc7239_forwarded_header_is_dropped_too(first: Sandbox) -> None:
    with client({TOKEN: first.ports.token}) as http:
        seen_there = echo(http.get(first.ports.url(PORT) + "echo", headers={
            "Forwarded": "for=198.51.100.7;host=evil.example;proto=https"}))
    assert "forwarded" not in seen_there["header"]


def test_a_host_naming_another_sandbox_needs_that_sandboxs_credential(
        server: Server, first: Sandbox, second: Sandbox) -> None:  # noqa: F811
    a, b = first, second
    path = marker()
    with client({TOKEN: a.ports.token}) as http:
        # The Host names the port, whatever the path says: b's, with a's token.
        for host in (host_of(b), host_of(b).upper(), f"{PORT}-{b.id}.localhost"):
            assert_error(http.get(a.ports.url(PORT) + path[1:], headers={"Host": host}),
                         401, "unauthenticated")
            assert_error(http.get(server.url + path, headers={"Host": host}),
                         401, "unauthenticated")
        # a's own host with b's path: a's app gets the path (and says it has no such page).
        misdirected = http.get(f"{server.url}/v1/sandboxes/{b.id}/ports/{PORT}{path}",
                               headers={"Host": host_of(a)})
        assert misdirected.status_code == 404 and misdirected.json() == {
            "error": "no such page"}
        assert not reached(b, path)
        assert echo(http.get(server.url + path, headers={"Host": host_of(a)}))["path"] == path
    with client({TOKEN: b.ports.token}) as http:
        assert echo(http.get(server.url + path, headers={"Host": host_of(b)}))["path"] == path
    assert reached(b, path)


# -- 5. the app's cookies stay with its port; path-based pages run in an opaque origin ---------

PLANTED = ["plain=1; Path=/", "bare=1", "wide=1; Domain=localhost; Path=/",
           "dotted=1; domain=.127.0.0.1", "spaced=1; Domain =localhost",
           "tight=1;Domain=localhost", "corral_port=forged; Path=/", "Corral_Port=forged",
           " corral_port=forged", "corral_other=1; Path=/", "up=1; Path=/../../../..",
           "twice=1; Path=/a; path=/", "empty=1; Path="]
KEPT = {"plain", "bare", "up", "twice", "empty"}


def _attributes(cookie: str) -> tuple[str, list[tuple[str, str]]]:
    name, *attributes = [p.strip() for p in cookie.split(";")]
    return name.partition("=")[0].strip(), [
        (a.partition("=")[0].strip().lower(), a.partition("=")[2].strip()) for a in attributes]


def test_the_app_cannot_plant_cookies_beyond_its_port(server: Server,  # noqa: F811
                                                      first: Sandbox) -> None:
    sb = first
    params = {"c": PLANTED}
    with client({TOKEN: sb.ports.token}) as http:
        path_based = http.get(sb.ports.url(PORT) + "set-cookies", params=params)
        host_based = http.get(f"{server.url}/set-cookies", params=params,
                              headers={"Host": host_of(sb)})
    for answer, prefix in ((path_based, prefix_of(sb)), (host_based, "")):
        assert answer.status_code == 200, answer.text
        cookies = [_attributes(c) for c in answer.headers.get_list("set-cookie")]
        assert {name for name, _ in cookies} == KEPT, cookies
        for name, attributes in cookies:
            assert "domain" not in {key for key, _ in attributes}, (name, attributes)
            paths = [value for key, value in attributes if key == "path"]
            if prefix:
                assert len(paths) == 1 and paths[0].startswith(prefix + "/"), (name, paths)
    path_of = {name: dict(attributes)["path"] for name, attributes in
               (_attributes(c) for c in path_based.headers.get_list("set-cookie"))}
    assert path_of["plain"] == path_of["bare"] == path_of["empty"] == prefix_of(sb) + "/"
    assert path_of["twice"] == prefix_of(sb) + "/a"
    # A path-based page is on the server's own origin: it runs sandboxed, in an opaque
    # origin (no allow-same-origin), whatever the app answered.
    policies = path_based.headers.get_list("content-security-policy")
    assert policies and all(p.startswith("sandbox ") for p in policies)
    assert not any("allow-same-origin" in p or "allow-top-navigation" in p for p in policies)
    with client({TOKEN: sb.ports.token}) as http:
        page = http.get(sb.ports.url(PORT) + "echo")
        assert page.headers.get_list("content-security-policy") == policies


# -- 6. CR/LF and other bytes in the path and query ---------------------------------------------

def test_crlf_in_the_path_or_query_injects_nothing(server: Server,  # noqa: F811
                                                   first: Sandbox) -> None:
    sb = first
    prefix = prefix_of(sb).encode()
    token = {TOKEN: sb.ports.token}
    attempts: list[tuple[bytes, dict[str, str]]] = [
        (prefix + b"/echo%0d%0aX-Injected:%20path", token),
        (prefix + b"/echo%0aX-Injected:%20lf", token),
        (prefix + b"/echo%0dX-Injected:%20cr", token),
        (prefix + b"/echo%20HTTP/1.1%0d%0aX-Injected:%20split%0d%0a%0d%0aGET%20/smuggled",
         token),
        (prefix + b"/echo/%00", token),
        (prefix + b"/echo?q=%0d%0aX-Injected:%20query", token),
        (prefix + b"/echo?q=%0d%0a%0d%0aGET%20/smuggled%20HTTP/1.1", token),
        (b"/echo%0d%0aX-Injected:%20host", {"Host": host_of(sb), **token}),
    ]
    for target, headers in attempts:
        answer = raw_get(server, target, headers)
        assert answer is not None, f"{target!r}: the connection closed without an answer"
        assert answer.status in CLEAN, (target, answer.status, answer.body[:300])
        assert not any("injected" in name for name in answer.headers), target
        if answer.status == 200:
            names = {name for name, _ in answer.json()["headers"]}
            assert not any("injected" in name for name in names), target
    for page in ("ws%0d%0aX-Injected:%20ws", "ws%0dX-Injected:%20ws",
                 "ws%0d%20HTTP/1.1%0dX-Injected:%20ws"):
        with pytest.raises(InvalidStatus) as refused:
            with ws(ws_url(sb, page), token):
                pass
        assert refused.value.response.status_code in (401, 403, 404, 502), page
    # No request line the app parsed held a line break or a space: nothing was split.
    targets = seen(sb)
    assert not any(c in t for t in targets for c in "\r\n "), targets[-20:]
    assert not any(t.startswith("/smuggled") for t in targets)
    with client(token) as http:  # the query reached the app as sent, still encoded
        assert echo(http.get(sb.ports.url(PORT) + "echo?q=%0d%0a"))["query"] == "q=%0d%0a"


def test_a_path_the_proxy_would_decode_gets_an_answer_never_a_500(
        server: Server, first: Sandbox) -> None:  # noqa: F811
    sb = first
    prefix = prefix_of(sb).encode()
    token = sb.ports.token.encode()
    attempts: list[tuple[bytes, dict[str, str]]] = [
        (prefix + b"/echo/%E2%82%AC", {TOKEN: sb.ports.token}),
        (prefix + b"/echo/%E2%82%AC?token=" + token, {}),
        (prefix + b"/echo%0dSet-Cookie:%20evil=1?token=" + token, {}),
        # No credential needed: a URL without the slash after the port is redirected first.
        (f"/v1/sandboxes/{sb.id}%E2%82%AC/ports/{PORT}".encode(), {}),
        (b"/v1/sandboxes/sbx-0000000000000000%00/ports/8000", {}),
        (b"/v1/sandboxes/sbx-0000000000000000%0d/ports/8000", {}),
        (b"/v1/sandboxes/x%0d%0aSet-Cookie:%20evil=1/ports/8000", {}),
        (b"/echo%0d%0aSet-Cookie:%20evil=1?token=" + token, {"Host": host_of(sb)}),
    ]
    problems = []
    for target, headers in attempts:
        answer = raw_get(server, target, headers)
        if answer is None:
            problems.append(f"{target!r}: the connection closed without an answer")
            continue
        # Never injected: no header of the answer holds a line break or the planted cookie
        # (a Location may carry the path, still percent-encoded).
        assert not any("evil" in v for v in answer.headers.get("set-cookie", [])), target
        assert not any(c in v for vs in answer.headers.values() for v in vs for c in "\r\n")
        if answer.status not in CLEAN:
            problems.append(f"{target!r}: {answer.status} {answer.body[:120]!r}")
    assert not problems, "\n".join(problems)


def test_the_app_gets_the_path_as_the_client_encoded_it(server: Server,  # noqa: F811
                                                         first: Sandbox) -> None:
    answer = raw_get(server, prefix_of(first).encode() + b"/echo/a%2Fb%3Fc=1%25",
                     {TOKEN: first.ports.token})
    assert answer is not None and answer.status == 200
    assert (answer.json()["path"], answer.json()["query"]) == ("/echo/a%2Fb%3Fc=1%25", "")


# -- 7. brute force ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(python_image: str) -> Iterator[Guarded]:
    """A server of this module's own with a failure budget of 10 per address."""
    with guarded_server(python_image) as served:
        yield served


def test_wrong_port_credentials_are_limited_per_address_a_right_one_still_works(
        guarded: Guarded) -> None:
    key = guarded.key()
    with Sandbox.create("python", timeout=600, url=guarded.url, api_key=key) as sb:
        start_app(sb)
        url = sb.ports.url(PORT)
        path = marker()
        address = guarded.address()
        burst = guarded.limits.auth_failure_burst
        with client(address=address) as http:
            started = time.monotonic()
            refused = 0
            while (answer := http.get(url + path[1:], headers={
                    TOKEN: uuid.uuid4().hex})).status_code == 401:
                refused += 1
                assert refused < 10 * burst, "wrong tokens were never limited"
            elapsed = time.monotonic() - started
            assert_error(answer, 429, "rate_limited")
            # The budget, and no more than its rate refilled meanwhile.
            assert burst <= refused <= burst + int(elapsed * guarded.limits.auth_failure_rate) + 1
            # Every kind of wrong credential is refused now, before any check.
            signed = urlsplit(sb.ports.signed_url(PORT, expires_in=300, path=path)).query
            forged = signed[:-3] + ("AAA" if not signed.endswith("AAA") else "BBB")
            beta = guarded.key("beta")
            for wrong in (http.get(url + path[1:], params={"token": "x" * 43}),
                          http.get(url + path[1:], headers={TOKEN: "x"}),
                          http.get(url + path[1:], headers={"Authorization": f"Bearer {beta}"}),
                          http.get(f"{url}{path[1:]}?{forged}")):
                assert_error(wrong, 429, "rate_limited")
            # A right credential is never refused, from the same address.
            assert echo(http.get(url + path[1:], headers={TOKEN: sb.ports.token}))
            assert echo(http.get(url + path[1:], headers={"Authorization": f"Bearer {key}"}))
            assert http.get(f"{url}{path[1:]}?{signed}").status_code == 303
        # Another address has its own budget.
        with client(address=guarded.address()) as other:
            assert_error(other.get(url + path[1:], headers={TOKEN: "x"}), 401,
                         "unauthenticated")
        assert [t for t in seen_on(guarded, sb) if t.startswith(path)] == [path] * 2


def seen_on(guarded: Guarded, sb: Sandbox) -> list[str]:
    with client({TOKEN: sb.ports.token}, address=guarded.address()) as http:
        return list(http.get(sb.ports.url(PORT) + "seen").json())


# -- 8. many connections, and a client that never reads ------------------------------------------

#: WebSockets held open at once (the agent allows 256 connections per sandbox).
SOCKETS = 40


def test_many_websockets_at_once_leave_the_server_and_a_neighbour_responsive(
        server: Server, first: Sandbox, second: Sandbox) -> None:  # noqa: F811
    async def attack() -> list[int | None]:
        opened = []
        try:
            for _ in range(SOCKETS):
                opened.append(await ws_connect_async(
                    ws_url(first, "ws"), additional_headers={TOKEN: first.ports.token},
                    proxy=None, open_timeout=30, local_addr=(ADDRESS, 0)))
            for i, conn in enumerate(opened):
                await conn.send(f"message {i}")
            for i, conn in enumerate(opened):
                assert await asyncio.wait_for(conn.recv(), 30) == f"message {i}"
            # All open: the neighbour, the attacked sandbox and the API still answer.
            transport = httpx.AsyncHTTPTransport(local_address=ADDRESS)
            async with httpx.AsyncClient(timeout=30, trust_env=False,
                                         transport=transport) as http:
                neighbour = await http.get(second.ports.url(PORT) + "echo/neighbour",
                                           headers={TOKEN: second.ports.token})
                assert echo(neighbour)["path"] == "/echo/neighbour"
                same = await http.get(first.ports.url(PORT) + "echo/same",
                                      headers={TOKEN: first.ports.token})
                assert echo(same)["path"] == "/echo/same"
                api = await http.get(f"{server.url}/v1/sandboxes/{second.id}",
                                     headers={"Authorization": f"Bearer {server.key}"})
                assert api.status_code == 200
        finally:
            await asyncio.gather(*(conn.close() for conn in opened), return_exceptions=True)
        return [conn.close_code for conn in opened]

    codes = asyncio.run(asyncio.wait_for(attack(), DEADLINE))
    assert codes == [1000] * SOCKETS
    # Closed for good: as many again open and answer.
    with ws(ws_url(first, "ws"), {TOKEN: first.ports.token}) as conn:
        conn.send("after")
        assert conn.recv(timeout=30) == "after"


def test_a_client_that_never_reads_stalls_only_its_own_response(
        server: Server, first: Sandbox) -> None:  # noqa: F811
    sb = first
    port = int(server.url.rsplit(":", 1)[1])
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.bind((ADDRESS, 0))
    stalled.settimeout(30)
    try:
        stalled.connect(("127.0.0.1", port))
        big = 64 << 20
        stalled.sendall(f"GET {prefix_of(sb)}/bytes?n={big} HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{port}\r\n{TOKEN}: {sb.ports.token}\r\n\r\n".encode())
        # The response begins (and then waits for a reader that never comes).
        assert stalled.recv(12).startswith(b"HTTP/1.1 200")
        with client({TOKEN: sb.ports.token}) as http:
            for i in range(5):
                assert echo(http.get(sb.ports.url(PORT) + f"echo/{i}"))["path"] == f"/echo/{i}"
            download = http.get(sb.ports.url(PORT) + "bytes", params={"n": 1 << 20})
            assert download.status_code == 200 and len(download.content) == 1 << 20
    finally:
        stalled.close()
    with client({TOKEN: sb.ports.token}) as http:
        assert echo(http.get(sb.ports.url(PORT) + "echo/after"))["path"] == "/echo/after"


# -- 9. stopped and malformed sandboxes ----------------------------------------------------------

def test_a_stopped_sandbox_has_no_ports(server: Server) -> None:  # noqa: F811
    sb = Sandbox.create("python", timeout=600, **server.sdk())
    try:
        start_app(sb)
    finally:
        sb.kill()
    with client({TOKEN: sb.ports.token}) as http:
        assert_error(http.get(sb.ports.url(PORT) + "echo"), 404, "not_found")
        answer = http.get(f"{server.url}/echo", headers={"Host": host_of(sb)})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    with pytest.raises(InvalidStatus) as refused:
        with ws(ws_url(sb, "ws"), {TOKEN: sb.ports.token}):
            pass
    assert refused.value.response.status_code == 404


def test_malformed_sandbox_ids_and_hosts_get_a_clean_4xx(server: Server,  # noqa: F811
                                                         first: Sandbox) -> None:
    token = {TOKEN: first.ports.token}
    # (NUL, CR, LF and characters beyond latin-1: test_a_path_the_proxy_would_decode_...)
    ids = [b"..", b".", b"%2e%2e", b"..%2f..", b"sbx-" + b"0" * 5000, b"sbx-zz", b"sbx-%C3%A9",
           b"sbx-" + first.id[4:].upper().encode(), b"", b"%20"]
    for sandbox_id in ids:
        for tail in (b"/ports/8000/echo", b"/ports/8000", b"/ports/99999/", b"/ports/0/"):
            target = b"/v1/sandboxes/" + sandbox_id + tail
            answer = raw_get(server, target, token)
            assert answer is not None, sandbox_id[:40]
            if answer.status == 303:  # no slash after the port: first sent to add one
                location = answer.headers["location"][0]
                assert location.startswith("/v1/sandboxes/"), location
                assert location.endswith(tail.decode() + "/"), location
                continue
            assert answer.status in (400, 401, 404), (sandbox_id[:40], tail, answer.status)
            assert set(answer.json()) == {"error"}, answer.body[:200]
    hosts = [f"0-{first.id}.localhost", f"99999-{first.id}.localhost",
             f"{PORT}-sbx-0000000000000000.localhost", f"{PORT}-{first.id}.localhost:99999999",
             f"{PORT}-{first.id}x.localhost", f"{'9' * 300}-{first.id}.localhost",
             f"{PORT}-{first.id}.localhost.", f"{PORT}-{first.id}.localhost@evil.example"]
    with client() as http:
        for host in hosts:
            refused = http.get(f"{server.url}/echo", headers={"Host": host, **token})
            assert refused.status_code in (400, 401, 404), (host, refused.status_code)
            assert set(refused.json()) == {"error"}, refused.text
        # The real one still answers.
        assert echo(http.get(f"{server.url}/echo", headers={"Host": host_of(first), **token}))



def test_one_client_cannot_desync_another_through_a_kept_alive_app_connection(
        first: Sandbox) -> None:
    """The app answers a POST to /echo without reading its body. A body that is itself a
    request would be read by the app as the next request on that connection; reused for
    another client, that client would get the smuggled request's answer. The server
    reuses a kept-alive app connection for the same client connection only."""
    sb = first
    smuggled = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with client({TOKEN: sb.ports.token}) as attacker:
        attacker.post(sb.ports.url(PORT) + "echo", content=smuggled)
        for attempt in range(5):
            with client({TOKEN: sb.ports.token}) as victim:  # a new connection each time
                got = victim.get(sb.ports.url(PORT) + f"echo/victim{attempt}")
                assert got.json()["path"] == f"/echo/victim{attempt}", got.text
