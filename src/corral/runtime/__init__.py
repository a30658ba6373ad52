"""Isolation backends behind one interface (:class:`corral.runtime.base.Runtime`)."""

from __future__ import annotations

from corral.api.errors import InvalidArgumentError, RuntimeUnavailableError

from .base import Availability, Runtime, RuntimeSandbox, RuntimeState, SandboxSpec

__all__ = [
    "RUNTIME_NAMES", "Availability", "Runtime", "RuntimeSandbox", "RuntimeState",
    "SandboxSpec", "available_runtimes", "get_runtime",
]

RUNTIME_NAMES = ("gvisor", "namespaces")


def _make(name: str) -> Runtime:
    if name == "gvisor":
        from .gvisor.runtime import GvisorRuntime

        return GvisorRuntime()
    if name == "namespaces":
        from .namespaces.runtime import NamespacesRuntime

        return NamespacesRuntime()
    raise InvalidArgumentError(
        f"unknown runtime {name!r}; choose one of: {', '.join(RUNTIME_NAMES)}")


def available_runtimes() -> dict[str, tuple[Runtime, Availability]]:
    """Every known runtime with its probe result, strongest first."""
    found = {name: _make(name) for name in RUNTIME_NAMES}
    ordered = sorted(found.values(), key=lambda r: -r.strength)
    return {r.name: (r, r.check()) for r in ordered}


def get_runtime(name: str | None) -> Runtime:
    """The named runtime if it works here; with None, the strongest one that works."""
    if name is not None:
        runtime = _make(name)
        status = runtime.check()
        if not status.ok:
            raise RuntimeUnavailableError(
                f"runtime {name!r} does not work on this host: {status.detail}"
                + (f"; to fix: {status.fix}" if status.fix else ""))
        return runtime
    for runtime, status in available_runtimes().values():
        if status.ok:
            return runtime
    raise RuntimeUnavailableError("no sandbox runtime works on this host; run `corral doctor`")
