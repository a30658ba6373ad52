"""The error vocabulary shared by every layer: one code enum, one exception root.

The node, the server and the SDK raise these; the agent reports the codes over its
channel. One table (:data:`ERROR_CLASSES`) maps each code to its class, so the same code
always surfaces as the same exception wherever it was raised.
"""

from __future__ import annotations

from enum import StrEnum


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
    INTERNAL = "internal"


class SandboxError(Exception):
    """Root of every error Corral raises.

    Attributes:
        code: the :class:`ErrorCode` naming what went wrong.
        message: a sentence for people, saying what to do next where that is known.
    """

    code: ErrorCode = ErrorCode.INTERNAL

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
    """A command ran past its timeout; it and its descendants were killed."""

    code = ErrorCode.COMMAND_TIMEOUT


class SandboxNotRunningError(SandboxError):
    """The sandbox has stopped (killed, timed out, or its agent died)."""

    code = ErrorCode.SANDBOX_NOT_RUNNING


class RuntimeUnavailableError(SandboxError):
    """The requested runtime does not work on this host (see ``corral doctor``)."""

    code = ErrorCode.RUNTIME_UNAVAILABLE


class AgentError(SandboxError):
    """The in-sandbox agent misbehaved: crashed, hung, or spoke out of protocol."""

    code = ErrorCode.AGENT_ERROR


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
        InternalError,
    )
}


def error_from_code(code: str, message: str) -> SandboxError:
    """Build the exception for a wire ``code``; unknown codes become :class:`InternalError`."""
    try:
        cls = ERROR_CLASSES[ErrorCode(code)]
    except ValueError:
        cls = InternalError
    return cls(message)
