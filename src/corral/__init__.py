"""Corral: self-hosted sandboxes for untrusted, AI-generated code.

:class:`Sandbox` (blocking) and :class:`AsyncSandbox` talk to a Corral server
(``corral serve``); the one-machine engine is :mod:`corral.node`. Errors share the root
:class:`corral.SandboxError`.
"""

from typing import TYPE_CHECKING, Any

from corral.api.errors import (
    AgentError,
    AlreadyExistsError,
    AuthenticationError,
    BuildFailedError,
    CommandTimeoutError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PortUnavailableError,
    RateLimitedError,
    ResourceExhaustedError,
    RuntimeUnavailableError,
    SandboxError,
    SandboxNotRunningError,
    SandboxTimeoutError,
    UnavailableError,
)
from corral.api.resources import Resources

__version__ = "0.1.0"

if TYPE_CHECKING:
    from corral.sdk import (AsyncSandbox, AsyncSnapshot, AsyncVolume, Context, Execution,
                            ExecutionError, Image, Logs, PtySize, Result, Sandbox, Snapshot,
                            Volume)


#: The code interpreter's values (``sb.run_code`` returns an ``Execution``).
_CODE = ("Context", "Execution", "ExecutionError", "Logs", "Result")


def __getattr__(name: str) -> Any:
    # The SDK (httpx, pydantic) loads on first use, so `import corral` stays light for the
    # CLI and the node.
    if name in ("Sandbox", "AsyncSandbox", "Image", "Volume", "AsyncVolume", "Snapshot",
                "AsyncSnapshot", "PtySize") or name in _CODE:
        from corral import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")

__all__ = [
    "AgentError", "AlreadyExistsError", "AsyncSandbox", "AuthenticationError", "BuildFailedError",
    "CommandTimeoutError", "Context",
    "Execution", "ExecutionError", "Image", "Logs", "Result",
    "InvalidArgumentError", "NotFoundError", "PermissionDeniedError", "PortUnavailableError",
    "PtySize",
    "RateLimitedError",
    "Resources", "ResourceExhaustedError", "RuntimeUnavailableError",
    "Sandbox", "SandboxError", "SandboxNotRunningError", "SandboxTimeoutError",
    "UnavailableError", "AsyncVolume", "Volume", "AsyncSnapshot", "Snapshot", "__version__",
]
