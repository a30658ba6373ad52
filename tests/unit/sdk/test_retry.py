"""The SDK's retry policy without a server: ``Retry-After`` read at its edges, which answers
are retried, and the waits (at least ``Retry-After``, bounded by retries and total wait)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from corral import (InvalidArgumentError, RateLimitedError, ResourceExhaustedError,
                    RuntimeUnavailableError, UnavailableError)
from corral.api.errors import SandboxError
from corral.sdk._retry import (DEFAULT_MAX_RETRIES, LONGEST_RETRY_AFTER, MAX_RETRIES,
                               MAX_WAIT, Retries, check_max_retries, parse_retry_after,
                               retryable)

pytestmark = pytest.mark.rootless

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def _date(delta: float) -> str:
    return format_datetime(NOW + timedelta(seconds=delta), usegmt=True)


@pytest.mark.parametrize(("value", "seconds"), [
    ("0", 0.0), ("1", 1.0), (" 7 ", 7.0), ("120", 120.0),
    (str(int(LONGEST_RETRY_AFTER)), LONGEST_RETRY_AFTER),
    (str(int(LONGEST_RETRY_AFTER) + 1), LONGEST_RETRY_AFTER),  # huge: the longest read
    ("9" * 20, LONGEST_RETRY_AFTER),
    (_date(30), 30.0), (_date(1), 1.0),
    (_date(0), 0.0), (_date(-3600), 0.0),  # a date past: now
    (_date(10 * LONGEST_RETRY_AFTER), LONGEST_RETRY_AFTER),
    ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # RFC 9110's own example, long past
])
def test_retry_after_reads_seconds_and_http_dates(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("value", [
    None, "", " ", "-1", "-0", "+5", "1.5", "1e3", "inf", "nan", "0x10", "soon",
    "9" * 21,  # longer than any number of seconds read
    "Sun, 06 Nov 1994 08:49:37",  # a date without its zone
    "Sun, 32 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 99999 08:49:37 GMT", "1,2",
])
def test_retry_after_that_is_not_one_reads_as_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_max_retries_is_bounded() -> None:
    assert check_max_retries(None) == DEFAULT_MAX_RETRIES
    assert check_max_retries(0) == 0
    assert check_max_retries(MAX_RETRIES) == MAX_RETRIES
    for bad in (-1, MAX_RETRIES + 1, 1.5, True, "3"):
        with pytest.raises(InvalidArgumentError, match="max_retries"):
            check_max_retries(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("error", "status", "method", "corral_body", "retried"), [
    (RateLimitedError("x"), 429, "POST", True, True),
    (UnavailableError("x"), 503, "POST", True, True),
    (ResourceExhaustedError("quota"), 429, "POST", True, False),  # waiting frees no quota
    (RuntimeUnavailableError("no runsc"), 503, "GET", True, False),
    (RateLimitedError("proxy"), 429, "POST", False, True),  # a proxy's limit: not forwarded
    (UnavailableError("proxy"), 503, "GET", False, True),
    (UnavailableError("proxy"), 503, "DELETE", False, True),
    (UnavailableError("proxy"), 503, "POST", False, False),  # the upstream may have acted
    (SandboxError("x"), 500, "GET", False, False),
])
def test_only_answers_that_say_nothing_was_done_are_retried(
        error: SandboxError, status: int, method: str, corral_body: bool,
        retried: bool) -> None:
    assert retryable(error, status, method, corral_body) is retried


def _limited(retry_after: float | None) -> RateLimitedError:
    error = RateLimitedError("slow down")
    error.retry_after = retry_after
    return error


def test_waits_honour_retry_after_and_grow() -> None:
    retries = Retries(max_retries=5)
    for _ in range(50):  # the jitter is random: every draw stays in its bounds
        assert retries.wait(0, 0.0, _limited(2.0)) == 2.0  # back-off ≤ 0.5 s: Retry-After
        assert 0.25 <= retries.wait(0, 0.0, _limited(None)) <= 0.5  # type: ignore[operator]
        assert 2.0 <= retries.wait(3, 0.0, _limited(None)) <= 4.0  # type: ignore[operator]
        assert 2.0 <= retries.wait(3, 0.0, _limited(1.0)) <= 4.0  # type: ignore[operator]


def test_retries_stop_at_their_count_and_their_total_wait() -> None:
    assert Retries(max_retries=0).wait(0, 0.0, _limited(1.0)) is None
    retries = Retries(max_retries=3)
    assert retries.wait(2, 0.0, _limited(1.0)) is not None
    assert retries.wait(3, 0.0, _limited(1.0)) is None
    # A Retry-After past the cap is not waited for, at the first attempt or later.
    assert retries.wait(0, 0.0, _limited(MAX_WAIT)) == MAX_WAIT
    assert retries.wait(0, 0.0, _limited(MAX_WAIT + 1)) is None
    assert retries.wait(1, MAX_WAIT - 1, _limited(1.0)) == 1.0
    assert retries.wait(1, MAX_WAIT - 1, _limited(2.0)) is None
