"""Rate limits: a token bucket per key (exactly ``burst`` at once, then 429 with Retry-After,
then recovery), requests in flight per key (429) and server-wide (503), failed
authentications per client address (429, without locking out a key that works), and
bounded tables. The buckets are checked exactly on a fake clock; over HTTP, against a
server of the tests' own with tight limits (:mod:`tests.server._guarded`)."""

from __future__ import annotations

import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace

import anyio
import httpx
import pytest

from corral import NotFoundError, RateLimitedError, Sandbox, UnavailableError
from corral.api.errors import ResourceExhaustedError
from corral.sdk._http import ApiClient
from corral.sdk._retry import DEFAULT_MAX_RETRIES, MAX_WAIT
from corral.server.ratelimit import Buckets, client_name

from ._guarded import LIMITS, Guarded, guarded_server
from .conftest import assert_error

DEADLINE = 30.0  # bounds every wait below; never asserted on


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_exactly_burst_then_refills_at_rate() -> None:
    clock = Clock()
    buckets = Buckets(rate=2.0, burst=5, clock=clock)
    assert [buckets.take("k") for _ in range(5)] == [0.0] * 5
    assert buckets.take("k") == pytest.approx(0.5)  # one token comes in 1/rate s
    assert buckets.wait("k") == pytest.approx(0.5)
    assert buckets.take("other") == 0.0  # buckets are per name
    clock.now += 0.5
    assert buckets.take("k") == 0.0
    assert buckets.take("k") > 0
    clock.now += 100  # refills to burst, never beyond
    assert [buckets.take("k") for _ in range(5)] == [0.0] * 5
    assert buckets.take("k") > 0


def test_a_bucket_table_stays_bounded() -> None:
    clock = Clock()
    buckets = Buckets(rate=1.0, burst=3, size=100, clock=clock)
    for i in range(10_000):
        buckets.take(f"k{i}")
    assert len(buckets) <= 100
    # Entries that have refilled are dropped as new ones come: they equal no entry.
    clock.now += 10
    for i in range(5):
        buckets.take(f"fresh{i}")
    assert len(buckets) <= 100


def test_zero_turns_a_limit_off() -> None:
    buckets = Buckets(rate=0, burst=0)
    assert all(buckets.take("k") == 0 for _ in range(1000)) and len(buckets) == 0


@pytest.mark.parametrize(("host", "name"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same /64: one bucket
    ("::ffff:198.51.100.1", "198.51.100.1"),
])
def test_client_addresses_count_by_host_and_ipv6_64(host: str, name: str) -> None:
    assert client_name({"client": (host, 1234)}) == name
    assert client_name({}) == "unknown"


@pytest.fixture(scope="module")
def guarded(python_image: str) -> Iterator[Guarded]:
    with guarded_server(python_image) as server:
        yield server


@pytest.fixture(scope="module")
def holding(python_image: str) -> Iterator[Guarded]:
    """A server whose body deadlines outlast the in-flight tests: their held requests (a
    body that never comes) must all be in flight at once however slowly a loaded host
    serves them; under the 6 s body deadline the first could end before the poll began."""
    with guarded_server(python_image, replace(LIMITS, body_timeout=120,
                                              body_idle_timeout=120)) as server:
        yield server


def test_a_key_gets_its_burst_then_429_then_recovers(guarded: Guarded) -> None:
    limits = guarded.limits
    with guarded.http(guarded.key()) as http:
        started = time.monotonic()
        admitted = 0
        while (response := http.get("/v1/sandboxes")).status_code == 200:
            admitted += 1
            assert admitted < 10 * limits.burst, "the key was never limited"
        elapsed = time.monotonic() - started
        message = assert_error(response, 429, "rate_limited")
        # At least the burst; beyond it, only what the rate refilled meanwhile.
        assert limits.burst <= admitted <= limits.burst + math.ceil(elapsed * limits.rate)
        assert "API key" in message
        wait = int(response.headers["retry-after"])
        assert wait >= 1
        # Another key is not limited by this one's use.
        with guarded.http(guarded.key()) as other:
            assert other.get("/v1/sandboxes").status_code == 200
        time.sleep(wait)
        assert http.get("/v1/sandboxes").status_code == 200


def test_the_sdk_raises_a_typed_error_with_retry_after(python_image: str) -> None:
    # A slow bucket of its own: on a loaded host SDK calls can be slower than a fast refill.
    with guarded_server(python_image, replace(LIMITS, rate=0.2, burst=3)) as slow:
        key = slow.key()
        with pytest.raises(RateLimitedError) as caught:
            for _ in range(10):
                Sandbox.list(url=slow.url, api_key=key, max_retries=0)
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    assert isinstance(caught.value, ResourceExhaustedError)  # callers catching that still do


