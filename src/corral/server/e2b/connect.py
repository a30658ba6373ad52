"""The Connect RPC protocol as the e2b SDKs speak it to envd: the JSON codec over HTTP/1.1
(docs/research/e2b-protocol.md §5.1).

Written from the wire format, not from any Connect library: unary calls are one JSON
message each way; a server-streaming answer is a run of envelopes (one flags byte, a
four-byte big-endian length, the JSON payload) closed by an end-of-stream envelope that
may carry an error. Errors are ``{"code": "<connect code>", "message": ...}`` with the
code's HTTP status (unary, or a stream refused before its first message).
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

from starlette.responses import JSONResponse

from corral.api.errors import ErrorCode, SandboxError

from ..errors import RETRY_LATER, retry_after

#: Connect's codes and the HTTP status each is answered with (outside a stream).
STATUS: Final = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504,
    "not_found": 404, "already_exists": 409, "permission_denied": 403,
    "resource_exhausted": 429, "failed_precondition": 400, "aborted": 409,
    "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}
#: Envelope flags: a message, and the end of the stream.
MESSAGE: Final = 0x00
END_STREAM: Final = 0x02
_COMPRESSED: Final = 0x01
_HEADER = struct.Struct(">BI")
#: Content types: unary calls, and streams (exactly this; the Python client compares it
#: whole, so no ``charset`` parameter).
UNARY_TYPE: Final = "application/json"
STREAM_TYPE: Final = "application/connect+json"

#: Corral's codes as Connect codes; a stopped or unknown sandbox is ``unavailable`` with
#: "was not found" in the message, which the SDKs turn into "sandbox not running".
_FROM_CORRAL: Final = {
    ErrorCode.INVALID_ARGUMENT: "invalid_argument",
    ErrorCode.NOT_FOUND: "not_found",
    ErrorCode.ALREADY_EXISTS: "already_exists",
    ErrorCode.PERMISSION_DENIED: "permission_denied",
    ErrorCode.UNAUTHENTICATED: "unauthenticated",
    ErrorCode.RESOURCE_EXHAUSTED: "resource_exhausted",
    ErrorCode.SANDBOX_TIMEOUT: "unavailable",
    ErrorCode.COMMAND_TIMEOUT: "deadline_exceeded",
    ErrorCode.SANDBOX_NOT_RUNNING: "unavailable",
    ErrorCode.RUNTIME_UNAVAILABLE: "unavailable",
    ErrorCode.AGENT_ERROR: "internal",
    ErrorCode.REQUEST_TOO_LARGE: "resource_exhausted",
    ErrorCode.RATE_LIMITED: "resource_exhausted",
    ErrorCode.UNAVAILABLE: "unavailable",
    ErrorCode.PORT_UNAVAILABLE: "unavailable",
    ErrorCode.BUILD_FAILED: "internal",
    ErrorCode.INTERNAL: "internal",
}


class ConnectError(Exception):
    """An RPC's failure, as the client will see it: a Connect code and a message."""

    def __init__(self, code: str, message: str) -> None:
        if code not in STATUS:
            raise ValueError(f"{code!r} is not a Connect error code")
        super().__init__(message)
        self.code = code
        self.message = message
        #: Seconds to wait before trying again, for an error that means nothing was done
        #: (Corral's ``rate_limited`` and ``unavailable``): sent as ``Retry-After``.
        self.retry_after: float | None = None

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def response(self) -> JSONResponse:
        """The unary answer (also a stream's, when it fails before its first message)."""
        return JSONResponse(self.body(), status_code=self.status,
                            headers=None if self.retry_after is None
                            else retry_after(self.retry_after))

    @classmethod
    def of(cls, exc: SandboxError) -> ConnectError:
        """Corral's error as the Connect error the SDKs map to the nearest exception."""
        error = from_corral_code(exc.code, exc.message)
        if exc.code in RETRY_LATER:
            error.retry_after = exc.retry_after or 1
        return error


def from_corral_code(code: str, message: str) -> ConnectError:
    """The Connect error for Corral's error code ``code`` (``unknown`` for a code this
    version does not know)."""
    try:
        known = ErrorCode(code)
    except ValueError:
        return ConnectError("unknown", message)
    return ConnectError(_FROM_CORRAL.get(known, "unknown"), message)


def is_connect_error(body: object) -> bool:
    """Whether ``body`` (parsed JSON) is already a Connect error (a string code)."""
    return (isinstance(body, dict) and isinstance(body.get("code"), str)
            and body["code"] in STATUS and isinstance(body.get("message"), str))


def envelope(message: dict[str, Any], flags: int = MESSAGE) -> bytes:
    """One envelope around ``message`` as compact JSON."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(flags, len(payload)) + payload


def end_of_stream(error: ConnectError | None = None) -> bytes:
    """The envelope that ends a stream: ``{}``, or the error the stream ended with."""
    return envelope({"error": error.body()} if error is not None else {}, END_STREAM)


def read_envelopes(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """The envelopes in a request body, as (flags, message); invalid_argument for a body
    that is cut short, compressed or not JSON objects."""
    found: list[tuple[int, dict[str, Any]]] = []
    at = 0
    while at < len(data):
        if len(data) - at < _HEADER.size:
            raise ConnectError("invalid_argument",
                               "the request body ends inside an envelope header; send "
                               "whole envelopes (1 flags byte, 4 length bytes, payload)")
        flags, length = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        if flags & _COMPRESSED:
            raise ConnectError("invalid_argument", "compressed envelopes are not accepted; "
                               "send them with identity encoding")
        if len(data) - at < length:
            raise ConnectError("invalid_argument", f"an envelope says {length} bytes but "
                               f"only {len(data) - at} follow")
        found.append((flags, _object(data[at:at + length])))
        at += length
    return found


def read_single(data: bytes) -> dict[str, Any]:
    """The one message of a server-streaming request (an end envelope may follow)."""
    messages = [m for flags, m in read_envelopes(data) if not flags & END_STREAM]
    if len(messages) != 1:
        raise ConnectError("invalid_argument", f"expected one request message, got "
                           f"{len(messages)}")
    return messages[0]


def read_unary(data: bytes) -> dict[str, Any]:
    """A unary request's JSON message (an empty body is the empty message)."""
    return _object(data) if data.strip() else {}


def _object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        raise ConnectError("invalid_argument", "the request message is not JSON; this "
                           "server speaks Connect's JSON codec only") from None
    if not isinstance(value, dict):
        raise ConnectError("invalid_argument", "the request message must be a JSON object")
    return value


def timeout_ms(raw: str | None) -> float | None:
    """``Connect-Timeout-Ms`` in seconds (None: no deadline); at most 10 digits, as the
    protocol allows."""
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise ConnectError("invalid_argument", f"Connect-Timeout-Ms must be a positive "
                           f"integer of at most 10 digits, not {raw[:20]!r}")
    return int(raw) / 1000
