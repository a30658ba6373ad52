"""Sandbox networking on the host: network namespaces, veth pairs and nftables. Root only.

A sandbox with a network policy gets a network namespace of its own (``/run/netns/<name>``)
with one end of a veth pair in it (``10.x.y.2/30``-style addresses from the node's pool,
default route via the host end) and loopback up. The sandbox's processes (namespaces
runtime) or gVisor's netstack (gvisor runtime) use that namespace; nothing in it can change
its configuration: the namespace belongs to the host's user namespace and sandboxes have no
capability there.

Enforcement is on the host side of the veth, in one nftables table, ``inet corral``, shared
by every node of the host (each node's names carry its key):

* ``forward``: packets from a sandbox interface (``cxh*``) that belong to a connection the
  sandbox opened and the policy let through go on; a new one jumps to its sandbox's chain
  (``s<index>``, through the ``sandboxes`` verdict map) and is rejected if that chain does
  not accept it. Nothing opens a connection *into* a sandbox interface.
* ``s<index>``: the sandbox's own source address only (no spoofing), no IPv6, never the
  node's denied set (``d_<node key>``: private, link-local and metadata, loopback, the
  sandboxes' pool, the operator's deny list, less what the operator opened), then the
  tenant's deny entries, then its allow entries (or everything, for ``all``), then reject.
  Each refusal goes through one of the node's ``r_<node key>_<reason>`` chains, which
  logs the packet to the node's NFLOG group (a bounded number a second per sandbox,
  :mod:`._nflog`) and then refuses it: the node puts it in the sandbox's egress log.
* ``input``: nothing from a sandbox interface reaches the host itself (its services, the
  Corral server) but the node's resolver and proxy on its gateway; the rest is logged
  (``host``) and dropped.
* ``postrouting``: what leaves from a sandbox interface through any other is masqueraded.

A policy update rewrites the sandbox's chain in one nftables transaction: new connections
see the new rules at once; open ones keep going. IPv4 forwarding is turned on when the
first networked sandbox starts; if Corral turned it on, the table also drops forwarding
between two interfaces that are not sandboxes', so the host routes nothing it did not before.

A paused sandbox keeps its slot; :func:`reinstate` readies it for a gVisor restore (the
address runsc took out of the namespace put back, or, after a reboot of the host, the
whole slot made again).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from corral.api.errors import InternalError
from corral.api.network import IPNetwork, NetworkPolicy, Rule

from ._nflog import group_of

log = logging.getLogger(__name__)

TABLE = "corral"
#: An empty chain whose presence says Corral turned IPv4 forwarding on (so the table keeps
#: dropping forwarding that is not a sandbox's, whoever rewrites it later).
_GUARD_MARK = "forwarding_by_corral"
#: Where a sandbox's DNS queries and its TCP connections to names go, on its gateway
#: address, when its policy has domain entries (see :mod:`corral.node.egress`).
DNS_PORT = 15353
PROXY_PORT = 15380
NETNS_DIR = Path("/run/netns")
HOST_PREFIX = "cxh"
#: The sandbox side's name inside its namespace.
SANDBOX_IFNAME = "eth0"
_FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
_CLONE_NEWNET = 0x40000000
_MS_BIND, _MS_REC, _MS_SHARED, _MNT_DETACH = 0x1000, 0x4000, 1 << 20, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]


@dataclass(frozen=True)
class SandboxNet:
    """One sandbox's slice of the network: its slot in the pool and what that names.

    Attributes:
        index: the slot; it names the interfaces (``cxh<index>``/``cxs<index>``), the nft
            chain (``s<index>``) and the /30 of the pool (``index * 4``).
        netns: the namespace's name under /run/netns.
        gateway: the host end's address; address: the sandbox's.
    """

    index: int
    netns: str
    gateway: ipaddress.IPv4Address
    address: ipaddress.IPv4Address

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def host_ifname(self) -> str:
        return f"{HOST_PREFIX}{self.index}"

    @property
    def chain(self) -> str:
        return f"s{self.index}"

    @property
    def nat_chain(self) -> str:
        return f"n{self.index}"

    @property
    def counter_out(self) -> str:
        return f"o{self.index}"

    @property
    def counter_in(self) -> str:
        return f"i{self.index}"

    @classmethod
    def at(cls, pool: ipaddress.IPv4Network, index: int, node_key: str) -> SandboxNet:
        base = pool.network_address + index * 4
        return cls(index=index, netns=netns_name(node_key, index), gateway=base + 1,
                   address=base + 2)


def netns_name(node_key: str, index: int) -> str:
    """The name under /run/netns of node ``node_key``'s namespace for slot ``index``."""
    return f"corral-{node_key}-{index}"


