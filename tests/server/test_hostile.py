"""Hostile clients: floods, slowloris, deep and malformed JSON, path tricks, absurd limits,
forged and replayed keys. Each gets a clear answer in the one error shape (checked against
the OpenAPI document), and the server stays up with its state intact.

Runs against a server of the tests' own, served as ``corral serve`` serves it, with
tight limits (:mod:`tests.server._guarded`). No assert is about how fast anything was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from corral import InvalidArgumentError, NotFoundError, Sandbox, Snapshot, Volume

from ._guarded import LIMITS, Guarded, guarded_server
from .conftest import assert_error

DEADLINE = 30.0  # bounds every wait below; never asserted on
FLOOD = 2000
IN_FLIGHT = 200


@pytest.fixture(scope="module")
def guarded(python_image: str) -> Iterator[Guarded]:
    with guarded_server(python_image) as server:
        yield server


@pytest.fixture(scope="module")
def victim(guarded: Guarded) -> Iterator[tuple[Sandbox, str]]:
    """A sandbox of tenant alpha's and its key, which every attack must leave unharmed."""
    key = guarded.key()
    with Sandbox.create("python", timeout=600, metadata={"role": "victim"},
                        url=guarded.url, api_key=key) as sb:
        sb.files.write("/work/state.txt", b"intact")
        yield sb, key


def _shape(response: httpx.Response) -> str:
    """The error code of a response in the one shape (fails otherwise)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


def _assert_intact(guarded: Guarded, victim: tuple[Sandbox, str]) -> None:
    sb, key = victim
    listed = Sandbox.list(metadata={"role": "victim"}, url=guarded.url, api_key=key)
    assert [s.id for s in listed] == [sb.id] and listed[0].state == "running"
    assert sb.files.read("/work/state.txt") == b"intact"
    assert sb.commands.run("echo alive").stdout == "alive\n"


@pytest.fixture(scope="module")
def flooded(python_image: str) -> Iterator[tuple[Guarded, tuple[Sandbox, str]]]:
    """A server of its own for the flood: the same limits, but connection timeouts that a
    client starved of CPU by 2000 requests in one process still meets (the flood is about
    rate limits and caps; the timeouts have their own tests)."""
    limits = dataclasses.replace(LIMITS, header_timeout=60, keep_alive=60)
    with guarded_server(python_image, limits) as server:
        key = server.key()
        with Sandbox.create("python", timeout=600, metadata={"role": "victim"},
                            url=server.url, api_key=key) as sb:
            sb.files.write("/work/state.txt", b"intact")
            yield server, (sb, key)


def test_a_flood_gets_answers_or_clear_refusals_and_the_server_survives(
        flooded: tuple[Guarded, tuple[Sandbox, str]]) -> None:
    guarded, victim = flooded
    sb, _ = victim
    keys = [guarded.key() for _ in range(3)]
    beta = guarded.key("beta")
    rng = random.Random(7)

    def request() -> tuple[str, str, dict[str, object], set[int]]:
        """A request picked at random, and the statuses it may get besides 429/503."""
        key = rng.choice(keys)
        auth = {"Authorization": f"Bearer {key}"}
        kind = rng.randrange(8)
        if kind == 0:
            return "GET", f"/v1/sandboxes/{sb.id}", {"headers": {
                "Authorization": f"Bearer {beta}"}}, {404}
        if kind == 1:
            return "GET", "/v1/sandboxes", {"headers": {"Authorization": "Bearer crl_x"}}, {401}
        if kind == 2:
            return "POST", "/v1/sandboxes", {"headers": {**auth, "Content-Type":
                                                         "application/json"},
                                             "content": b"{" * 5000}, {400}
        if kind == 3:
            return "POST", "/v1/sandboxes", {"headers": {**auth, "Content-Type":
                                                         "application/json"},
                                             "content": b'{"image": '}, {400}
        if kind == 4:
            return "GET", "/v1/sandboxes/sbx-0000000000000000", {"headers": auth}, {404}
        if kind == 5:
            return "GET", "/v1/nothing/../../etc/passwd", {"headers": auth}, {404}
        return "GET", "/v1/sandboxes", {"headers": auth, "params": {"state": "running"}}, {200}

    plan = [request() for _ in range(FLOOD)]
    seen: Counter[tuple[int, str]] = Counter()
    problems: list[str] = []

    async def flood() -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)
        limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
        transport = httpx.AsyncHTTPTransport(local_address=guarded.address(), limits=limits)
        async with httpx.AsyncClient(base_url=guarded.url, transport=transport,
                                     timeout=DEADLINE) as client:
            async def one(method: str, path: str, kwargs: dict[str, object],
                          allowed: set[int]) -> None:
                async with gate:
                    response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
                code = "" if response.status_code < 400 else _shape(response)
                seen[response.status_code, code] += 1
                if response.status_code not in allowed | {429, 503}:
                    problems.append(f"{method} {path} -> {response.status_code} "
                                    f"{response.text[:200]}")
                if response.status_code == 429:
                    assert code == "rate_limited" and int(response.headers["retry-after"]) >= 1
                if response.status_code == 503:
                    assert code == "unavailable" and int(response.headers["retry-after"]) >= 1

            await asyncio.wait_for(asyncio.gather(*(one(*p) for p in plan)), 300)

    asyncio.run(flood())
    assert not problems, "\n".join(problems[:20])
    assert sum(seen.values()) == FLOOD
    assert seen[429, "rate_limited"] > 0, seen  # the flood did hit the limits
    assert seen[200, ""] > 0, seen  # and some of it was served
    _assert_intact(guarded, victim)


def _slow(sock: socket.socket, data: bytes, pause: float) -> tuple[bool, bytes]:
    """Send ``data`` a byte at a time until the server answers or closes the connection:
    whether all of it went, and what the server sent."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return False, b""
        sock.settimeout(pause)
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return False, b""
        return False, answer
    return True, b""


