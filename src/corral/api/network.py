"""A sandbox's network policy: what it asks for, parsed and checked in one place.

``"none"`` (the default: no network interface but loopback), ``"all"`` (every public
address) or lists: ``{"allow": [...], "deny": [...]}``. An entry is an IPv4 or IPv6
address or CIDR, or a domain (``example.org``, ``*.example.org``), each optionally with a
port: ``192.0.2.10:443``, ``[2001:db8::/32]:443``, ``example.org:443``. ``deny`` wins over
``allow``. Whatever a policy says, :data:`ALWAYS_DENIED` stays unreachable unless the
operator opened a range of it (:class:`NetOperator`); the sandboxes' own range, loopback and
link-local (the cloud metadata service) can never be opened.

Everything here is data and checks, stdlib only: the node's enforcement (network
namespaces, veth pairs, nftables) lives in :mod:`corral.runtime._net_unsafe`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from .errors import InvalidArgumentError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Entries in one policy's allow and deny lists together, unless the operator says less.
MAX_ENTRIES: Final = 256
#: Characters in one entry.
MAX_ENTRY: Final = 300
MODES: Final = ("none", "all")

#: Never reachable from a sandbox, whatever its policy, unless the operator opens a range
#: (:attr:`NetOperator.open`) that is not in :data:`NEVER_OPENED`.
ALWAYS_DENIED: Final[tuple[IPNetwork, ...]] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/3",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10",
    "ff00::/8", "fd00:ec2::254/128"))
#: Never opened, even by the operator: loopback, link-local (cloud metadata lives there),
#: the unspecified and multicast ranges, and IPv4-mapped IPv6 (an IPv4 check in disguise).
NEVER_OPENED: Final[tuple[IPNetwork, ...]] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "::/128", "::1/128",
    "::ffff:0:0/96", "fe80::/10", "ff00::/8", "fd00:ec2::254/128"))

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(\*\.)?(?:{_LABEL}\.)+{_LABEL}$")
_PORT = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True, order=True)
class Rule:
    """One allow or deny entry: a network or a domain, and a port (None: every port).

    ``domain`` is lower case; one starting with ``*.`` matches its subdomains (not itself).
    """

    network: IPNetwork | None = None
    domain: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        if self.domain is not None:
            return f"{self.domain}{port}"
        assert self.network is not None
        text = (str(self.network.network_address) if self.network.prefixlen ==
                self.network.max_prefixlen else str(self.network))
        return f"[{text}]{port}" if self.network.version == 6 and port else f"{text}{port}"

    @classmethod
    def parse(cls, text: object, where: str = "entry") -> Rule:
        """Parse one entry; InvalidArgumentError naming it if it is not one."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError(f"network {where} {text!r:.80}: give an IP, a CIDR or "
                                       "a domain, optionally with :port")
        if len(text) > MAX_ENTRY:
            raise InvalidArgumentError(f"network {where} {text[:60]!r}...: longer than "
                                       f"{MAX_ENTRY} characters")
        raw = text.strip().lower()
        host, port = _split_port(raw, text, where)
        network = _network(host)
        if network is not None:
            return cls(network=network, port=port)
        if _DOMAIN.match(host) and len(host) <= 253 and not _all_digits(host):
            return cls(domain=host, port=port)
        raise InvalidArgumentError(f"network {where} {text!r:.80} is not an IP address, a "
                                   "CIDR or a domain (such as example.org or *.example.org)")


