"""When the SDK sends a request again, and how long it waits first. No I/O: the client
(:mod:`corral.sdk._http`) asks :meth:`Retries.wait` after each error answer.

Only answers that say nothing was done are retried:

* ``429 rate_limited`` and ``503 unavailable`` in Corral's error body. The server gives
  them before it acts (its rate limits, its cap on requests in flight, a node shutting
  down before a start, a snapshot in use before its removal), always with ``Retry-After``.
* A 429 without Corral's body (a proxy's rate limit, which refuses before forwarding).
* A 503 without Corral's body only for a method that is safe to repeat (``GET``,
  ``HEAD``, ``PUT``, ``DELETE``): a proxy may answer it after its upstream acted.

``429 resource_exhausted`` (a quota is full) and ``503 runtime_unavailable`` are not
retried: waiting a few seconds does not change them. A request whose body is a one-shot
iterator (a file written from chunks, an image context uploaded as it is packed) is never
retried: its body cannot be sent twice.

Waits grow exponentially with jitter (half fixed, half random, so clients refused together
do not come back together) and are never shorter than the ``Retry-After`` the server sent.
All of one call's waits together stay under :data:`MAX_WAIT`; a wait that would pass it is
not waited: the error is raised at once, its ``retry_after`` saying what the server asked.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from corral.api.errors import ErrorCode, InvalidArgumentError, SandboxError

#: Retries after the first attempt, unless the client was given ``max_retries=``.
DEFAULT_MAX_RETRIES: Final = 3
#: The most ``max_retries=`` may be.
MAX_RETRIES: Final = 10
#: Seconds one call may spend waiting between its attempts, all waits together.
MAX_WAIT: Final = 30.0
#: The first back-off, in seconds; each retry doubles it.
BASE_DELAY: Final = 0.5
#: The longest ``Retry-After`` read as given (a day); a longer one reads as this.
LONGEST_RETRY_AFTER: Final = 86400.0

_RETRIED_CODES: Final = {ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE}
_IDEMPOTENT: Final = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
_DELTA_SECONDS = re.compile(r"[0-9]{1,20}")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for: ``delta-seconds`` or an HTTP-date (RFC 9110
    §10.2.3). None when absent or malformed (a negative or fractional number included);
    0 for a date already past; at most :data:`LONGEST_RETRY_AFTER`."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(int(value)), LONGEST_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is malformed
        return None
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, float(math.ceil(seconds))), LONGEST_RETRY_AFTER)


def check_max_retries(max_retries: int | None) -> int:
    """``max_retries=`` as given (None: :data:`DEFAULT_MAX_RETRIES`), checked."""
    if max_retries is None:
        return DEFAULT_MAX_RETRIES
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not (
            0 <= max_retries <= MAX_RETRIES):
        raise InvalidArgumentError(f"max_retries must be a whole number from 0 (no retries) "
                                   f"to {MAX_RETRIES}, not {max_retries!r}")
    return max_retries


def retryable(error: SandboxError, status: int, method: str, corral_body: bool) -> bool:
    """Whether an answer of ``status`` (raising ``error``) says nothing was done."""
    if status == 429:
        return error.code in _RETRIED_CODES or not corral_body
    if status == 503:
        if corral_body:
            return error.code in _RETRIED_CODES
        return method.upper() in _IDEMPOTENT
    return False


@dataclass(frozen=True)
class Retries:
    """One client's retry policy: ``max_retries`` after the first attempt, waits that add
    up to at most ``max_wait`` seconds."""

    max_retries: int = DEFAULT_MAX_RETRIES
    max_wait: float = MAX_WAIT

    def wait(self, attempt: int, waited: float, error: SandboxError) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, having waited ``waited``
        already; None to give up and raise ``error`` (no retries left, or the wait would
        take the call past ``max_wait``)."""
        if attempt >= self.max_retries:
            return None
        step = BASE_DELAY * 2 ** attempt
        delay = max(error.retry_after or 0.0, step / 2 + random.uniform(0, step / 2))
        return delay if waited + delay <= self.max_wait else None