def netns_path(node_key: str, index: int) -> Path:
    """Where node ``node_key``'s namespace for slot ``index`` is kept."""
    return NETNS_DIR / netns_name(node_key, index)


def slots(pool: ipaddress.IPv4Network) -> int:
    """How many sandboxes ``pool`` has addresses for (a /30 each)."""
    return pool.num_addresses // 4


# -- the table ---------------------------------------------------------------------------

def ensure_table(node_key: str, denied: Iterable[IPNetwork],
                 pool: ipaddress.IPv4Network) -> None:
    """Make or rewrite the shared table's base chains (one transaction: the sandboxes'
    chains and map elements stay), (re)write this node's denied set, and add its pool to
    the ranges only sandboxes' own interfaces may send to (their gateways' resolvers and
    proxies listen there)."""
    guarded = _nft(f"list chain inet {TABLE} {_GUARD_MARK}", check=False)[0] == 0
    if not guarded and _FORWARDING.read_text().strip() != "1":
        guarded = True  # Corral turns routing on: it routes sandboxes' traffic, nothing else
    h = HOST_PREFIX
    base = f"""add table inet {TABLE}
add map inet {TABLE} sandboxes {{ type ifname : verdict; }}
add map inet {TABLE} sandbox_nat {{ type ifname : verdict; }}
add map inet {TABLE} sandbox_out {{ type ifname : counter; }}
add map inet {TABLE} sandbox_in {{ type ifname : counter; }}
add map inet {TABLE} sandbox_host {{ type ifname : verdict; }}
add set inet {TABLE} pools {{ type ipv4_addr; flags interval; auto-merge; }}
add element inet {TABLE} pools {{ {pool} }}
add chain inet {TABLE} forward {{ type filter hook forward priority filter - 10; policy accept; }}
add chain inet {TABLE} input {{ type filter hook input priority filter - 10; policy accept; }}
add chain inet {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain inet {TABLE} forward
flush chain inet {TABLE} input
flush chain inet {TABLE} prerouting
flush chain inet {TABLE} postrouting
"""
    if guarded:
        base += f"add chain inet {TABLE} {_GUARD_MARK}\n"
        base += f'add rule inet {TABLE} forward iifname != "{h}*" oifname != "{h}*" drop\n'
    base += f"""add rule inet {TABLE} forward iifname "{h}*" counter name iifname map @sandbox_out
add rule inet {TABLE} forward oifname "{h}*" counter name oifname map @sandbox_in
add rule inet {TABLE} forward iifname "{h}*" ct state established,related accept
add rule inet {TABLE} forward iifname "{h}*" iifname vmap @sandboxes
add rule inet {TABLE} forward iifname "{h}*" reject with icmpx admin-prohibited
add rule inet {TABLE} forward oifname "{h}*" ct state established,related accept
add rule inet {TABLE} forward oifname "{h}*" drop
add rule inet {TABLE} input iifname != "{h}*" iifname != "lo" ip daddr @pools drop
add rule inet {TABLE} input iifname "{h}*" ct state established,related accept
add rule inet {TABLE} input iifname "{h}*" ct status dnat accept
add rule inet {TABLE} input iifname "{h}*" iifname vmap @sandbox_host
add rule inet {TABLE} input iifname "{h}*" drop
add rule inet {TABLE} prerouting iifname "{h}*" iifname vmap @sandbox_nat
add rule inet {TABLE} postrouting iifname "{h}*" oifname != "{h}*" masquerade
"""
    v4 = sorted(str(n) for n in denied if n.version == 4)
    name = _denied_set(node_key)
    script = [base, f"add set inet {TABLE} {name} {{ type ipv4_addr; flags interval; "
                    "auto-merge; }", f"flush set inet {TABLE} {name}",
              *_refusals(node_key)]
    if v4:
        script.append(f"add element inet {TABLE} {name} {{ {', '.join(v4)} }}")
    _apply(script)
    if _FORWARDING.read_text().strip() != "1":
        _FORWARDING.write_text("1\n")