@dataclass(frozen=True)
class NetworkPolicy:
    """What a sandbox may reach. Build with :meth:`parse`; every entry is checked."""

    mode: Literal["none", "all", "lists"] = "none"
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether the sandbox gets an interface at all (``none`` has loopback only)."""
        return self.mode != "none"

    def domains(self) -> tuple[Rule, ...]:
        return tuple(r for r in (*self.allow, *self.deny) if r.domain is not None)

    def to_wire(self) -> str | dict[str, list[str]]:
        """The policy as the API and the SDK write it."""
        if self.mode != "lists":
            return self.mode
        return {"allow": [str(r) for r in self.allow], "deny": [str(r) for r in self.deny]}

    @classmethod
    def parse(cls, value: object) -> NetworkPolicy:
        """``"none"``, ``"all"``, or a mapping with ``allow`` and/or ``deny`` lists.

        An empty allow list allows nothing (the sandbox has an interface, and a later
        update can open it); entries are de-duplicated, order kept.
        """
        if value is None:
            return cls()
        if isinstance(value, str):
            if value not in MODES:
                raise InvalidArgumentError(f"network {value!r:.40} is not one of "
                                           "\"none\", \"all\" or {\"allow\": [...], "
                                           "\"deny\": [...]}")
            return cls(mode="none" if value == "none" else "all")
        if not isinstance(value, dict):
            raise InvalidArgumentError("network must be \"none\", \"all\" or "
                                       "{\"allow\": [...], \"deny\": [...]}")
        unknown = set(value) - {"allow", "deny"}
        if unknown:
            raise InvalidArgumentError(f"network has unknown keys {sorted(map(str, unknown))!r:.80}"
                                       "; use allow and deny")
        lists = {}
        for name in ("allow", "deny"):
            entries = value.get(name, [])
            if not isinstance(entries, (list, tuple)):
                raise InvalidArgumentError(f"network {name} must be a list of entries")
            if len(entries) > MAX_ENTRIES:
                raise InvalidArgumentError(f"network {name} has {len(entries)} entries; at "
                                           f"most {MAX_ENTRIES}")
            lists[name] = tuple(dict.fromkeys(
                Rule.parse(e, f"{name} entry") for e in entries))
        return cls(mode="lists", allow=lists["allow"], deny=lists["deny"])

    @classmethod
    def parse_flags(cls, values: Iterable[str], what: str = "--net") -> NetworkPolicy:
        """The command line's form: ``none``, ``all``, or ``allow:A,B`` and ``deny:C``
        (several add up); InvalidArgumentError naming a bad one."""
        values = [v for v in values if v]
        if not values:
            return cls()
        if len(values) == 1 and values[0] in MODES:
            return cls.parse(values[0])
        lists: dict[str, list[str]] = {"allow": [], "deny": []}
        for value in values:
            kind, sep, entries = value.partition(":")
            if not sep or kind not in lists:
                raise InvalidArgumentError(f"{what} {value!r:.80} is not none, all, "
                                           "allow:ENTRY,... or deny:ENTRY,...")
            lists[kind] += [e for e in entries.split(",") if e]
        return cls.parse(lists)

    def narrowed(self, requested: Iterable[str]) -> NetworkPolicy:
        """A policy allowing ``requested`` entries, each of which this policy (a ceiling
        someone else set) must allow already, with this policy's deny list; ``[]``:
        ``none``. InvalidArgumentError naming the first entry beyond it."""
        rules = [Rule.parse(e, "entry") for e in requested]
        if not rules:
            return NetworkPolicy()
        if self.mode == "none":
            raise InvalidArgumentError("no network may be asked for here (the operator "
                                       "allows none)")
        for rule in rules:
            if self.mode == "lists" and not any(covers(c, rule) for c in self.allow):
                allowed = ", ".join(map(str, self.allow)) or "nothing"
                raise InvalidArgumentError(f"network entry {str(rule)!r} is beyond what the "
                                           f"operator allows ({allowed:.300})")
        return NetworkPolicy.parse({"allow": [str(r) for r in rules],
                                    "deny": [str(r) for r in self.deny]})


def covers(wide: Rule, narrow: Rule) -> bool:
    """Whether every destination ``narrow`` allows, ``wide`` allows too."""
    if wide.port is not None and narrow.port != wide.port:
        return False
    if wide.network is not None:
        return (narrow.network is not None and narrow.network.version == wide.network.version
                and narrow.network.subnet_of(wide.network))  # type: ignore[arg-type]
    if narrow.domain is None or wide.domain is None:
        return False
    if wide.domain.startswith("*."):
        return narrow.domain.endswith(wide.domain[1:])  # a subdomain, or a narrower "*."
    return narrow.domain == wide.domain


@dataclass(frozen=True)
class NetOperator:
    """The operator's network settings: what no tenant can change.

    Attributes:
        open: ranges of :data:`ALWAYS_DENIED` the operator opened to sandboxes
            (``corral serve --net-open``); an ``all`` policy includes them, and allow
            lists may name addresses in them.
        deny: addresses no sandbox may reach, on top of :data:`ALWAYS_DENIED`.
        dns: the resolver sandboxes' names are looked up with (None: the host's).
        allow_all: whether tenants may ask for ``all``.
        max_entries: entries in one policy's lists together.
        pool: the range sandboxes' own addresses come from (a /30 each).
    """

    open: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    dns: str | None = None
    allow_all: bool = True
    max_entries: int = MAX_ENTRIES
    pool: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network("100.96.0.0/16"))

    def __post_init__(self) -> None:
        for network in self.open:
            for never in (*NEVER_OPENED, self.pool):
                if network.version == never.version and network.overlaps(never):
                    raise InvalidArgumentError(
                        f"--net-open {network}: overlaps {never}, which is never opened "
                        "(loopback, link-local and metadata, multicast, or the sandboxes' "
                        "own range)")
        if not 0 <= self.max_entries <= MAX_ENTRIES:
            raise InvalidArgumentError(f"the network entry cap must be 0 to {MAX_ENTRIES}")
        if not 16 <= self.pool.prefixlen <= 28:
            raise InvalidArgumentError(f"the sandbox address pool {self.pool} must be a /16 "
                                       "to a /28")
        if not any(self.pool.subnet_of(n) for n in ALWAYS_DENIED
                   if n.version == 4):
            raise InvalidArgumentError(f"the sandbox address pool {self.pool} must lie in a "
                                       "private range (such as 100.64.0.0/10), so that no "
                                       "sandbox can reach another")

    @classmethod
    def parse(cls, open_ranges: Iterable[str] = (), deny: Iterable[str] = (),
              dns: str | None = None, allow_all: bool = True,
              max_entries: int = MAX_ENTRIES, pool: str | None = None) -> NetOperator:
        """From the operator's strings (flags or environment); InvalidArgumentError naming
        the bad one."""
        def networks(values: Iterable[str], what: str) -> tuple[IPNetwork, ...]:
            found = []
            for value in values:
                network = _network(value.strip().lower())
                if network is None:
                    raise InvalidArgumentError(f"{what} {value!r:.80} is not a CIDR")
                found.append(network)
            return tuple(found)

        if dns is not None and _network(dns) is None:
            raise InvalidArgumentError(f"--net-dns {dns!r:.80} is not an IP address")
        pool_network = _network(pool) if pool is not None else None
        if pool is not None and not isinstance(pool_network, ipaddress.IPv4Network):
            raise InvalidArgumentError(f"the sandbox address pool {pool!r:.80} is not an "
                                       "IPv4 CIDR")
        kwargs = {"pool": pool_network} if isinstance(pool_network,
                                                      ipaddress.IPv4Network) else {}
        return cls(open=networks(open_ranges, "--net-open"),
                   deny=networks(deny, "--net-deny"), dns=dns, allow_all=allow_all,
                   max_entries=max_entries, **kwargs)

    def denied(self) -> tuple[IPNetwork, ...]:
        """Every range no sandbox reaches: :data:`ALWAYS_DENIED` less what the operator
        opened, plus the operator's own deny list and the sandboxes' pool."""
        ranges: list[IPNetwork] = []
        for network in ALWAYS_DENIED:
            ranges.extend(_subtract(network, self.open))
        return (*ranges, self.pool, *self.deny)

    def check(self, policy: NetworkPolicy) -> NetworkPolicy:
        """``policy`` if this node enforces it as asked; InvalidArgumentError naming the
        rule it breaks otherwise."""
        if policy.mode == "all" and not self.allow_all:
            raise InvalidArgumentError("network \"all\" is turned off on this server "
                                       "(operator rule: no unrestricted egress); list what "
                                       "the sandbox needs under allow")
        count = len(policy.allow) + len(policy.deny)
        if count > self.max_entries:
            raise InvalidArgumentError(f"the network policy has {count} entries; this "
                                       f"server allows at most {self.max_entries}")
        for rule in policy.allow:
            if rule.network is None:
                continue  # a domain: its answers are checked when it is resolved
            if rule.network.version == 6:
                raise InvalidArgumentError(
                    f"network allow entry {rule}: this server gives sandboxes IPv4 only; "
                    "IPv6 destinations stay unreachable")
            blocked = self._never_reached(rule.network)
            if blocked is not None:
                raise InvalidArgumentError(
                    f"network allow entry {rule}: {blocked} is never reachable from a "
                    "sandbox (private, link-local, loopback, the sandboxes' own range or "
                    "the operator's deny list); only the operator can open a private range "
                    "(corral serve --net-open)")
        return policy


    def _never_reached(self, network: IPNetwork) -> IPNetwork | None:
        """The denied range ``network`` lies in, unless the operator opened it; else None."""
        if any(network.version == o.version and network.subnet_of(o)  # type: ignore[arg-type]
               for o in self.open):
            return None
        return next((d for d in (*ALWAYS_DENIED, self.pool, *self.deny)
                     if d.version == network.version
                     and network.subnet_of(d)), None)  # type: ignore[arg-type]


def _split_port(raw: str, text: str, where: str) -> tuple[str, int | None]:
    """``host`` and port of ``host:port``, ``[v6]:port``, or a bare v4/v6/domain."""
    port_text: str | None = None
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidArgumentError(f"network {where} {text!r:.80}: an IPv6 entry with a "
                                       "port is written [address]:port")
        port_text = rest[1:] if rest else None
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    else:
        host = raw  # a bare IPv6 address or CIDR, or no port
    if port_text is None:
        return host, None
    if not _PORT.match(port_text) or not 1 <= int(port_text) <= 65535:
        raise InvalidArgumentError(f"network {where} {text!r:.80}: port {port_text!r:.10} is "
                                   "not 1 to 65535")
    return host, int(port_text)


def _network(host: str) -> IPNetwork | None:
    """The network ``host`` names (an address is a /32 or /128), or None if not an IP."""
    if not host or not (host[0].isdigit() or ":" in host):
        return None
    try:
        return ipaddress.ip_network(host, strict=False)
    except ValueError:
        return None


def _all_digits(host: str) -> bool:
    return all(label.isdigit() for label in host.split("."))


def _subtract(network: IPNetwork, holes: Sequence[IPNetwork]) -> list[IPNetwork]:
    """``network`` less every range of ``holes`` inside it."""
    parts: list[IPNetwork] = [network]
    for hole in holes:
        if hole.version != network.version:
            continue
        next_parts: list[IPNetwork] = []
        for part in parts:
            if hole.supernet_of(part):  # type: ignore[arg-type]
                continue
            if part.supernet_of(hole):  # type: ignore[arg-type]
                next_parts.extend(part.address_exclude(hole))  # type: ignore[arg-type]
            else:
                next_parts.append(part)
        parts = next_parts
    return parts
