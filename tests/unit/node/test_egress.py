"""The egress proxy's and resolver's parsing of what a sandbox sends, on hostile bytes and
real ones (a ClientHello made by Python's own TLS, DNS answered by a resolver on this
machine's loopback). Rootless: no namespace, no sandbox."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from corral.api.network import NetOperator, NetworkPolicy, Rule
from corral.node.egress import SandboxEgress, _name_of, _sni, name_allowed


def client_hello(server_name: str | None) -> bytes:
    """The first record a real TLS client sends for ``server_name``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_server_name_of_a_real_client_hello() -> None:
    assert _sni(client_hello("allowed.test")) == "allowed.test"
    assert _sni(client_hello("WWW.Allowed.Test")) == "www.allowed.test"
    assert _sni(client_hello(None)) is None
    hello = client_hello("allowed.test")
    for broken in (hello[:10], hello[:60], b"\x16\x03\x01\x00\x05hello", b"", b"\x17" + hello[1:],
                   hello[:5] + b"\x02" + hello[6:]):
        assert _sni(broken) is None


@pytest.mark.parametrize(("head", "expected"), [
    (b"GET / HTTP/1.1\r\nHost: Allowed.Test:8000\r\n\r\n", ("allowed.test", 80, None)),
    (b"GET / HTTP/1.1\r\nhost:allowed.test\r\n\r\n", ("allowed.test", 80, None)),
    (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", ("2001:db8::1", 80, None)),
    (b"CONNECT allowed.test:443 HTTP/1.1\r\n\r\n", ("allowed.test", 443, "allowed.test")),
    (b"CONNECT allowed.test:0 HTTP/1.1\r\n\r\n", (None, 80, None)),
    (b"CONNECT allowed.test:99999 HTTP/1.1\r\n\r\n", (None, 80, None)),
    (b"CONNECT allowed.test HTTP/1.1\r\n\r\n", (None, 80, None)),
    (b"GET / HTTP/1.1\r\n\r\n", (None, 80, None)),
    (b"\x00\x01garbage", (None, 80, None)),
])
def test_the_name_a_connection_asks_for(head: bytes, expected: tuple[object, ...]) -> None:
    assert _name_of(head, 80) == expected


def test_domain_rules_match_names_and_ports() -> None:
    rules = [Rule.parse("allowed.test:443"), Rule.parse("*.example.test")]
    assert name_allowed(rules, "allowed.test", 443)
    assert name_allowed(rules, "allowed.test", None)  # a DNS question: any port will do
    assert not name_allowed(rules, "allowed.test", 80)
    assert name_allowed(rules, "a.b.example.test", 80)
    assert not name_allowed(rules, "example.test", 80)  # the wildcard is for subdomains
    assert not name_allowed(rules, "badexample.test", 80)
    assert not name_allowed(rules, "allowed.test.evil", 443)


@pytest.fixture
def upstream() -> Iterator[str]:
    """A resolver on loopback: ``public.test`` has a public and a private address,
    ``private.test`` only a private one."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()
    records = {"public.test": ["198.51.100.10", "10.0.0.5"], "private.test": ["169.254.169.254"]}

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, source = server.recvfrom(4096)
            except OSError:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            name = query.question[0].name.to_text(omit_final_dot=True)
            if name in records:
                response.answer.append(dns.rrset.from_text_list(
                    query.question[0].name, 300, "IN", "A", records[name]))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            server.sendto(response.to_wire(), source)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    server.close()


def _egress(upstream: str, policy: object) -> SandboxEgress:
    host, port = upstream.split(":")
    egress = SandboxEgress("100.96.0.2", "100.96.0.1", host, NetOperator().denied(),
                           NetworkPolicy.parse(policy), 0, 0)
    egress._resolver.port = int(port)
    return egress


def _ask(egress: SandboxEgress, name: str, kind: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, kind)
    reply = asyncio.run(egress.answer(query.to_wire()))
    assert reply is not None
    return dns.message.from_wire(reply)


def test_the_resolver_answers_allowed_names_without_their_private_addresses(
        upstream: str) -> None:
    egress = _egress(upstream, {"allow": ["public.test", "private.test"]})
    answer = _ask(egress, "public.test")
    assert [r.address for r in answer.answer[0]] == ["198.51.100.10"]
    assert answer.answer[0].ttl <= 60
    assert _ask(egress, "private.test").rcode() == dns.rcode.NXDOMAIN  # rebinding: nothing
    assert _ask(egress, "other.test").rcode() == dns.rcode.NXDOMAIN  # not in the policy
    empty = _ask(egress, "public.test", "AAAA")
    assert empty.rcode() == dns.rcode.NOERROR and empty.answer == []
    assert [(e.name, e.reason) for e in egress.events()] == [
        ("public.test", "allowed"), ("private.test", "no-reachable-address"),
        ("other.test", "not-allowed")]


def test_all_answers_every_public_name_and_deny_still_wins(upstream: str) -> None:
    egress = _egress(upstream, "all")
    assert _ask(egress, "public.test").answer
    denied = _egress(upstream, {"allow": ["public.test"], "deny": ["public.test"]})
    assert _ask(denied, "public.test").rcode() == dns.rcode.NXDOMAIN
    port_only = _egress(upstream, {"allow": ["public.test"], "deny": ["public.test:80"]})
    assert _ask(port_only, "public.test").answer  # denied on one port, resolvable


@pytest.mark.parametrize("wire", [b"", b"\x00" * 5, b"\xff" * 512,
                                  dns.message.make_response(
                                      dns.message.make_query("public.test", "A")).to_wire()])
def test_what_is_not_one_query_gets_no_answer(upstream: str, wire: bytes) -> None:
    assert asyncio.run(_egress(upstream, "all").answer(wire)) is None
