"""Isolation backends behind one interface (:class:`corral.runtime.base.Runtime`)."""

from __future__ import annotations

from collections.abc import Mapping

from corral.api.errors import InvalidArgumentError, RuntimeUnavailableError

from .base import (Availability, Runtime, RuntimeSandbox, RuntimeState, SandboxSpec, Usage,
                   VolumeBind)
from .gvisor.runsc import GvisorOptions

__all__ = [
    "RUNTIME_NAMES", "Availability", "GvisorOptions", "Runtime", "RuntimeSandbox",
    "RuntimeState",
    "SandboxSpec", "Usage", "VolumeBind", "available_runtimes", "get_runtime",
]

RUNTIME_NAMES = ("gvisor", "namespaces")


def _make(name: str, gvisor: GvisorOptions | None) -> Runtime:
    if name == "gvisor":
        from .gvisor.runtime import GvisorRuntime

        return GvisorRuntime(gvisor)
    if name == "namespaces":
        from .namespaces.runtime import NamespacesRuntime

        return NamespacesRuntime()
    raise InvalidArgumentError(
        f"unknown runtime {name!r}; choose one of: {', '.join(RUNTIME_NAMES)}")


def available_runtimes(runtimes: Mapping[str, Runtime] | None = None,
                       gvisor: GvisorOptions | None = None
                       ) -> dict[str, tuple[Runtime, Availability]]:
    """Every known runtime (or each of ``runtimes``) with its probe result, strongest first.

    ``gvisor``: the gvisor runtime's options (default: from the environment).
    """
    found = (dict(runtimes) if runtimes is not None
             else {n: _make(n, gvisor) for n in RUNTIME_NAMES})
    ordered = sorted(found.values(), key=lambda r: -r.strength)
    return {r.name: (r, r.check()) for r in ordered}


def get_runtime(name: str | None, runtimes: Mapping[str, Runtime] | None = None,
                gvisor: GvisorOptions | None = None) -> Runtime:
    """The named runtime if it works here; with None, the strongest one that works.

    ``runtimes``: choose among these instead of the known ones (a node built with its own,
    see :class:`corral.node.Node`); ``gvisor``: the gvisor runtime's options.
    """
    if name is not None:
        if runtimes is not None and name not in runtimes:
            raise InvalidArgumentError(
                f"unknown runtime {name!r}; choose one of: {', '.join(runtimes)}")
        runtime = runtimes[name] if runtimes is not None else _make(name, gvisor)
        status = runtime.check()
        if not status.ok:
            raise RuntimeUnavailableError(
                f"runtime {name!r} does not work on this host: {status.detail}"
                + (f"; to fix: {status.fix}" if status.fix else ""))
        return runtime
    for runtime, status in available_runtimes(runtimes, gvisor).values():
        if status.ok:
            return runtime
    raise RuntimeUnavailableError("no sandbox runtime works on this host; run `corral doctor`")
