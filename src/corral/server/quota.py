"""Per-tenant caps: what one tenant may hold at once, and the creates under way.

One mechanism for the single server (:class:`corral.server.services.SandboxService`,
counting its live sandboxes) and a cluster's API server
(:class:`corral.cluster.control.Cluster`, counting the shared records): each counts what
the tenant holds, adds what :class:`Underway` holds for it, and asks
:meth:`TenantQuota.check` before anything starts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from corral.api.errors import InvalidArgumentError, ResourceExhaustedError

#: Bounds of the per-tenant caps (0: none of its own).
TENANT_MAX_SANDBOXES = 100_000
TENANT_MAX_GPUS = 1024


@dataclass(frozen=True)
class TenantQuota:
    """What one tenant may hold at once on this server (in cluster mode, on the cluster),
    whichever of its keys asks. A create (or fork, or resume of a GPU sandbox) past either
    is refused with ``429 resource_exhausted`` naming the cap; nothing starts.

    Attributes:
        sandboxes: live sandboxes, paused ones included (``CORRAL_TENANT_MAX_SANDBOXES``,
            0 to 100000; default 0: no cap but the node's ``max_sandboxes``).
        gpus: GPUs held by the tenant's sandboxes (``CORRAL_TENANT_MAX_GPUS``, 0 to 1024;
            default 0: no cap but the GPUs there are). A paused namespaces sandbox holds
            none; in cluster mode every live sandbox counts its GPUs.
    """

    sandboxes: int = 0
    gpus: int = 0

    def __post_init__(self) -> None:
        for name, value, high in (("CORRAL_TENANT_MAX_SANDBOXES", self.sandboxes,
                                   TENANT_MAX_SANDBOXES),
                                  ("CORRAL_TENANT_MAX_GPUS", self.gpus, TENANT_MAX_GPUS)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise InvalidArgumentError(f"{name} must be a whole number from 0 (no cap) "
                                           f"to {high}, not {value!r:.40}")

    def check(self, held: tuple[int, int], more: tuple[int, int], where: str) -> None:
        """Refuse ``more`` (sandboxes, GPUs) for a tenant that ``held`` them already, past a
        cap: ``resource_exhausted`` naming it (``where``: "server" or "cluster")."""
        sandboxes, gpus = held[0] + more[0], held[1] + more[1]
        if self.sandboxes and more[0] and sandboxes > self.sandboxes:
            raise ResourceExhaustedError(
                f"your sandboxes would number {sandboxes}, past this {where}'s cap of "
                f"{self.sandboxes} a tenant (CORRAL_TENANT_MAX_SANDBOXES); kill some first")
        if self.gpus and more[1] and gpus > self.gpus:
            raise ResourceExhaustedError(
                f"your sandboxes would hold {gpus} GPUs, past this {where}'s cap of "
                f"{self.gpus} a tenant (CORRAL_TENANT_MAX_GPUS); kill "
                + ("or pause " if where == "server" else "") + "a GPU sandbox first")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TenantQuota:
        env = os.environ if env is None else env
        values = {}
        for field_name, name in (("sandboxes", "CORRAL_TENANT_MAX_SANDBOXES"),
                                 ("gpus", "CORRAL_TENANT_MAX_GPUS")):
            raw = env.get(name, "").strip()
            try:
                values[field_name] = int(raw) if raw else 0
            except ValueError:
                raise InvalidArgumentError(f"{name} must be a whole number from 0 (no cap), "
                                           f"not {raw!r:.40}") from None
        return cls(**values)


class Underway:
    """Sandboxes and GPUs of creates (and resumes) under way, by tenant: counted against
    the caps until the sandboxes are counted as held."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, tuple[int, int]] = {}

    def of(self, tenant: str) -> tuple[int, int]:
        return self._by_tenant.get(tenant, (0, 0))

    @contextlib.contextmanager
    def adding(self, tenant: str, sandboxes: int, gpus: int) -> Iterator[None]:
        before = self.of(tenant)
        self._by_tenant[tenant] = (before[0] + sandboxes, before[1] + gpus)
        try:
            yield
        finally:
            after = self.of(tenant)
            left = (after[0] - sandboxes, after[1] - gpus)
            if left == (0, 0):
                del self._by_tenant[tenant]
            else:
                self._by_tenant[tenant] = left