def _closed(sock: socket.socket, wait: float) -> bool:
    """Whether the server closes the connection within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slowloris_headers_neither_block_others_nor_hold_on(
        guarded: Guarded, victim: tuple[Sandbox, str]) -> None:
    _, key = victim
    address = guarded.address()
    request = (b"GET /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               + key.encode() + b"\r\nX-Padding: " + b"a" * 4000 + b"\r\n\r\n")
    silent = [guarded.connect(address) for _ in range(50)]  # connect, say nothing
    slow = guarded.connect(address)
    try:
        slow.sendall(request[:5])
        # While they dawdle, another client is served.
        with guarded.http(key) as http:
            assert http.get("/v1/sandboxes").status_code == 200
        completed, answer = _slow(slow, request[5:], 0.05)  # slower than the header deadline
        assert not completed and answer == b"", "the server waited for the slow request"
        for sock in silent:
            assert _closed(sock, DEADLINE), "a connection that sent nothing was kept"
    finally:
        for sock in [slow, *silent]:
            sock.close()
    with guarded.http(key) as http:
        assert http.get("/v1/sandboxes").status_code == 200


def _response(sock: socket.socket, data: bytes = b"") -> tuple[int, bytes]:
    """Read one response: its status and body."""
    sock.settimeout(DEADLINE)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ")[1]), body


def test_a_json_body_trickled_in_is_cut_off(guarded: Guarded, victim: tuple[Sandbox, str]
                                            ) -> None:
    _, key = victim
    body = json.dumps({"image": "python", "metadata": {"x": "y" * 2000}}).encode()
    sock = guarded.connect()
    try:
        sock.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + key.encode() + b"\r\nContent-Type: application/json\r\n"
                     + b"Content-Length: %d\r\n\r\n" % len(body))
        completed, first = _slow(sock, body, 0.05)  # stops once the server answers
        assert not completed, "the server waited for the whole trickled body"
        status, answer = _response(sock, first)
        assert _closed(sock, DEADLINE), "the connection was kept after the cut-off"
    finally:
        sock.close()
    assert status == 400
    error = json.loads(answer)["error"]
    assert error["code"] == "invalid_argument" and "did not arrive" in error["message"]


def test_an_upload_that_stalls_is_cut_off(guarded: Guarded, victim: tuple[Sandbox, str]
                                          ) -> None:
    sb, key = victim
    sock = guarded.connect()
    try:
        sock.sendall(b"PUT /v1/sandboxes/" + sb.id.encode() + b"/files?path=/work/up.bin "
                     b"HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                     + b"\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        status, answer = _response(sock)  # then nothing more: the upload stalls
    finally:
        sock.close()
    assert status == 400 and b"paused" in answer
    assert not sb.files.exists("/work/up.bin")  # nothing half-written
    _assert_intact(guarded, victim)


def _e2b_upload(guarded: Guarded, victim: tuple[Sandbox, str], path: str) -> socket.socket:
    """A raw connection that has sent the head of an E2B octet-stream upload of ``path``
    (chunked), authenticated by the victim's envd token."""
    sb, key = victim
    with guarded.http() as http:
        token = http.post(f"/e2b/sandboxes/{sb.id}/connect", json={"timeout": 600},
                          headers={"X-API-Key": key}).json()["envdAccessToken"]
    sock = guarded.connect()
    sock.sendall(b"POST /e2b/files?path=" + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                 b"E2b-Sandbox-Id: " + sb.id.encode() + b"\r\nX-Access-Token: "
                 + token.encode() + b"\r\nContent-Type: application/octet-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    return sock


def test_an_e2b_upload_may_outlast_the_body_deadline(guarded: Guarded,
                                                     victim: tuple[Sandbox, str]) -> None:
    """An upload steadier than the idle timeout but longer than the whole-body deadline
    (6 s here) is written whole, past the 1 MiB body bound too."""
    sb, _ = victim
    piece = b"y" * (64 * 1024)
    pieces = int(guarded.limits.body_timeout / 0.25) + 8
    sock = _e2b_upload(guarded, victim, "/work/steady.bin")
    try:
        for _ in range(pieces):
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.settimeout(0.25)  # paces the upload; an early answer is a failure below
            try:
                early = sock.recv(65536)
            except TimeoutError:
                continue
            pytest.fail(f"the server answered mid-upload: {early[:300]!r}")
        sock.sendall(b"0\r\n\r\n")
        status, answer = _response(sock)
    finally:
        sock.close()
    assert status == 200, answer
    assert sb.files.stat("/work/steady.bin").size == pieces * len(piece)
    sb.files.remove("/work/steady.bin")


def test_an_e2b_upload_that_stalls_is_cut_off(guarded: Guarded,
                                              victim: tuple[Sandbox, str]) -> None:
    sb, _ = victim
    sock = _e2b_upload(guarded, victim, "/work/stalled.bin")
    try:
        sock.sendall(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
        status, answer = _response(sock)  # then nothing more: the upload stalls
    finally:
        sock.close()
    assert status == 400 and b"paused" in answer, answer
    assert not sb.files.exists("/work/stalled.bin")  # nothing half-written
    _assert_intact(guarded, victim)


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b"[" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"image": "python", "metadata": {"k": ' + b"[" * 70 + b"]" * 70 + b"}}",
], ids=["arrays", "unclosed", "objects", "nested-in-metadata"])
def test_deep_json_is_a_clear_400(guarded: Guarded, victim: tuple[Sandbox, str],
                                  body: bytes) -> None:
    sb, key = victim
    with guarded.http(key) as http:
        for path in ("/v1/sandboxes", f"/v1/sandboxes/{sb.id}/commands",
                     f"/v1/sandboxes/{sb.id}/files/mkdir"):
            response = http.post(path, content=body,
                                 headers={"Content-Type": "application/json"})
            message = assert_error(response, 400, "invalid_argument")
            assert "deep" in message or "bracket" in message, message


def test_brackets_inside_strings_are_not_nesting(guarded: Guarded,
                                                 victim: tuple[Sandbox, str]) -> None:
    sb, key = victim
    with guarded.http(key) as http:
        response = http.post(f"/v1/sandboxes/{sb.id}/commands",
                             json={"cmd": ["echo", "[" * 500 + '"{' * 100]})
    assert response.status_code == 200, response.text
    assert response.json()["stdout"] == "[" * 500 + '"{' * 100 + "\n"


@pytest.mark.parametrize("body", [
    b"{", b"[1,]", b'{"image": NaN}', b'{"image": "python",}', b"\xff\xfe{}",
    b'{"timeout": 1e999999}', b'{"image": "\\ud800"}', b"null", b'"python"', b"",
    b'{"image": "python"} trailing', b'{"image": "py\x00thon"}',
], ids=lambda b: repr(b)[:30])
def test_malformed_json_is_a_clear_400(guarded: Guarded, victim: tuple[Sandbox, str],
                                       body: bytes) -> None:
    _, key = victim
    with guarded.http(key) as http:
        response = http.post("/v1/sandboxes", content=body,
                             headers={"Content-Type": "application/json"})
    message = assert_error(response, 400, "invalid_argument")
    assert "Traceback" not in message


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/sandboxes/..%2f..%2fetc%2fpasswd"),
    ("GET", "/v1/sandboxes/%2e%2e/%2e%2e/etc/passwd"),
    ("GET", "/v1/sandboxes/sbx-0000000000000000%00"),
    ("GET", "/v1/sandboxes/" + "a" * 10_000),
    ("GET", "//v1//sandboxes"),
    ("GET", "/v1/sandboxes/sbx-0000000000000000/files/../../../metrics"),
    ("DELETE", "/v1/sandboxes/*"),
    ("GET", "/v1/sandboxes/%ff%fe"),
    ("POST", "/v1/sandboxes/sbx-0000000000000000/commands/99999999999999999999999/signal"),
])
def test_path_tricks_are_refused_in_the_shape(guarded: Guarded, victim: tuple[Sandbox, str],
                                              method: str, path: str) -> None:
    _, key = victim
    sock = guarded.connect()
    try:  # raw, so that nothing normalizes the path first
        sock.sendall(method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")
        status, body = _response(sock)
    finally:
        sock.close()
    assert status in (400, 404, 405), (status, body)
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["code"] in (
        "invalid_argument", "not_found")


@pytest.mark.parametrize("bad", ["..", ".", ""])
def test_the_sdk_never_turns_an_id_into_another_route(guarded: Guarded,
                                                      victim: tuple[Sandbox, str],
                                                      bad: str) -> None:
    """An id an agent's model chose goes into one path segment or nowhere: ``..`` would
    make ``/v1/sandboxes/..`` ask ``/v1/`` (httpx resolves dot segments), so the SDK
    refuses it before sending; ``/``, ``?`` and ``#`` are encoded, so they name no
    sandbox rather than another route."""
    sb, key = victim
    with pytest.raises(InvalidArgumentError, match="not a valid"):
        Sandbox.connect(bad, url=guarded.url, api_key=key)
    with pytest.raises(InvalidArgumentError, match="not a valid"):
        sb.code.interrupt(bad)
    with pytest.raises(InvalidArgumentError, match="not a valid"):
        Snapshot.get(bad, url=guarded.url, api_key=key)
    with pytest.raises(InvalidArgumentError, match="not a valid"):
        Volume.from_name(bad, url=guarded.url, api_key=key)
    for other_route in ("../../v1/keys", "x/../../../v1/audit", "x?state=running", "x#y"):
        with pytest.raises(NotFoundError):
            Sandbox.connect(other_route, url=guarded.url, api_key=key)
    _assert_intact(guarded, victim)


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/audit", {"limit": str(10**30)}),
    ("/v1/audit", {"limit": "-1"}),
    ("/v1/audit", {"before": "1e308"}),
    ("/v1/sandboxes/{sid}/files/list", {"path": "/", "depth": "9" * 50}),
    ("/v1/sandboxes/{sid}/files", {"path": "/work/" + "a" * 5000}),
    ("/v1/sandboxes", {"state": "x" * 10_000}),
])
def test_absurd_parameters_are_400(guarded: Guarded, victim: tuple[Sandbox, str], path: str,
                                   params: dict[str, str]) -> None:
    sb, key = victim
    with guarded.http(key) as http:
        response = http.get(path.format(sid=sb.id), params=params)
    assert_error(response, 400, "invalid_argument")


