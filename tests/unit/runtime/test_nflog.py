"""The refused-packet log's parser, on netlink datagrams built here byte by byte (the
kernel's side is exercised by tests/security/test_network_policy.py). A packet is the
sandbox's bytes: short, odd or lying lengths must be skipped, never raise."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from corral.runtime._nflog import COPY_RANGE, LoggedPacket, group_of, parse

pytestmark = pytest.mark.rootless


def attribute(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(*attributes: bytes, kind: int = 0x0400) -> bytes:
    body = struct.pack("!BBH", 2, 0, 12345) + b"".join(attributes)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def ipv4(dst: str, protocol: int, port: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, protocol, 0,
                         ipaddress.IPv4Address("100.96.0.2").packed,
                         ipaddress.IPv4Address(dst).packed)
    return header + struct.pack("!HH", 40000, port) + b"\0" * 16


def test_a_refused_packet_reads_back() -> None:
    data = message(attribute(4, struct.pack("!I", 7)), attribute(10, b"always-denied\0"),
                   attribute(9, ipv4("169.254.169.254", 6, 80)))
    assert parse(data) == [LoggedPacket(7, "always-denied", "169.254.169.254", 6, 80)]


def test_two_messages_in_one_datagram_and_ipv6() -> None:
    v6 = (struct.pack("!IHBB", 0x60000000, 20, 17, 64) + bytes(16)
          + ipaddress.IPv6Address("fd00::1").packed + struct.pack("!HH", 5353, 53))
    data = (message(attribute(10, b"ipv6\0"), attribute(9, v6))
            + message(attribute(10, b"not-allowed\0"), attribute(9, ipv4("203.0.113.5", 1, 0))))
    assert parse(data) == [LoggedPacket(0, "ipv6", "fd00::1", 17, 53),
                           LoggedPacket(0, "not-allowed", "203.0.113.5", 1, None)]


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 3, message(attribute(9, b"\x45" * 10)),  # an IPv4 header cut short
    message(attribute(9, ipv4("203.0.113.5", 6, 80)[:22])),  # a port cut short
    message() + b"\xff\xff\xff\xff",  # a second header claiming 4 GiB
    struct.pack("=IHHII", 8, 0x0400, 0, 0, 0),  # a length below the header's own
    message(struct.pack("=HH", 200, 9) + b"x"),  # an attribute longer than its message
    message(attribute(10, b"\xff\xfe"), kind=0x0401),  # another kind: skipped
])
def test_hostile_or_short_bytes_are_skipped_not_raised(data: bytes) -> None:
    for packet in parse(data):
        assert packet.port is None or 0 <= packet.port <= 65535


def test_each_node_has_its_own_group_in_range() -> None:
    groups = {group_of(f"node{i}") for i in range(50)}
    assert len(groups) > 45 and all(10_000 <= g < 60_000 for g in groups)
    assert group_of("a") == group_of("a") and COPY_RANGE < 128