class Counting(httpx.AsyncBaseTransport):
    """The network, counting the requests sent through it by status answered."""

    def __init__(self, address: str) -> None:
        self.inner = httpx.AsyncHTTPTransport(local_address=address)
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.statuses.append(response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _refused(server: Guarded, status: int, route: str = "/v1/sandboxes") -> float:
    """How many ``GET route`` the server answered with ``status`` (its own metrics)."""
    registry = server.spec_check.app.state.metrics.registry
    return registry.get_sample_value("corral_http_requests_total", {
        "route": route, "method": "GET", "status": str(status)}) or 0.0


@pytest.fixture(scope="module")
def one_a_second(python_image: str) -> Iterator[Guarded]:
    """One request a second per key, none saved up: a second call at once is refused
    with ``Retry-After: 1``."""
    with guarded_server(python_image, replace(LIMITS, rate=1, burst=1)) as server:
        yield server


def test_the_sdk_waits_out_retry_after_and_succeeds(one_a_second: Guarded) -> None:
    key = one_a_second.key()
    transport = Counting(one_a_second.address())

    async def calls() -> int:
        """Calls until one was refused and retried (each at once after the last)."""
        api = ApiClient(one_a_second.url, key, transport=transport)
        try:
            for made in range(1, 21):
                assert (await api.json("GET", "/v1/sandboxes"))["sandboxes"] == []
                if 429 in transport.statuses:
                    return made
        finally:
            await api.aclose()
        raise AssertionError(f"20 calls at once were never limited: {transport.statuses}")

    made = anyio.run(calls)
    # Every call succeeded; one attempt more per refusal, each refusal saying wait 1 s.
    assert transport.statuses.count(200) == made
    assert len(transport.statuses) == made + transport.statuses.count(429)
    assert transport.statuses[-1] == 200


def test_a_body_streamed_from_an_iterator_is_sent_once(one_a_second: Guarded) -> None:
    key = one_a_second.key()
    transport = Counting(one_a_second.address())
    path = "/v1/sandboxes/sbx-00000000000000000000/files"

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one-shot"

    async def upload(streamed: bool) -> int:
        """Uploads right after another call until one is refused: the attempts it took."""
        api = ApiClient(one_a_second.url, key, transport=transport)
        try:
            for _ in range(20):
                await api.call("GET", "/v1/sandboxes")  # takes the second's token
                transport.statuses.clear()
                try:
                    await api.call("PUT", path, params={"path": "/work/f"},
                                   content=chunks() if streamed else b"replayable")
                except RateLimitedError:
                    assert streamed, "a bytes body was not sent again"
                    return len(transport.statuses)
                except NotFoundError:  # the limit passed: the server looked for it
                    if 429 in transport.statuses:
                        assert not streamed, "a one-shot body was sent again"
                        return len(transport.statuses)
        finally:
            await api.aclose()
        raise AssertionError("20 uploads right after a call were never limited")

    assert anyio.run(upload, True) == 1
    assert anyio.run(upload, False) >= 2


def test_connect_and_list_retry_through_the_same_client(one_a_second: Guarded) -> None:
    key = one_a_second.key()
    before = _refused(one_a_second, 429)
    for _ in range(20):  # until the server refused one of them, which still succeeded
        assert Sandbox.list(url=one_a_second.url, api_key=key) == []
        with pytest.raises(NotFoundError):  # past the limit: the server looked
            Sandbox.connect("sbx-00000000000000000000", url=one_a_second.url, api_key=key)
        if _refused(one_a_second, 429) > before:
            break
    else:
        pytest.fail("40 calls at once were never limited")


def test_no_retries_raises_at_once_with_retry_after(one_a_second: Guarded) -> None:
    key = one_a_second.key()
    before = _refused(one_a_second, 429)
    with pytest.raises(RateLimitedError) as caught:
        for _ in range(20):
            Sandbox.list(url=one_a_second.url, api_key=key, max_retries=0)
    assert caught.value.retry_after == 1.0  # a token a second: never more than 1 s away
    assert _refused(one_a_second, 429) == before + 1  # refused once, not sent again


def test_a_retry_after_past_the_cap_is_not_waited_for(python_image: str) -> None:
    # A token every 50 s: the wait asked for is past the SDK's 30 s of waiting a call.
    with guarded_server(python_image, replace(LIMITS, rate=0.02, burst=1)) as slow:
        key = slow.key()
        Sandbox.list(url=slow.url, api_key=key)
        with pytest.raises(RateLimitedError) as caught:
            Sandbox.list(url=slow.url, api_key=key)  # retries left, but not waited
        assert caught.value.retry_after is not None and caught.value.retry_after > MAX_WAIT
        assert _refused(slow, 429) == 1


def _hold(guarded: Guarded, key: str, address: str) -> socket.socket:
    """A request in flight until its socket closes: headers sent, the body never is."""
    sock = guarded.connect(address)
    sock.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + key.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{")
    return sock


def _until(check: Callable[[], bool], what: str, seen: list[int] | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"{what} (statuses seen: {Counter(seen or [])})"
        time.sleep(0.05)


def _statuses(http: httpx.Client) -> int:
    return http.get("/v1/sandboxes").status_code


def _polled(http: httpx.Client, seen: list[int], wanted: int) -> Callable[[], bool]:
    """A check that asks once more and notes the status."""
    def check() -> bool:
        seen.append(_statuses(http))
        return seen[-1] == wanted
    return check


def test_requests_in_flight_per_key_are_capped(guarded: Guarded) -> None:
    key, other_key = guarded.key(), guarded.key()  # before the holds: see the next test
    address = guarded.address()
    held = [_hold(guarded, key, address) for _ in range(guarded.limits.in_flight_per_key)]
    try:
        with guarded.http(key, address) as http:
            seen: list[int] = []
            _until(_polled(http, seen, 429),
                   "the key's requests in flight were not capped", seen)
            message = assert_error(http.get("/v1/sandboxes"), 429, "rate_limited")
            assert "in flight" in message
            with guarded.http(other_key) as other:  # another key is served meanwhile
                assert other.get("/v1/sandboxes").status_code == 200
    finally:
        for sock in held:
            sock.close()
    with guarded.http(key, address) as http:
        _until(lambda: _statuses(http) == 200, "the key stayed capped after its requests ended")


def test_requests_in_flight_server_wide_get_503(holding: Guarded) -> None:
    guarded = holding
    per_key = guarded.limits.in_flight_per_key
    # One key more than the cap needs: requests of earlier tests may still be ending.
    keys = [guarded.key() for _ in range(math.ceil(guarded.limits.in_flight / per_key) + 1)]
    # Made before the holds: a key is a store write, which can wait on the server's own
    # writes long enough for the held requests to time out first.
    poller = guarded.key()
    address = guarded.address()
    held = [_hold(guarded, key, address) for key in keys for _ in range(per_key)]
    try:
        with guarded.http(poller, address) as http:
            seen: list[int] = []
            _until(_polled(http, seen, 503),
                   "the server's requests were not capped", seen)
            response = http.get("/v1/sandboxes")
            assert_error(response, 503, "unavailable")
            assert int(response.headers["retry-after"]) >= 1
            # Still capped through every retry: the first attempt and each retry refused.
            before = _refused(guarded, 503)
            with pytest.raises(UnavailableError) as caught:
                Sandbox.list(url=guarded.url, api_key=poller)
            assert caught.value.retry_after == 1.0
            assert _refused(guarded, 503) == before + 1 + DEFAULT_MAX_RETRIES
    finally:
        for sock in held:
            sock.close()
    with guarded.http(guarded.key()) as http:
        _until(lambda: _statuses(http) == 200, "the server stayed capped")


def test_failed_authentications_are_limited_per_address(guarded: Guarded) -> None:
    limits = guarded.limits
    address = guarded.address()
    good = guarded.key()
    with guarded.http(good, address) as http:
        assert http.get("/v1/sandboxes").status_code == 200  # a key seen working here
    with guarded.http("crl_guess", address) as guesser:
        started = time.monotonic()
        failures = 0
        while (response := guesser.get("/v1/sandboxes")).status_code == 401:
            failures += 1
            assert failures < 10 * limits.auth_failure_burst, "failures were never limited"
        elapsed = time.monotonic() - started
        message = assert_error(response, 429, "rate_limited")
        assert "failed authentications" in message and int(response.headers["retry-after"])
        assert (limits.auth_failure_burst <= failures
                <= limits.auth_failure_burst + math.ceil(elapsed * limits.auth_failure_rate))
        # Even a right key is not looked up from this address now, unless seen working.
        with guarded.http(guarded.key(), address) as unseen:
            assert_error(unseen.get("/v1/sandboxes"), 429, "rate_limited")
    with guarded.http(good, address) as http:
        assert http.get("/v1/sandboxes").status_code == 200
    # Other addresses are not affected.
    with guarded.http("crl_guess") as elsewhere:
        assert_error(elsewhere.get("/v1/sandboxes"), 401, "unauthenticated")