@pytest.mark.parametrize("body", [
    {"image": "python", "timeout": 10**30},
    {"image": "python", "resources": {"memory": 2**62, "cpus": 1e300, "pids": 2**40}},
    {"image": "python", "resources": {"disk": "99999999999999T"}},
    {"image": "python", "idle_timeout": -5},
    {"image": "python", "metadata": {f"k{i}": "v" for i in range(10_000)}},
    {"image": "python", "node_selector": {f"k{i}": "v" for i in range(17)}},
    {"image": "python", "node_selector": {"Zone!": "a"}},
    {"image": "python", "node_selector": {"zone": "a" * 64}},
    # a valid selector, on a server that is not a cluster's: refused, saying so
    {"image": "python", "node_selector": {"zone": "a"}},
])
def test_absurd_limits_in_bodies_are_400(guarded: Guarded, victim: tuple[Sandbox, str],
                                         body: dict[str, object]) -> None:
    _, key = victim
    with guarded.http(key) as http:
        assert_error(http.post("/v1/sandboxes", json=body), 400, "invalid_argument")


def test_forged_and_replayed_keys_are_refused(guarded: Guarded) -> None:
    key = guarded.key()
    revoked = guarded.keys.create("alpha")
    with guarded.http(revoked.key) as http:  # works, until revoked
        assert http.get("/v1/sandboxes").status_code == 200
    guarded.keys.revoke(revoked.id)
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    forged = [key[:-1], key + "x", flipped, key.upper(), key[4:], "crl_" + "A" * 43,
              key.replace("crl_", "CRL_"), revoked.key, " " + key + "\t" * 3 + "x",
              key[: len(key) // 2]]
    address = guarded.address()
    for attempt in forged:
        with guarded.http(attempt, address) as http:
            message = assert_error(http.get("/v1/sandboxes"), 401, "unauthenticated")
            assert attempt.strip() not in message and key not in message
    with guarded.http(None) as http:  # the key in the wrong places (from elsewhere)
        assert_error(http.get("/v1/sandboxes", params={"api_key": key}), 401,
                     "unauthenticated")
        assert_error(http.get("/v1/sandboxes", headers={"Authorization": f"Basic {key}"}),
                     401, "unauthenticated")
        assert_error(http.get("/v1/sandboxes", headers={"Authorization": f"Token {key}"}),
                     401, "unauthenticated")
    with guarded.http(key) as http:  # the real key still works (from an unblocked address)
        assert http.get("/v1/sandboxes").status_code == 200


def test_the_key_lookup_compares_in_constant_time() -> None:
    """Keys are found by their sha256 (an index lookup, no byte-wise compare of the
    secret), and the hash found is compared again with ``hmac.compare_digest``."""
    import inspect

    from corral.server.store import keys

    source = inspect.getsource(keys.KeyStore.identify)
    assert "key_hash(key)" in source and "hmac.compare_digest" in source
    assert "== key" not in source


def test_oversized_and_malformed_http_gets_the_error_shape(guarded: Guarded) -> None:
    for raw in (b"GET /v1/sandboxes HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000
                + b"\r\n\r\n",
                b"NONSENSE\r\n\r\n",
                b"GET /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
        sock = guarded.connect()
        try:
            with contextlib.suppress(OSError):  # the server may stop reading mid-way
                sock.sendall(raw)
            status, body = _response(sock)
        finally:
            sock.close()
        assert status == 400
        assert json.loads(body)["error"]["code"] == "invalid_argument"


def test_connections_past_the_cap_get_503_and_the_server_recovers(
        guarded: Guarded, victim: tuple[Sandbox, str]) -> None:
    cap = guarded.limits.max_connections
    address = guarded.address()
    held: list[socket.socket] = []
    try:
        for _ in range(cap + 5):
            held.append(guarded.connect(address))
        answers = []
        for sock in held[-5:]:  # the last ones are past the cap (the server closes them)
            sock.settimeout(DEADLINE)
            with contextlib.suppress(OSError):
                answers.append(sock.recv(65536))
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert refused, answers
        body = refused[0].partition(b"\r\n\r\n")[2]
        assert json.loads(body)["error"]["code"] == "unavailable"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            _assert_intact(guarded, victim)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
