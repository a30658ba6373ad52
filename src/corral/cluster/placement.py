"""Where a new sandbox goes: a pure function of the nodes as the control plane sees them.

A node can take a sandbox if it is ready (answering, not cordoned or draining), has every
label the request selects, has room under its caps for the sandbox's CPUs and memory (the
sum of its sandboxes' limits against its cores times ``cpu_overcommit`` and its memory),
and holds fewer than its ``max_sandboxes``. Among those, in order:

1. a warm pool of the image with a sandbox ready (a hand-out takes tens of milliseconds
   where a cold start takes hundreds);
2. the image already on the node (no build or import before the start);
3. the fewest sandboxes of the same tenant (one tenant's sandboxes spread across nodes,
   so one node's loss takes a share of each tenant, not all of one);
4. the most memory left, then the name (so that equal nodes are chosen the same way).

A sandbox asking for GPUs goes only to a node with that many free (of the model, if it
names one); one asking for none goes to a node without GPUs when there is one that fits.

None can: :class:`~corral.api.errors.ResourceExhaustedError`, saying what is short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from corral.api.errors import ResourceExhaustedError


@dataclass
class NodeView:
    """One node as the last heartbeat described it, plus what was placed on it since."""

    name: str
    url: str
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = True
    cordoned: bool = False
    draining: bool = False
    cpus: float = 1.0
    memory_mib: int = 0
    max_sandboxes: int = 1000
    images: frozenset[str] = frozenset()
    #: image -> sandboxes ready in its warm pools
    pool_ready: dict[str, int] = field(default_factory=dict)
    #: sandbox id -> (tenant, cpus, memory MiB)
    sandboxes: dict[str, tuple[str, float, int]] = field(default_factory=dict)
    #: the PEM of the CA its node server's certificate is signed by
    ca: str = ""
    #: its GPUs: (name, free now)
    gpus: tuple[tuple[str, bool], ...] = ()

    def free_gpus(self, model: str | None) -> int:
        return sum(1 for name, free in self.gpus
                   if free and (model is None or model.casefold() in name.casefold()))

    def allocated(self) -> tuple[float, int]:
        cpus = sum(s[1] for s in self.sandboxes.values())
        memory = sum(s[2] for s in self.sandboxes.values())
        return cpus, memory


@dataclass(frozen=True)
class Want:
    tenant: str
    image: str
    cpus: float
    memory_mib: int
    selector: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 0
    gpu_model: str | None = None


def place(nodes: Sequence[NodeView], want: Want, *, cpu_overcommit: float = 4.0) -> NodeView:
    """The node ``want`` goes to (see the module's docstring)."""
    fits: list[NodeView] = []
    why: dict[str, int] = {"not ready": 0, "cordoned or draining": 0, "labels": 0,
                           "CPU": 0, "memory": 0, "sandbox count": 0, "GPUs": 0}
    for node in nodes:
        cpus, memory = node.allocated()
        if not node.ready:
            why["not ready"] += 1
        elif node.cordoned or node.draining:
            why["cordoned or draining"] += 1
        elif any(node.labels.get(k) != v for k, v in want.selector.items()):
            why["labels"] += 1
        elif cpus + want.cpus > node.cpus * cpu_overcommit:
            why["CPU"] += 1
        elif memory + want.memory_mib > node.memory_mib:
            why["memory"] += 1
        elif len(node.sandboxes) >= node.max_sandboxes:
            why["sandbox count"] += 1
        elif want.gpus and node.free_gpus(want.gpu_model) < want.gpus:
            why["GPUs"] += 1
        else:
            fits.append(node)
    if not fits:
        short = ", ".join(f"{count} {reason}" for reason, count in why.items() if count)
        raise ResourceExhaustedError(
            f"no node can take a sandbox of {want.cpus:g} CPU and {want.memory_mib} MiB"
            + (f" and {want.gpus} {want.gpu_model or ''} GPU".replace("  ", " ")
               if want.gpus else "")
            + (f" with labels {dict(want.selector)}" if want.selector else "")
            + f" ({len(nodes)} nodes: {short or 'none joined'}); try again when sandboxes "
            "end, or add or uncordon nodes (`corral node ls`)")

    def rank(node: NodeView) -> tuple[int, int, int, int, str]:
        same_tenant = sum(1 for s in node.sandboxes.values() if s[0] == want.tenant)
        free = node.memory_mib - node.allocated()[1]
        return (0 if node.pool_ready.get(want.image, 0) > 0 else 1,
                0 if want.image in node.images else 1, same_tenant, -free, node.name)

    if not want.gpus:  # keep GPU nodes for those that need them, when there is a choice
        plain = [node for node in fits if not node.gpus]
        fits = plain or fits
    return min(fits, key=rank)
