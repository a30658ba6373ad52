"""Sandbox network policies on a node: checks, slots, set-up and updates.

A sandbox created with ``network="none"`` (the default) costs nothing here: its runtime
gives it loopback only, as before. Any other policy gets a slot of the node's pool and a
network namespace with a veth pair and its own nftables chain
(:mod:`corral.runtime._net_unsafe`); the runtime starts the sandbox in that namespace and
removes it with the sandbox. The policy and slot are kept in the runtime handle's
``extra`` (so in the sandbox's record), where a restarted node finds them.

A paused sandbox keeps its slot: its namespace, veth pair, rules, resolver and proxy stay
(no process, a few kernel objects and two listening sockets), so a resume finds its
address free and its rules as they were. Before each resume the slot is made ready for
the sandbox to come back into it (:meth:`NodeNetwork.reinstate`): gVisor's restore needs
the address runsc took out of the namespace put back, and after a reboot of the host the
whole slot is made again, at the same index.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from datetime import UTC, datetime
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from corral.api import models
from corral.api.contract import NetworkArg
from corral.api.errors import (InternalError, InvalidArgumentError, ResourceExhaustedError,
                               SandboxError)
from corral.api.network import NetOperator, NetworkPolicy
from corral.runtime import host

from .egress import EgressEvent, SandboxEgress
from .lifecycle import SandboxState

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


#: Where the host's interfaces' counters are.
SYS_NET = Path("/sys/class/net")


class NodeNetwork:
    """The node's side of sandbox networking: the operator's rules and the host table."""

    def __init__(self, operator: NetOperator, node_key: str) -> None:
        self.operator = operator
        self._node_key = node_key
        self._table_ready = False
        self._lock = asyncio.Lock()
        #: Resolver and proxy of each networked sandbox, by slot.
        self._egress: dict[int, SandboxEgress] = {}
        #: Verdicts of every sandbox's resolver and proxy so far, by (kind, reason).
        self.verdicts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._closing: set[asyncio.Task[None]] = set()
        self._refused: host.NflogReader | None = None
        self._ifnames: dict[int, int] = {}  # interface index -> slot
        #: Slots of this node's paused sandboxes that are gone from the host (a reboot) and
        #: could not be made again yet: no new sandbox takes them meanwhile.
        self._missing: set[int] = set()

    def egress(self, sandbox: NodeSandbox) -> SandboxEgress | None:
        """The resolver and proxy of ``sandbox`` (None: it has no network)."""
        recorded = sandbox.handle.extra.get(EXTRA_KEY)
        return self._egress.get(recorded["index"]) if isinstance(recorded, dict) else None

    async def serve_names(self, net: host.SandboxNet, policy: NetworkPolicy) -> None:
        """Start or update the resolver and proxy of ``net`` for ``policy`` (and the
        node's reader of refused packets, the first time)."""
        self._read_refusals()
        running = self._egress.get(net.index)
        if running is not None:
            running.policy = policy
            return
        egress = SandboxEgress(str(net.address), str(net.gateway), self.operator.dns
                               or _host_resolver(), self.operator.denied(), policy,
                               host.NET_DNS_PORT, host.NET_PROXY_PORT, self._count)
        await egress.start()
        self._egress[net.index] = egress

    async def traffic(self, sandbox: NodeSandbox) -> tuple[int, int]:
        """Bytes (in, out) ``sandbox`` moved: through its veth pair (the rules count them)
        and through its proxy (which connects for it from the host)."""
        net = self.slot(sandbox.handle.extra)
        if net is None:
            return 0, 0
        bytes_in, bytes_out = await asyncio.to_thread(host.net_traffic, net)
        egress = self._egress.get(net.index)
        if egress is not None:
            bytes_in, bytes_out = bytes_in + egress.bytes_in, bytes_out + egress.bytes_out
        return bytes_in, bytes_out

    def interface_bytes(self, sandbox: NodeSandbox) -> tuple[int, int] | None:
        """Bytes (received, sent) by ``sandbox`` through its interface so far: the host end
        of its veth pair counts them the other way round (what the sandbox sends, the host
        end receives). Everything it moves, its resolver and proxy included; None when it
        has no network (or its pair is gone). Plain reads of sysfs, cheap."""
        net = self.slot(sandbox.handle.extra)
        if net is None:
            return None
        stats = SYS_NET / net.host_ifname / "statistics"
        try:
            host_rx = int((stats / "rx_bytes").read_text())
            host_tx = int((stats / "tx_bytes").read_text())
        except (OSError, ValueError):
            return None
        return host_tx, host_rx

    def _count(self, event: EgressEvent) -> None:
        self.verdicts[event.kind, event.reason] += 1

    def on_state(self, sandbox: NodeSandbox, state: SandboxState) -> None:
        """Lifecycle listener: a stopped sandbox's resolver and proxy go with it."""
        if state is not SandboxState.STOPPED:
            return
        recorded = sandbox.handle.extra.get(EXTRA_KEY)
        if isinstance(recorded, dict) and isinstance(recorded.get("index"), int):
            self._missing.discard(recorded["index"])
        egress = (self._egress.pop(recorded["index"], None)
                  if isinstance(recorded, dict) else None)
        if egress is not None:
            task = asyncio.get_running_loop().create_task(egress.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _read_refusals(self) -> None:
        """Put the packets this node's rules refuse in their sandboxes' egress logs. Where
        the kernel's log group cannot be bound (another process holds it), the rules
        refuse all the same, unlogged; a warning says so."""
        if self._refused is not None:
            return
        reader = host.NflogReader(host.nflog_group(self._node_key), self._on_refused)
        try:
            reader.open()
        except OSError as exc:
            log.warning("refused packets will not be in egress logs: %s", exc)
            self._refused = reader  # tried once; not again
            return
        asyncio.get_running_loop().add_reader(reader.fileno, reader.read)
        self._refused = reader

    def _on_refused(self, packet: host.LoggedPacket) -> None:
        slot = self._ifnames.get(packet.ifindex)
        if slot is None:
            try:
                name = socket.if_indextoname(packet.ifindex)
            except OSError:
                return  # the interface is gone already
            if not name.startswith(host.NET_HOST_PREFIX):
                return
            slot = int(name[len(host.NET_HOST_PREFIX):])
            if len(self._ifnames) > 4096:
                self._ifnames.clear()
            self._ifnames[packet.ifindex] = slot
        egress = self._egress.get(slot)
        if egress is not None:
            egress.refused_packet(packet.reason, packet.address, packet.port)

    async def close(self) -> None:
        """Stop every resolver and proxy (the node is closing)."""
        if self._refused is not None:
            with contextlib.suppress(ValueError, OSError, AssertionError):
                asyncio.get_running_loop().remove_reader(self._refused.fileno)
            self._refused.close()
            self._refused = None
        for egress in list(self._egress.values()):
            await egress.close()
        self._egress.clear()

    def slot(self, extra: dict[str, object]) -> host.SandboxNet | None:
        """The slot a runtime handle's ``extra`` records, or None."""
        recorded = extra.get(EXTRA_KEY)
        if not isinstance(recorded, dict) or not isinstance(recorded.get("index"), int):
            return None
        return host.SandboxNet.at(self.operator.pool, recorded["index"], self._node_key)

    def check(self, policy: NetworkPolicy) -> NetworkPolicy:
        """``policy`` if this node can enforce it; InvalidArgumentError naming the rule
        it breaks otherwise."""
        return self.operator.check(policy)

    async def _ensure_table(self) -> None:
        """The shared table's base chains and this node's sets, once per node (hold
        ``_lock``)."""
        if not self._table_ready:
            await asyncio.to_thread(host.ensure_net_table, self._node_key,
                                    self.operator.denied(), self.operator.pool)
            self._table_ready = True

    async def attach(self, policy: NetworkPolicy) -> host.SandboxNet:
        """A new namespace, veth pair and chain enforcing ``policy``."""
        async with self._lock:  # one slot search at a time in this node
            await self._ensure_table()
            taken = await asyncio.to_thread(host.taken_net_slots) | self._missing
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
                try:
                    await self.serve_names(net, policy)
                except BaseException:
                    await asyncio.shield(asyncio.to_thread(host.destroy_net, net))
                    raise
                return net
        raise ResourceExhaustedError(f"no free address in the sandbox pool "
                                     f"{self.operator.pool}; stop some networked sandboxes")

    async def reinstate(self, sandbox: NodeSandbox) -> None:
        """Make a paused sandbox's slot ready for its resume (nothing for one without a
        network): its address and route back in its namespace (runsc took them out of it,
        and a restore takes them over again), or, where the slot is gone (the host
        rebooted), all of it made again at the same index, as it was; then its resolver
        and proxy serve it.

        Raises ResourceExhaustedError if the slot is gone and another node holds its index
        now, InternalError if it cannot be made; the sandbox then stays paused, and a later
        resume tries again.
        """
        net = self.slot(sandbox.handle.extra)
        if net is None:
            return
        policy = recorded_policy(sandbox.handle.extra)
        async with self._lock:  # no slot search in between: it might take this index
            await self._ensure_table()
            try:
                made = await asyncio.to_thread(host.reinstate_net, net, self._node_key, policy)
            except FileExistsError:
                self._missing.add(net.index)
                raise ResourceExhaustedError(
                    f"sandbox {sandbox.id}: its network (slot {net.index}, {net.address}) is "
                    "gone from the host (a reboot takes it), and another node's sandbox holds "
                    "that slot now; it stays paused: resume it once that sandbox stops, or "
                    "kill it") from None
            except OSError as exc:
                self._missing.add(net.index)
                raise InternalError(f"sandbox {sandbox.id}: making its network ready for the "
                                    f"resume failed: {exc}; it stays paused") from exc
            except SandboxError:
                self._missing.add(net.index)
                raise
            self._missing.discard(net.index)
        if made:
            log.info("sandbox %s: its network (slot %d) was gone, made again", sandbox.id,
                     net.index)
        try:
            await self.serve_names(net, policy)
        except OSError as exc:
            raise InternalError(f"sandbox {sandbox.id}: its resolver and proxy could not start "
                                f"on {net.gateway}: {exc}; it stays paused") from exc

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
        await self.serve_names(net, policy)  # first: the redirect must find them listening
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

    async def events(self) -> models.EgressEvents:
        """Its resolver's and proxy's verdicts, oldest first (the last
        :data:`~corral.node.egress.MAX_EVENTS`): names looked up and connected to, allowed
        or why not. Addresses its rules refuse outright are not in it."""
        egress = self._network.egress(self._sandbox)
        return models.EgressEvents(events=[
            models.EgressEvent(at=datetime.fromtimestamp(e.at, UTC), kind=e.kind,
                               name=e.name, port=e.port, address=e.address,
                               allowed=e.allowed, reason=e.reason)
            for e in (egress.events() if egress is not None else [])])

    def interface_bytes(self) -> tuple[int, int] | None:
        """Bytes (received, sent) through its interface so far; None without a network
        (see :meth:`NodeNetwork.interface_bytes`)."""
        return self._network.interface_bytes(self._sandbox)

    async def get(self) -> models.NetworkInfo:
        """Its policy as the API describes it, and its traffic so far."""
        bytes_in, bytes_out = await self._network.traffic(self._sandbox)
        return models.NetworkInfo(network=models.network_spec(self.policy),
                                  bytes_in=bytes_in, bytes_out=bytes_out)

    async def update(self, network: NetworkArg) -> models.NetworkInfo:
        """Replace its policy; new connections see the new one at once, open ones go on.

        ``network``: ``"none"`` (nothing but loopback), ``"all"`` or
        ``{"allow": [...], "deny": [...]}``; the sandbox must have been created with a
        policy other than ``none`` (that is what gives it an interface).
        """
        await self._network.update(self._sandbox, policy_of(network))
        return await self.get()


def _host_resolver() -> str:
    """The host's first resolver (from /etc/resolv.conf), for sandboxes' names."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                return fields[1]
    raise SandboxError("no resolver for sandboxes' names: the host's /etc/resolv.conf names "
                       "none; set one with corral serve --net-dns ADDR (CORRAL_NET_DNS)")


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