def _denied_set(node_key: str) -> str:
    return f"d_{node_key}"


#: Why a sandbox's packet is refused: the log prefix, and the chain of this node's that
#: logs it (a bounded number a second per sandbox) and refuses it. ``host``: sent to the
#: host itself (any of its addresses) outside the resolver and proxy.
REFUSALS = ("spoofed", "ipv6", "always-denied", "denied", "not-allowed", "host")
#: Refused packets logged per sandbox: a rate a second, and a burst.
LOG_RATE, LOG_BURST = 20, 40


def _refusal(node_key: str, reason: str) -> str:
    return f"r_{node_key}_{reason.replace('-', '_')}"


def _refusals(node_key: str) -> list[str]:
    """This node's refusing chains, each: log (NFLOG, :mod:`._nflog`), then refuse."""
    meter = f"l_{node_key}"
    script = [f"add set inet {TABLE} {meter} {{ type ifname; flags dynamic; timeout 60s; "
              "size 65535; }"]
    for reason in REFUSALS:
        chain = _refusal(node_key, reason)
        verdict = ("drop" if reason in ("spoofed", "host")
                   else "reject with icmpx admin-prohibited")
        script += [f"add chain inet {TABLE} {chain}", f"flush chain inet {TABLE} {chain}",
                   f"add rule inet {TABLE} {chain} add @{meter} {{ iifname limit rate "
                   f"{LOG_RATE}/second burst {LOG_BURST} packets }} log prefix \"{reason}\" "
                   f"group {group_of(node_key)}",
                   f"add rule inet {TABLE} {chain} {verdict}"]
    return script


# -- one sandbox -------------------------------------------------------------------------

def create(net: SandboxNet, node_key: str, policy: NetworkPolicy) -> None:
    """Make ``net``'s namespace, veth pair and chain, with ``policy``'s rules.

    Raises FileExistsError if another node holds the slot (its interface exists): the
    caller takes another. Whatever was made is removed again if a later step fails.
    """
    from pyroute2 import IPRoute

    try:
        _in_new_netns(net, functools.partial(_configure_inside, net))
        # No IPv6 on the host end (defence in depth: the rules drop it too), set before the
        # link is up, so it never gets even a link-local address.
        Path(f"/proc/sys/net/ipv6/conf/{net.host_ifname}/disable_ipv6").write_text("1\n")
        with IPRoute() as ipr:
            host = ipr.link_lookup(ifname=net.host_ifname)[0]
            ipr.addr("add", index=host, address=str(net.gateway), prefixlen=30)
            ipr.link("set", index=host, state="up")
        # Flushed once made: a chain a crash left behind (its namespace gone, its interface
        # with it, so no node holds the slot) would otherwise keep its old rules first.
        _apply([f"add chain inet {TABLE} {net.chain}",
                f"add chain inet {TABLE} {net.nat_chain}",
                f"flush chain inet {TABLE} {net.chain}",
                f"flush chain inet {TABLE} {net.nat_chain}",
                f"add counter inet {TABLE} {net.counter_out}",
                f"add counter inet {TABLE} {net.counter_in}",
                f"add element inet {TABLE} sandbox_out {{ \"{net.host_ifname}\" : "
                f"\"{net.counter_out}\" }}",
                f"add element inet {TABLE} sandbox_in {{ \"{net.host_ifname}\" : "
                f"\"{net.counter_in}\" }}",
                *_rules(net, node_key, policy),
                f"add element inet {TABLE} sandboxes {{ \"{net.host_ifname}\" : jump "
                f"{net.chain} }}",
                f"add element inet {TABLE} sandbox_nat {{ \"{net.host_ifname}\" : jump "
                f"{net.nat_chain} }}",
                f"add element inet {TABLE} sandbox_host {{ \"{net.host_ifname}\" : goto "
                f"{_refusal(node_key, 'host')} }}"])
    except FileExistsError:
        _remove_netns(net)  # the slot's interface is another node's: leave it alone
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            destroy(net)
        raise


