"""Names in a network policy: a filtering resolver and an egress proxy, per sandbox.

Every networked sandbox has each DNS query redirected to its resolver, whatever server it
asked (nftables DNAT on the host side of its veth, see :mod:`corral.runtime._net_unsafe`),
and its ``/etc/resolv.conf`` names its gateway. One whose policy names domains
(``example.org``, ``*.example.org``, with or without ``:port``) also has every TCP
connection that its address entries do not allow redirected to its proxy. Both listen on
the sandbox's gateway address only, so nothing else can reach them.

* The resolver answers ``A`` queries for allowed names (every name, for ``all``) with what
  the node's upstream resolver says, less any address the sandbox may never reach
  (private, link-local, metadata, the operator's deny list: DNS rebinding gets nothing);
  every other name is ``NXDOMAIN``; ``AAAA`` and other types of allowed names are
  answered empty (sandboxes have IPv4 only).
* The proxy reads the name a connection is for, from the TLS ClientHello's SNI or the HTTP
  ``Host`` header (or an explicit ``CONNECT host:port``, after which a TLS SNI must name
  the same host), checks it and the port against the policy, resolves the name *itself*,
  refuses private answers, and connects to the address it resolved: the address the
  sandbox dialled is ignored, so forcing a name onto another address, IP literals, domain
  fronting and rebinding all fail.

Every verdict (name, address, port, allowed or why not) is kept in a bounded log per
sandbox (:meth:`SandboxEgress.events`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset

from corral.api.network import IPNetwork, NetworkPolicy, Rule

log = logging.getLogger(__name__)

#: Bytes of a connection's start read to find its name (a TLS ClientHello, HTTP headers).
MAX_HELLO = 16 * 1024
#: Seconds a connection may take to say its name, and the proxy to reach its upstream.
HELLO_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
#: Connections one sandbox may hold through its proxy at once.
MAX_CONNECTIONS = 256
#: Verdicts kept per sandbox.
MAX_EVENTS = 1000
#: Seconds an upstream answer may take, and the longest TTL handed out.
RESOLVE_TIMEOUT = 5.0
MAX_TTL = 60
#: A records in one answer.
MAX_ADDRESSES = 8
_SO_ORIGINAL_DST = 80


@dataclass(frozen=True)
class EgressEvent:
    """One verdict: a DNS answer, a proxied connection (allowed or refused, and why), or a
    packet the sandbox's rules refused (``packet``: its address, port and why)."""

    at: float
    kind: Literal["dns", "connect", "packet"]
    name: str
    port: int | None
    address: str | None
    allowed: bool
    reason: str


def name_allowed(rules: Sequence[Rule], name: str, port: int | None) -> bool:
    """Whether a domain rule of ``rules`` names ``name`` (and ``port``, where it has one;
    ``port`` None: any port of the rule will do, as for a DNS question)."""
    for rule in rules:
        if rule.domain is None:
            continue
        if rule.domain.startswith("*."):
            matches = name.endswith(rule.domain[1:]) and name != rule.domain[2:]
        else:
            matches = name == rule.domain
        if matches and (port is None or rule.port is None or rule.port == port):
            return True
    return False


