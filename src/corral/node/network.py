"""Sandbox network policies on a node: checks, slots, set-up and updates.

A sandbox created with ``network="none"`` (the default) costs nothing here: its runtime
gives it loopback only, as before. Any other policy gets a slot of the node's pool and a
network namespace with a veth pair and its own nftables chain
(:mod:`corral.runtime._net_unsafe`); the runtime starts the sandbox in that namespace and
removes it with the sandbox. The policy and slot are kept in the runtime handle's
``extra`` (so in the sandbox's record), where a restarted node finds them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from corral.api import models
from corral.api.contract import NetworkArg
from corral.api.errors import InvalidArgumentError, ResourceExhaustedError, SandboxError
from corral.api.network import NetOperator, NetworkPolicy
from corral.runtime import host

if TYPE_CHECKING:
    from .sandbox import NodeSandbox

log = logging.getLogger(__name__)

#: Where a sandbox's network lives in its runtime handle's ``extra``.
EXTRA_KEY = "net"
_SLOT_TRIES = 64


def policy_of(value: NetworkArg | NetworkPolicy | None) -> NetworkPolicy:
    """A policy from what a caller gave: a policy, ``"none"``/``"all"``, allow/deny lists
    (a mapping or :class:`~corral.api.models.NetworkLists`)."""
    if isinstance(value, NetworkPolicy):
        return value
    if isinstance(value, models.NetworkLists):
        return value.to_policy()
    if isinstance(value, Mapping):
        return NetworkPolicy.parse({k: list(v) if isinstance(v, (list, tuple)) else v
                                    for k, v in value.items()})
    return NetworkPolicy.parse(value)


class NodeNetwork:
    """The node's side of sandbox networking: the operator's rules and the host table."""

    def __init__(self, operator: NetOperator, node_key: str) -> None:
        self.operator = operator
        self._node_key = node_key
        self._table_ready = False
        self._lock = asyncio.Lock()

    def check(self, policy: NetworkPolicy) -> NetworkPolicy:
        """``policy`` if this node can enforce it; InvalidArgumentError naming the rule
        it breaks otherwise."""
        return self.operator.check(policy)

    async def attach(self, policy: NetworkPolicy) -> host.SandboxNet:
        """A new namespace, veth pair and chain enforcing ``policy``."""
        async with self._lock:  # one slot search at a time in this node
            if not self._table_ready:
                await asyncio.to_thread(host.ensure_net_table, self._node_key,
                                        self.operator.denied())
                self._table_ready = True
            taken = await asyncio.to_thread(host.taken_net_slots)
            free = (i for i in range(host.net_slots(self.operator.pool)) if i not in taken)
            for _, index in zip(range(_SLOT_TRIES), free, strict=False):
                net = host.SandboxNet.at(self.operator.pool, index, self._node_key)
                try:
                    await asyncio.to_thread(host.create_net, net, self._node_key, policy)
                except FileExistsError:
                    continue  # another node took it meanwhile
                except OSError as exc:
                    raise SandboxError(f"setting up the sandbox's network failed: {exc}"
                                       ) from exc
                return net
        raise ResourceExhaustedError(f"no free address in the sandbox pool "
                                     f"{self.operator.pool}; stop some networked sandboxes")

    async def update(self, sandbox: NodeSandbox, policy: NetworkPolicy) -> NetworkPolicy:
        """Replace a running sandbox's policy; new connections see it at once."""
        policy = self.check(policy)
        recorded = sandbox.handle.extra.get(EXTRA_KEY)
        if not isinstance(recorded, dict):
            raise InvalidArgumentError(
                f"sandbox {sandbox.id} was created without a network, so it has no interface "
                "to open; create it with a network policy (an empty allow list gives it "
                "one that you can open later)")
        sandbox.channel()  # a stopped sandbox says so, with why
        net = host.SandboxNet.at(self.operator.pool, int(recorded["index"]), self._node_key)
        await asyncio.to_thread(host.update_net, net, self._node_key, policy)
        recorded["policy"] = policy.to_wire()
        sandbox.persist()
        return policy


class SandboxNetwork:
    """A sandbox's network face: its policy now, and updates (``sandbox.network``)."""

    def __init__(self, sandbox: NodeSandbox, network: NodeNetwork) -> None:
        self._sandbox = sandbox
        self._network = network

    @property
    def policy(self) -> NetworkPolicy:
        """What it may reach now (``none``: loopback only)."""
        return recorded_policy(self._sandbox.handle.extra)

    async def get(self) -> models.NetworkInfo:
        """Its policy as the API describes it."""
        return models.NetworkInfo(network=models.network_spec(self.policy))

    async def update(self, network: NetworkArg) -> models.NetworkInfo:
        """Replace its policy; new connections see the new one at once, open ones go on.

        ``network``: ``"none"`` (nothing but loopback), ``"all"`` or
        ``{"allow": [...], "deny": [...]}``; the sandbox must have been created with a
        policy other than ``none`` (that is what gives it an interface).
        """
        policy = await self._network.update(self._sandbox, policy_of(network))
        return models.NetworkInfo(network=models.network_spec(policy))


def recorded_policy(extra: dict[str, object]) -> NetworkPolicy:
    """The policy a runtime handle's ``extra`` records (``none`` if it has none)."""
    recorded = extra.get(EXTRA_KEY)
    if not isinstance(recorded, dict):
        return NetworkPolicy()
    try:
        return NetworkPolicy.parse(recorded.get("policy"))
    except InvalidArgumentError:
        log.error("a sandbox record's network policy does not parse; reading it as none")
        return NetworkPolicy()


def record(net: host.SandboxNet, policy: NetworkPolicy) -> dict[str, object]:
    """What a runtime handle's ``extra`` keeps of a sandbox's network."""
    return {"index": net.index, "netns": net.netns, "policy": policy.to_wire()}
