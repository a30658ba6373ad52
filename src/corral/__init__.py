"""Corral: self-hosted sandboxes for untrusted, AI-generated code.

The one-machine engine is :mod:`corral.node`; errors share the root
:class:`corral.SandboxError`.
"""

from corral.api.errors import (
    AgentError,
    CommandTimeoutError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RuntimeUnavailableError,
    SandboxError,
    SandboxNotRunningError,
    SandboxTimeoutError,
)
from corral.api.resources import Resources

__version__ = "0.1.0"

__all__ = [
    "AgentError", "CommandTimeoutError", "InvalidArgumentError", "NotFoundError",
    "PermissionDeniedError", "Resources", "ResourceExhaustedError", "RuntimeUnavailableError",
    "SandboxError", "SandboxNotRunningError", "SandboxTimeoutError", "__version__",
]