class SandboxEgress:
    """The resolver and proxy of one sandbox, on its gateway address."""

    def __init__(self, sandbox_address: str, gateway: str, upstream: str,
                 denied: Sequence[IPNetwork], policy: NetworkPolicy, dns_port: int,
                 proxy_port: int,
                 on_event: Callable[[EgressEvent], None] | None = None) -> None:
        self.sandbox_address = sandbox_address
        self.gateway = gateway
        self.dns_port = dns_port
        self.proxy_port = proxy_port
        self._denied = tuple(n for n in denied if n.version == 4)
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [upstream]
        self._resolver.lifetime = RESOLVE_TIMEOUT
        self.policy = policy
        self._on_event = on_event
        self._events: collections.deque[EgressEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        #: Bytes relayed through the proxy: to the sandbox, and from it.
        self.bytes_in = 0
        self.bytes_out = 0

    def events(self) -> list[EgressEvent]:
        return list(self._events)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _DnsProtocol(self), local_addr=(self.gateway, self.dns_port))
        self._servers = [
            await asyncio.start_server(self._dns_tcp, self.gateway, self.dns_port),
            await asyncio.start_server(self._proxy, self.gateway, self.proxy_port,
                                       limit=MAX_HELLO)]

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # -- names and addresses -------------------------------------------------------------

    def _allowed(self, name: str, port: int | None) -> str | None:
        """None if ``name`` may be reached (on ``port``; None: a DNS question, which a
        deny entry refuses only if it has no port), else why not."""
        for rule in self.policy.deny:
            if name_allowed((rule,), name, None) and rule.port in (None, port):
                return "denied"
        if self.policy.mode == "all":
            return None  # every public name (its private answers are still dropped)
        if not name_allowed(self.policy.allow, name, port):
            return "not-allowed"
        return None

    def _reachable(self, address: str, port: int | None) -> bool:
        ip = ipaddress.ip_address(address)
        if ip.version != 4 or any(ip in network for network in self._denied):
            return False
        for rule in self.policy.deny:
            if rule.network is not None and ip in rule.network and (
                    rule.port is None or rule.port == port):
                return False
        return True

    async def _addresses(self, name: str, port: int | None) -> tuple[list[str], int]:
        """The upstream's A records for ``name`` that may be reached, and their TTL."""
        try:
            answer = await self._resolver.resolve(name, "A", search=False)
        except (dns.exception.DNSException, OSError):
            return [], 0
        found = [r.address for r in answer if self._reachable(r.address, port)]
        del found[MAX_ADDRESSES:]  # an answer that fits one UDP message
        return found, min(int(answer.rrset.ttl) if answer.rrset else 0, MAX_TTL)

    def refused_packet(self, reason: str, address: str | None, port: int | None) -> None:
        """A packet the sandbox's rules refused (logged by the kernel, :mod:`._nflog`)."""
        self._record("packet", "", port, address, reason)

    def _record(self, kind: Literal["dns", "connect", "packet"], name: str, port: int | None,
                address: str | None, reason: str | None) -> None:
        event = EgressEvent(time.time(), kind, name[:253], port, address, reason is None,
                            reason or "allowed")
        self._events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    # -- the resolver --------------------------------------------------------------------

    async def answer(self, wire: bytes) -> bytes | None:
        """The answer to one DNS query in wire format (None: not a query, dropped)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many kinds on hostile bytes
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        refused = self._allowed(name, None)
        if refused is not None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._record("dns", name, None, None, refused)
            return response.to_wire()
        if question.rdtype == dns.rdatatype.A:
            found, ttl = await self._addresses(name, None)
            if not found:
                response.set_rcode(dns.rcode.NXDOMAIN)
                self._record("dns", name, None, None, "no-reachable-address")
                return response.to_wire()
            response.answer.append(dns.rrset.from_text_list(
                question.name, max(ttl, 1), "IN", "A", found))
            self._record("dns", name, None, ",".join(found), None)
        return response.to_wire()

    async def _dns_tcp(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        with contextlib.closing(writer):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(HELLO_TIMEOUT):
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    reply = await self.answer(await reader.readexactly(size))
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()

    # -- the proxy -----------------------------------------------------------------------

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            self._record("connect", "", None, None, "too-many-connections")
            return
        self._connections.add(task)
        try:
            await self._relay(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer or peer[0] != self.sandbox_address:
            return  # only the sandbox itself, through its redirect
        port = _original_port(writer.get_extra_info("socket"))
        async with asyncio.timeout(HELLO_TIMEOUT):
            head = await _read_hello(reader)
        name, target_port, connect = _name_of(head, port)
        if not name:
            self._record("connect", "", target_port, None, "no-name")
            return
        if _is_ip(name):
            self._record("connect", name, target_port, None, "ip-literal")
            return
        refused = self._allowed(name, target_port)
        if refused is not None:
            self._record("connect", name, target_port, None, refused)
            return
        if connect is not None:  # an explicit CONNECT: answer it, then read the TLS hello
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(HELLO_TIMEOUT):
                head = await _read_hello(reader)
            if head[:1] == b"\x16" and _sni(head) != name:
                self._record("connect", name, target_port, None, "sni-mismatch")
                return
        found, _ = await self._addresses(name, target_port)
        if not found:
            self._record("connect", name, target_port, None, "no-reachable-address")
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(found[0], target_port)
        except (OSError, TimeoutError):
            self._record("connect", name, target_port, found[0], "upstream-unreachable")
            return
        self._record("connect", name, target_port, found[0], None)
        with contextlib.closing(up_writer):
            if head:
                up_writer.write(head)
                self.bytes_out += len(head)
            await asyncio.gather(_pipe(reader, up_writer, self._sent),
                                 _pipe(up_reader, writer, self._received))

    def _sent(self, size: int) -> None:
        self.bytes_out += size

    def _received(self, size: int) -> None:
        self.bytes_in += size


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, egress: SandboxEgress) -> None:
        self._egress = egress
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != self._egress.sandbox_address or len(self._pending) >= MAX_CONNECTIONS:
            return
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self._egress.answer(data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                count: Callable[[int], None]) -> None:
    try:
        while chunk := await source.read(64 * 1024):
            sink.write(chunk)
            count(len(chunk))
            await sink.drain()
    finally:
        with contextlib.suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()


async def _read_hello(reader: asyncio.StreamReader) -> bytes:
    """The start of a connection: a whole TLS record, or HTTP headers, or what came."""
    data = await reader.read(MAX_HELLO)
    while data and len(data) < MAX_HELLO:
        if data[:1] == b"\x16" and len(data) >= 5:
            if len(data) >= 5 + struct.unpack("!H", data[3:5])[0]:
                break
        elif b"\r\n\r\n" in data:
            break
        more = await reader.read(MAX_HELLO - len(data))
        if not more:
            break
        data += more
    return data


def _name_of(head: bytes, port: int) -> tuple[str | None, int, str | None]:
    """(name, port, CONNECT target or None) a connection's first bytes ask for."""
    if head[:1] == b"\x16":
        return _sni(head), port, None
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) == 3 and parts[0] == b"CONNECT":
        host, _, port_text = parts[1].decode("latin-1").rpartition(":")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            return None, port, None
        return host.lower().strip("[]"), int(port_text), host
    for header in rest.split(b"\r\n"):
        key, _, value = header.partition(b":")
        if key.strip().lower() == b"host":
            host = value.strip().decode("latin-1").lower()
            if host.startswith("["):
                return host.partition("]")[0][1:], port, None
            return host.rpartition(":")[0] if ":" in host else host, port, None
    return None, port, None


def _sni(record: bytes) -> str | None:
    """The server name of a TLS ClientHello record, or None (no SNI, not a ClientHello)."""
    try:
        if record[0] != 0x16 or record[5] != 0x01:
            return None
        pos = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        pos += 1 + record[pos]  # session id
        pos += 2 + struct.unpack("!H", record[pos:pos + 2])[0]  # cipher suites
        pos += 1 + record[pos]  # compression methods
        end = pos + 2 + struct.unpack("!H", record[pos:pos + 2])[0]
        pos += 2
        while pos + 4 <= end:
            kind, size = struct.unpack("!HH", record[pos:pos + 4])
            pos += 4
            if kind == 0:  # server_name: list length, then (type 0, length, name)
                if record[pos + 2] != 0:
                    return None
                length = struct.unpack("!H", record[pos + 3:pos + 5])[0]
                return record[pos + 5:pos + 5 + length].decode("ascii").lower()
            pos += size
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None


def _original_port(sock: socket.socket | None) -> int:
    """The port the sandbox dialled, before the redirect (SO_ORIGINAL_DST)."""
    if sock is None:
        return 0
    raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    return int(struct.unpack("!H", raw[2:4])[0])


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
