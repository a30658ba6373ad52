"""The error vocabulary shared by every layer: one code enum, one exception root.

The node, the server and the SDK raise these; the agent reports the codes over its
channel. One table (:data:`ERROR_CLASSES`) maps each code to its class, so the same code
always surfaces as the same exception wherever it was raised.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable, machine-readable error codes (they appear on the wire)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    SANDBOX_TIMEOUT = "sandbox_timeout"
    COMMAND_TIMEOUT = "command_timeout"
    SANDBOX_NOT_RUNNING = "sandbox_not_running"
    RUNTIME_UNAVAILABLE = "runtime_unavailable"
    AGENT_ERROR = "agent_error"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    PORT_UNAVAILABLE = "port_unavailable"
    BUILD_FAILED = "build_failed"
    INTERNAL = "internal"


class SandboxError(Exception):
    """Root of every error Corral raises.

    Attributes:
        code: the :class:`ErrorCode` naming what went wrong.
        message: a sentence for people, saying what to do next where that is known.
        retry_after: seconds the server asked the caller to wait before trying again (its
            ``Retry-After`` header), when it said; set on :class:`RateLimitedError` and
            :class:`UnavailableError`.
    """

    code: ErrorCode = ErrorCode.INTERNAL
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgumentError(SandboxError):
    """A request field was malformed, out of range, or unsafe."""

    code = ErrorCode.INVALID_ARGUMENT


class NotFoundError(SandboxError):
    """The sandbox, image, process or file does not exist (or is not yours)."""

    code = ErrorCode.NOT_FOUND


class AlreadyExistsError(SandboxError):
    """The thing to create is already there."""

    code = ErrorCode.ALREADY_EXISTS


class PermissionDeniedError(SandboxError):
    """The operation is not allowed, for example writing a read-only path."""

    code = ErrorCode.PERMISSION_DENIED


class AuthenticationError(SandboxError):
    """No valid API key was presented."""

    code = ErrorCode.UNAUTHENTICATED


class ResourceExhaustedError(SandboxError):
    """A limit was hit: memory, disk, pids, output size, or node capacity."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class SandboxTimeoutError(SandboxError):
    """The sandbox reached its maximum lifetime and was stopped."""

    code = ErrorCode.SANDBOX_TIMEOUT


class CommandTimeoutError(SandboxError):
    """A command ran past its timeout; it and its descendants were killed.

    Attributes:
        result: what the command printed before it was killed (a ``CommandResult``), when
            known.
    """

    code = ErrorCode.COMMAND_TIMEOUT

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class SandboxNotRunningError(SandboxError):
    """The sandbox has stopped (killed, timed out, or its agent died)."""

    code = ErrorCode.SANDBOX_NOT_RUNNING


class RuntimeUnavailableError(SandboxError):
    """The requested runtime does not work on this host (see ``corral doctor``)."""

    code = ErrorCode.RUNTIME_UNAVAILABLE


class AgentError(SandboxError):
    """The in-sandbox agent misbehaved: crashed, hung, or spoke out of protocol."""

    code = ErrorCode.AGENT_ERROR


class RequestTooLargeError(ResourceExhaustedError):
    """An HTTP request body was larger than the server accepts for that route."""

    code = ErrorCode.REQUEST_TOO_LARGE


class RateLimitedError(ResourceExhaustedError):
    """Too many requests with this API key (or, unauthenticated, from this address): the
    request was refused before it did anything; try again after :attr:`retry_after` s."""

    code = ErrorCode.RATE_LIMITED


class UnavailableError(SandboxError):
    """The server is at its limit of requests in flight (or shutting down): nothing was done;
    try again after :attr:`retry_after` seconds."""

    code = ErrorCode.UNAVAILABLE


class PortUnavailableError(SandboxError):
    """Nothing in the sandbox answers on the port asked for (nothing listens there, or the
    app closed or reset the connection)."""

    code = ErrorCode.PORT_UNAVAILABLE


class BuildFailedError(SandboxError):
    """A step of an image build failed; the message names the step and quotes the end of
    its output and its exit status."""

    code = ErrorCode.BUILD_FAILED


class InternalError(SandboxError):
    """A bug or an unexpected host failure."""

    code = ErrorCode.INTERNAL


ERROR_CLASSES: dict[ErrorCode, type[SandboxError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        AuthenticationError,
        ResourceExhaustedError,
        SandboxTimeoutError,
        CommandTimeoutError,
        SandboxNotRunningError,
        RuntimeUnavailableError,
        AgentError,
        RequestTooLargeError,
        RateLimitedError,
        UnavailableError,
        PortUnavailableError,
        BuildFailedError,
        InternalError,
    )
}

#: The HTTP status each code is answered with; the server and the SDK share it. Three statuses
#: answer two codes each: 429 (``resource_exhausted``, ``rate_limited``), 502
#: (``port_unavailable``, ``agent_error``) and 503 (``runtime_unavailable``,
#: ``unavailable``); every other status belongs to one code, so a
#: body-less error (from a proxy, say) still maps back to a class (:func:`code_for_status`).
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,  # every validation failure, pydantic's included
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,  # also another tenant's sandbox: never 403, which would leak
    ErrorCode.SANDBOX_TIMEOUT: 408,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.SANDBOX_NOT_RUNNING: 410,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.RATE_LIMITED: 429,  # the request was refused before it did anything
    ErrorCode.INTERNAL: 500,
    ErrorCode.PORT_UNAVAILABLE: 502,  # an exposed port with nothing listening
    ErrorCode.BUILD_FAILED: 422,  # the request was understood; a step of it failed
    ErrorCode.AGENT_ERROR: 502,
    ErrorCode.RUNTIME_UNAVAILABLE: 503,
    ErrorCode.UNAVAILABLE: 503,  # the server is at its limit of requests in flight
    ErrorCode.COMMAND_TIMEOUT: 504,
}
#: A body-less 429 or 503 comes from a proxy or a load balancer: a rate limit, an upstream
#: that is unavailable. The later entry of a shared status wins.
_CODE_OF_STATUS = {status: code for code, status in HTTP_STATUS.items()}


def http_status(code: ErrorCode) -> int:
    """The HTTP status answering ``code``."""
    return HTTP_STATUS[code]


def code_for_status(status: int) -> ErrorCode:
    """The code for an HTTP error status without a Corral error body (405, 502 from a proxy)."""
    if status in _CODE_OF_STATUS:
        return _CODE_OF_STATUS[status]
    return ErrorCode.INVALID_ARGUMENT if 400 <= status < 500 else ErrorCode.INTERNAL


def error_from_code(code: str, message: str) -> SandboxError:
    """Build the exception for a wire ``code``; unknown codes become :class:`InternalError`."""
    try:
        cls = ERROR_CLASSES[ErrorCode(code)]
    except ValueError:
        cls = InternalError
    return cls(message)
