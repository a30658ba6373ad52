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
* ``input``: nothing from a sandbox interface reaches the host itself (its services, the
  Corral server) except replies to connections the host opened (exposed ports).
* ``postrouting``: what leaves from a sandbox interface through any other is masqueraded.

A policy update rewrites the sandbox's chain in one nftables transaction: new connections
see the new rules at once; open ones keep going. IPv4 forwarding is turned on when the
first networked sandbox starts; if Corral turned it on, the table also drops forwarding
between two interfaces that are not sandboxes', so the host routes nothing it did not before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from corral.api.errors import InternalError
from corral.api.network import IPNetwork, NetworkPolicy, Rule

log = logging.getLogger(__name__)

TABLE = "corral"
NETNS_DIR = Path("/run/netns")
HOST_PREFIX = "cxh"
SANDBOX_PREFIX = "cxs"
#: The sandbox side's name inside its namespace.
SANDBOX_IFNAME = "eth0"
NFT_TIMEOUT = 10.0
_FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


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

    @classmethod
    def at(cls, pool: ipaddress.IPv4Network, index: int, node_key: str) -> SandboxNet:
        base = pool.network_address + index * 4
        return cls(index=index, netns=f"corral-{node_key}-{index}", gateway=base + 1,
                   address=base + 2)


def slots(pool: ipaddress.IPv4Network) -> int:
    """How many sandboxes ``pool`` has addresses for (a /30 each)."""
    return pool.num_addresses // 4


# -- the table ---------------------------------------------------------------------------

def ensure_table(node_key: str, denied: Iterable[IPNetwork]) -> None:
    """Make the shared table if it is missing, and (re)write this node's denied set."""
    exists = _nft(["list", "table", "inet", TABLE], check=False).returncode == 0
    script = []
    if not exists:
        guard = ""
        if _FORWARDING.read_text().strip() != "1":
            # Corral turns routing on: it routes sandboxes' traffic and nothing else.
            guard = '    iifname != "cxh*" oifname != "cxh*" drop\n'
        script.append(f"""table inet {TABLE} {{
  map sandboxes {{ type ifname : verdict; }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
{guard}    iifname "{HOST_PREFIX}*" ct state established,related accept
    iifname "{HOST_PREFIX}*" iifname vmap @sandboxes
    iifname "{HOST_PREFIX}*" reject with icmpx admin-prohibited
    oifname "{HOST_PREFIX}*" ct state established,related accept
    oifname "{HOST_PREFIX}*" drop
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname "{HOST_PREFIX}*" ct state established,related accept
    iifname "{HOST_PREFIX}*" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    iifname "{HOST_PREFIX}*" oifname != "{HOST_PREFIX}*" masquerade
  }}
}}""")
    v4 = sorted(str(n) for n in denied if n.version == 4)
    name = _denied_set(node_key)
    script.append(f"add set inet {TABLE} {name} {{ type ipv4_addr; flags interval; "
                  "auto-merge; }")
    script.append(f"flush set inet {TABLE} {name}")
    if v4:
        script.append(f"add element inet {TABLE} {name} {{ {', '.join(v4)} }}")
    _apply(script)
    if _FORWARDING.read_text().strip() != "1":
        _FORWARDING.write_text("1\n")


def _denied_set(node_key: str) -> str:
    return f"d_{node_key}"


# -- one sandbox -------------------------------------------------------------------------

def create(net: SandboxNet, node_key: str, policy: NetworkPolicy) -> None:
    """Make ``net``'s namespace, veth pair and chain, with ``policy``'s rules.

    Raises FileExistsError if another node holds the slot (its interface exists): the
    caller takes another. Whatever was made is removed again if a later step fails.
    """
    from pyroute2 import IPRoute, NetNS, netns

    netns.create(net.netns)
    try:
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=net.host_ifname, kind="veth",
                         peer={"ifname": f"{SANDBOX_PREFIX}{net.index}", "net_ns_fd": net.netns})
            except Exception as exc:  # pyroute2's NetlinkError: EEXIST means another node's
                if getattr(exc, "code", None) == 17:
                    raise FileExistsError(net.host_ifname) from None
                raise
            host = ipr.link_lookup(ifname=net.host_ifname)[0]
            ipr.addr("add", index=host, address=str(net.gateway), prefixlen=30)
            ipr.link("set", index=host, state="up")
        with NetNS(net.netns) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            inner = ns.link_lookup(ifname=f"{SANDBOX_PREFIX}{net.index}")[0]
            ns.link("set", index=inner, ifname=SANDBOX_IFNAME)
            ns.addr("add", index=inner, address=str(net.address), prefixlen=30)
            ns.link("set", index=inner, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=str(net.gateway))
        _apply([f"add chain inet {TABLE} {net.chain}",
                *_rules(net, node_key, policy),
                f"add element inet {TABLE} sandboxes {{ \"{net.host_ifname}\" : jump "
                f"{net.chain} }}"])
    except BaseException:
        with contextlib.suppress(Exception):
            destroy(net)
        raise


def update(net: SandboxNet, node_key: str, policy: NetworkPolicy) -> None:
    """Replace ``net``'s rules with ``policy``'s, atomically."""
    _apply([f"flush chain inet {TABLE} {net.chain}", *_rules(net, node_key, policy)])


def destroy(net: SandboxNet) -> None:
    """Remove ``net``'s chain and namespace (which takes the veth pair with it). Idempotent."""
    script = []
    listed = _nft(["list", "map", "inet", TABLE, "sandboxes"], check=False)
    if f'"{net.host_ifname}"' in listed.stdout:
        script.append(f"delete element inet {TABLE} sandboxes {{ \"{net.host_ifname}\" }}")
    if _nft(["list", "chain", "inet", TABLE, net.chain], check=False).returncode == 0:
        script.append(f"delete chain inet {TABLE} {net.chain}")
    if script:
        _apply(script)
    from pyroute2 import IPRoute, netns

    if net.netns_path.exists():
        netns.remove(net.netns)
    with IPRoute() as ipr:  # a veth whose namespace went first
        for index in ipr.link_lookup(ifname=net.host_ifname):
            with contextlib.suppress(Exception):
                ipr.link("del", index=index)


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
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"joining the sandbox's network namespace: {os.strerror(errno)}")


# -- rules -------------------------------------------------------------------------------

def _rules(net: SandboxNet, node_key: str, policy: NetworkPolicy) -> list[str]:
    chain = f"add rule inet {TABLE} {net.chain}"
    reject = "reject with icmpx admin-prohibited"
    rules = [f"{chain} ip saddr != {net.address} drop",
             f"{chain} meta nfproto ipv6 {reject}",
             f"{chain} ip daddr @{_denied_set(node_key)} {reject}"]
    rules += [f"{chain} {_match(rule)} {reject}" for rule in policy.deny
              if _v4(rule)]
    if policy.mode == "all":
        rules.append(f"{chain} accept")
    else:
        rules += [f"{chain} {_match(rule)} accept" for rule in policy.allow if _v4(rule)]
    rules.append(f"{chain} {reject}")
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
    _nft(["-f", "-"], stdin="\n".join(script) + "\n")


def _nft(args: list[str], stdin: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                              timeout=NFT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise InternalError("nft (nftables) is not installed; scripts/install installs it"
                            ) from None
    except subprocess.TimeoutExpired:
        raise InternalError(f"nft {' '.join(args)} did not finish in {NFT_TIMEOUT:g} s"
                            ) from None
    if check and done.returncode != 0:
        raise InternalError(f"nft {' '.join(args)[:60]} failed: {done.stderr.strip()[-500:]}")
    return done