def _configure_inside(net: SandboxNet, host_netns: int) -> None:
    """In the new namespace: loopback up, the veth pair (its host end sent to
    ``host_netns``), the sandbox end's address and default route."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        try:
            ipr.link("add", ifname=SANDBOX_IFNAME, kind="veth",
                     peer={"ifname": net.host_ifname, "net_ns_fd": host_netns})
        except Exception as exc:  # pyroute2's NetlinkError; EEXIST: the name is taken
            if getattr(exc, "code", None) == errno.EEXIST:
                raise FileExistsError(net.host_ifname) from None
            raise
        inner = ipr.link_lookup(ifname=SANDBOX_IFNAME)[0]
        # This thread is in the new namespace: /proc/sys/net is its.
        Path(f"/proc/sys/net/ipv6/conf/{SANDBOX_IFNAME}/disable_ipv6").write_text("1\n")
        ipr.addr("add", index=inner, address=str(net.address), prefixlen=30)
        ipr.link("set", index=inner, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=str(net.gateway))


def reinstate(net: SandboxNet, node_key: str, policy: NetworkPolicy) -> bool:
    """Make ``net`` ready for its paused sandbox's resume (a gVisor restore needs it; a
    frozen namespaces sandbox finds nothing changed).

    Its namespace still there: the sandbox end's address and default route are put back
    (:func:`readdress`). Gone (a reboot of the host takes every namespace, veth and rule
    with it): the whole slot is made again as :func:`create` makes it, at the same index,
    so the sandbox keeps its address and gateway. Returns whether it was made again.
    Raises FileExistsError if it was gone and its interface is another node's now.
    """
    if os.path.ismount(net.netns_path):
        readdress(net)
        return False
    if net.index in taken_slots():
        raise FileExistsError(net.host_ifname)
    _remove_netns(net)  # a stale file at its path (never a mount: checked above)
    create(net, node_key, policy)
    return True


def readdress(net: SandboxNet) -> None:
    """Put the sandbox end's address and default route back in ``net``'s namespace.

    runsc moves them into gVisor's own network stack when it starts a sandbox on the
    namespace, and deletes them from the namespace; a restore takes them over the same
    way, so before one into the same namespace they must be there again. Idempotent:
    where they are (a namespaces sandbox's kernel keeps them), nothing changes. 1-3 ms.
    """
    _in_netns(net, functools.partial(_readdress_inside, net))


def _readdress_inside(net: SandboxNet) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=SANDBOX_IFNAME)
        if not found:
            raise InternalError(f"the network namespace {net.netns} has lost its interface "
                                f"{SANDBOX_IFNAME}; kill the sandbox and start a new one")
        inner = found[0]
        ipr.addr("replace", index=inner, address=str(net.address), prefixlen=30)
        ipr.link("set", index=inner, state="up")
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(net.gateway))


def _in_netns(net: SandboxNet, work: Callable[[], None]) -> None:
    """Run ``work`` in ``net``'s (existing) namespace, from a thread of its own that joins
    it (network namespaces are per thread) and ends with it, so no other work runs there."""
    target = os.open(net.netns_path, os.O_RDONLY | os.O_CLOEXEC)

    def body() -> None:
        _check(_libc.setns(target, _CLONE_NEWNET), f"joining the namespace {net.netns}")
        work()

    try:
        _on_own_thread(f"corral-netns-{net.index}", body)
    finally:
        os.close(target)


def _on_own_thread(name: str, body: Callable[[], None]) -> None:
    """Run ``body`` on a thread of its own (whose network namespace it may change) and
    wait for it; what it raised is raised here."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _in_new_netns(net: SandboxNet, configure: Callable[[int], None]) -> None:
    """Make ``net``'s namespace from a thread of its own and run ``configure(host_netns_fd)``
    in it: the namespace is the thread's alone (network namespaces are per thread), kept by
    a bind mount at its path, and the thread ends with it, so no other work ever runs in
    it. Much cheaper than forking a helper, as ``ip netns add`` and pyroute2 do."""
    _prepare_netns_dir()
    path = net.netns_path
    host = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def body() -> None:
        _check(_libc.unshare(_CLONE_NEWNET), "making a network namespace")
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
        _check(_libc.mount(b"/proc/thread-self/ns/net", bytes(path), None, _MS_BIND, None),
               "keeping the network namespace")
        configure(host)

    try:
        _on_own_thread(f"corral-netns-{net.index}", body)
    finally:
        os.close(host)


def _prepare_netns_dir() -> None:
    """/run/netns as ``ip netns`` makes it: a shared bind mount of itself, so namespaces
    kept there are seen from mount namespaces made later (runsc's). As iproute2 does it:
    making it shared fails (EINVAL) only while it is not a mount point yet; only then is it
    bind-mounted onto itself, once (a bind over a shared mount would multiply)."""
    NETNS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    if _libc.mount(b"none", bytes(NETNS_DIR), None, _MS_SHARED | _MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, "sharing /run/netns")
    _check(_libc.mount(bytes(NETNS_DIR), bytes(NETNS_DIR), None, _MS_BIND | _MS_REC, None),
           "bind-mounting /run/netns")
    _check(_libc.mount(b"none", bytes(NETNS_DIR), None, _MS_SHARED | _MS_REC, None),
           "sharing /run/netns")


def update(net: SandboxNet, node_key: str, policy: NetworkPolicy) -> None:
    """Replace ``net``'s rules with ``policy``'s, atomically."""
    _apply([f"flush chain inet {TABLE} {net.chain}", f"flush chain inet {TABLE} {net.nat_chain}",
            *_rules(net, node_key, policy)])


def destroy(net: SandboxNet) -> None:
    """Remove ``net``'s chain and namespace (which takes the veth pair with it). Idempotent."""
    steps = [f"delete element inet {TABLE} sandboxes {{ \"{net.host_ifname}\" }}",
             f"delete element inet {TABLE} sandbox_nat {{ \"{net.host_ifname}\" }}",
             f"delete element inet {TABLE} sandbox_out {{ \"{net.host_ifname}\" }}",
             f"delete element inet {TABLE} sandbox_in {{ \"{net.host_ifname}\" }}",
             f"delete element inet {TABLE} sandbox_host {{ \"{net.host_ifname}\" }}",
             f"delete chain inet {TABLE} {net.chain}",
             f"delete chain inet {TABLE} {net.nat_chain}",
             f"delete counter inet {TABLE} {net.counter_out}",
             f"delete counter inet {TABLE} {net.counter_in}"]
    if _nft("\n".join(steps) + "\n", check=False)[0] != 0:  # some were gone already
        for step in steps:
            _nft(step, check=False)
    # Its entry in the node's log meter, if it ever had a packet refused (else this fails).
    node_key = net.netns.removeprefix("corral-").rpartition("-")[0]
    _nft(f"delete element inet {TABLE} l_{node_key} {{ \"{net.host_ifname}\" }}",
         check=False)
    _remove_netns(net)


def _remove_netns(net: SandboxNet) -> None:
    """Unmount and delete the namespace's path. The kernel frees the namespace, and the veth
    pair in it, once nothing uses it any more (the sandbox's processes are gone by now), a
    few milliseconds later; until then the slot counts as taken. Deleting the veth here
    instead would make every teardown wait ~25 ms for the kernel."""
    path = net.netns_path
    if os.path.ismount(path):
        _check(_libc.umount2(bytes(path), _MNT_DETACH), "unmounting the network namespace")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _check(result: int, what: str) -> int:
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result


def traffic(net: SandboxNet) -> tuple[int, int]:
    """Bytes (in, out) that crossed ``net``'s veth pair so far (0 if it is gone)."""
    found = []
    for name in (net.counter_in, net.counter_out):
        status, output, _ = _nft(f"list counter inet {TABLE} {name}", check=False)
        match = _BYTES.search(output) if status == 0 else None
        found.append(int(match.group(1)) if match else 0)
    return found[0], found[1]


_BYTES = re.compile(r"\bbytes (\d+)")


def leftovers(node_key: str) -> list[int]:
    """Slots of this node's namespaces still on the host (for sweeping after a crash)."""
    prefix = f"corral-{node_key}-"
    if not NETNS_DIR.is_dir():
        return []
    return sorted(int(p.name[len(prefix):]) for p in NETNS_DIR.iterdir()
                  if p.name.startswith(prefix) and p.name[len(prefix):].isdigit())


def taken_slots() -> set[int]:
    """Slots whose host interface exists, whichever node made them."""
    found = set()
    with contextlib.suppress(OSError):
        for entry in Path("/sys/class/net").iterdir():
            name = entry.name
            if name.startswith(HOST_PREFIX) and name[len(HOST_PREFIX):].isdigit():
                found.add(int(name[len(HOST_PREFIX):]))
    return found


def open_netns(path: Path) -> int:
    """A descriptor of the network namespace at ``path``, for :func:`enter`."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def enter(fd: int) -> None:
    """In a freshly forked child, while still host root: join the network namespace."""
    _check(_libc.setns(fd, _CLONE_NEWNET), "joining the sandbox's network namespace")


# -- rules -------------------------------------------------------------------------------

def _rules(net: SandboxNet, node_key: str, policy: NetworkPolicy) -> list[str]:
    chain = f"add rule inet {TABLE} {net.chain}"

    def refuse(reason: str) -> str:
        return f"goto {_refusal(node_key, reason)}"

    rules = [f"{chain} ip saddr != {net.address} {refuse('spoofed')}",
             f"{chain} meta nfproto ipv6 {refuse('ipv6')}",
             f"{chain} ip daddr @{_denied_set(node_key)} {refuse('always-denied')}"]
    rules += [f"{chain} {_match(rule)} {refuse('denied')}" for rule in policy.deny
              if _v4(rule)]
    if policy.mode == "all":
        rules.append(f"{chain} accept")
    else:
        rules += [f"{chain} {_match(rule)} accept" for rule in policy.allow if _v4(rule)]
    rules.append(f"{chain} {refuse('not-allowed')}")
    # Names go through the node's resolver (corral.node.egress): every DNS query, whatever
    # server it was sent to. With domain entries, every other TCP connection goes to its
    # proxy too, but those the policy allows by address, which go straight on.
    nat = f"add rule inet {TABLE} {net.nat_chain}"
    rules.append(f"{nat} meta l4proto {{ tcp, udp }} th dport 53 "
                 f"dnat ip to {net.gateway}:{DNS_PORT}")
    if policy.domains():
        rules += [f"{nat} {_match(rule)} return" for rule in policy.allow if _v4(rule)]
        rules += [f"{nat} meta l4proto tcp dnat ip to {net.gateway}:{PROXY_PORT}"]
    return rules


def _v4(rule: Rule) -> bool:
    return rule.network is not None and rule.network.version == 4


def _match(rule: Rule) -> str:
    assert rule.network is not None
    text = f"ip daddr {rule.network}"
    if rule.port is not None:
        text += f" meta l4proto {{ tcp, udp }} th dport {rule.port}"
    return text


def _apply(script: list[str]) -> None:
    """Run ``script`` as one nftables transaction: all of it or none."""
    _nft("\n".join(script) + "\n")


def _nft(command: str, check: bool = True) -> tuple[int, str, str]:
    """Run nftables ``command`` in process: (status, output, error). Raises InternalError
    with nftables' message on failure when ``check``."""
    status, output, error = _library().run(command)
    if check and status != 0:
        first = command.strip().splitlines()[0][:80]
        raise InternalError(f"nftables refused `{first}`: {error.strip()[-500:]}")
    return status, output, error


class _Nftables:
    """libnftables through ctypes: what ``nft -f`` does, without a process per change
    (0.4 ms against 2.6 ms a call here). One context, one caller at a time."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        except OSError:
            raise InternalError("libnftables is not installed (the nftables package); "
                                "scripts/install installs it") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise InternalError("libnftables could not make a context")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, command: str) -> tuple[int, str, str]:
        with self._lock:
            status = self._lib.nft_run_cmd_from_buffer(self._ctx, command.encode())
            output = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return int(status), output.decode(errors="replace"), error.decode(errors="replace")


@functools.cache
def _library() -> _Nftables:
    return _Nftables()
