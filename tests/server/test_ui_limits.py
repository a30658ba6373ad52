"""The console's session under the request limits, on a server with tight ones: failed
logins drain the same per-address bucket as bad API keys (and are refused past it, a
right key included), and a session's requests count against its key's own bucket."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from ._guarded import Guarded, guarded_server
from .conftest import assert_error

LOGIN = "/ui/api/login"


@pytest.fixture(scope="module")
def guarded(python_image: str) -> Iterator[Guarded]:
    with guarded_server(python_image) as server:
        yield server


def test_failed_logins_count_as_failed_authentications(guarded: Guarded) -> None:
    address = guarded.address()
    with guarded.http(None, address) as browser:
        failures = 0
        while (response := browser.post(LOGIN, json={"key": "crl_guess"})).status_code == 401:
            failures += 1
            assert failures <= 2 * guarded.limits.auth_failure_burst, "never limited"
        message = assert_error(response, 429, "rate_limited")
        assert "failed authentications" in message and int(response.headers["retry-after"])
        assert failures >= guarded.limits.auth_failure_burst
        # One bucket for the address: a right key is refused now, at login and on the API.
        assert_error(browser.post(LOGIN, json={"key": guarded.key()}), 429, "rate_limited")
    with guarded.http(guarded.key(), address) as api:
        assert_error(api.get("/v1/sandboxes"), 429, "rate_limited")
    with guarded.http() as elsewhere:  # another address logs in as ever
        assert elsewhere.post(LOGIN, json={"key": guarded.key()}).status_code == 200


def test_a_sessions_requests_are_its_keys(guarded: Guarded) -> None:
    """The session's requests and the key's, interleaved, meet one bucket: together they
    get the burst and the refill, not twice the burst."""
    limits = guarded.limits
    key = guarded.key()
    with guarded.http() as browser, guarded.http(key) as api:
        csrf = {"X-Corral-CSRF": browser.post(LOGIN, json={"key": key}).json()["csrf"]}
        started = time.monotonic()
        sent = 0
        while True:
            response = (browser.get("/v1/sandboxes", headers=csrf) if sent % 2
                        else api.get("/v1/sandboxes"))
            if response.status_code != 200:
                break
            sent += 1
            assert sent <= 4 * limits.burst, "never limited"
        elapsed = time.monotonic() - started
        message = assert_error(response, 429, "rate_limited")
        assert "this API key" in message
        assert limits.burst <= sent <= limits.burst + math.ceil(elapsed * limits.rate)
