"""The packets sandboxes' rules refused, as the kernel logs them (NFLOG over netlink).

Each node's refusing chains (:mod:`._net_unsafe`) log to a netlink group of the node's own,
at most 20 packets a second per sandbox (burst 40); :class:`NflogReader` binds that group
and hands each packet's interface, reason and destination to the node, which puts it in
the sandbox's egress log. Reading is all this does: it changes nothing on the host. The
payload is a packet the sandbox sent, so it is parsed as hostile bytes: every length is
checked, and anything short or odd is skipped.

Why not a library: pyroute2 has no NFLOG support, and libnetfilter_log would be a C
dependency for two message types; the format is netlink's own (``linux/netfilter/
nfnetlink_log.h``), fixed since Linux 2.6.14.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_ULOG = 4
_NFULNL_MSG_PACKET = 0
_NFULNL_MSG_CONFIG = 1
_NFULA_CFG_CMD = 1
_NFULA_CFG_MODE = 2
_NFULNL_CFG_CMD_BIND = 1
_NFULNL_COPY_PACKET = 2
_NFULA_IFINDEX_INDEV = 4
_NFULA_PAYLOAD = 9
_NFULA_PREFIX = 10
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_ATTR = struct.Struct("=HH")  # nlattr
#: Bytes of each packet copied: its IP and transport headers, never its data.
COPY_RANGE = 80
_RECEIVE_BUFFER = 1 << 20


def group_of(node_key: str) -> int:
    """The NFLOG group a node's chains log to (one per node on a host)."""
    return 10_000 + zlib.crc32(node_key.encode()) % 50_000


@dataclass(frozen=True)
class LoggedPacket:
    """One refused packet: the interface it came in on, why, and where it was going."""

    ifindex: int
    reason: str
    address: str | None
    protocol: int | None
    port: int | None


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attributes(data: bytes, start: int) -> Iterator[tuple[int, bytes]]:
    offset = start
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            return
        yield kind & 0x3FFF, data[offset + _ATTR.size:offset + length]
        offset += _align(length)


def _destination(payload: bytes) -> tuple[str | None, int | None, int | None]:
    """A packet's destination address, transport protocol and port (None where absent)."""
    if not payload:
        return None, None, None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        header = (payload[0] & 0x0F) * 4
        protocol = payload[9]
        address = str(ipaddress.IPv4Address(payload[16:20]))
        offset = header
    elif version == 6 and len(payload) >= 40:
        protocol = payload[6]
        address = str(ipaddress.IPv6Address(payload[24:40]))
        offset = 40
    else:
        return None, None, None
    port = None
    if protocol in (6, 17, 132) and len(payload) >= offset + 4:  # TCP, UDP, SCTP
        port = int.from_bytes(payload[offset + 2:offset + 4], "big")
    return address, protocol, port


def parse(data: bytes) -> list[LoggedPacket]:
    """The packets in one netlink datagram (messages of other kinds are skipped)."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break
        if kind == (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_PACKET:
            ifindex, reason, payload = 0, "", b""
            # After the header: nfgenmsg (family, version, group), 4 bytes.
            for attr, value in _attributes(data[:offset + length], offset + _HEADER.size + 4):
                if attr == _NFULA_IFINDEX_INDEV and len(value) >= 4:
                    ifindex = int.from_bytes(value[:4], "big")
                elif attr == _NFULA_PREFIX:
                    reason = value.split(b"\0", 1)[0].decode("ascii", "replace").strip()
                elif attr == _NFULA_PAYLOAD:
                    payload = value
            address, protocol, port = _destination(payload)
            found.append(LoggedPacket(ifindex, reason[:64], address, protocol, port))
        offset += _align(length)
    return found


def _message(kind: int, group: int, attributes: list[tuple[int, bytes]], seq: int) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, group)
    for attr, value in attributes:
        chunk = _ATTR.pack(_ATTR.size + len(value), attr) + value
        body += chunk + b"\0" * (_align(len(chunk)) - len(chunk))
    header = _HEADER.pack(_HEADER.size + len(body), (_NFNL_SUBSYS_ULOG << 8) | kind,
                          _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
    return header + body


class NflogReader:
    """Binds one NFLOG group and calls ``on_packet`` for each packet logged to it.

    Bind with :meth:`open` (raises OSError: EBUSY if another process holds the group), then
    call :meth:`read` whenever the descriptor (:attr:`fileno`) is readable.
    """

    def __init__(self, group: int, on_packet: Callable[[LoggedPacket], None]) -> None:
        self.group = group
        self._on_packet = on_packet
        self._sock: socket.socket | None = None
        #: Times the kernel had to drop logged packets because they were read too slowly.
        self.overruns = 0

    def open(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             _NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            sock.bind((0, 0))
            sock.settimeout(5.0)
            bind = _message(_NFULNL_MSG_CONFIG, self.group,
                            [(_NFULA_CFG_CMD, bytes([_NFULNL_CFG_CMD_BIND]))], 1)
            mode = _message(_NFULNL_MSG_CONFIG, self.group,
                            [(_NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE,
                                                           _NFULNL_COPY_PACKET, 0))], 2)
            for request in (bind, mode):
                sock.send(request)
                _check_ack(sock.recv(4096))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    @property
    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def read(self) -> None:
        """Hand every packet waiting to ``on_packet``; returns when none is left."""
        assert self._sock is not None
        for _ in range(1024):  # bounded: the event loop gets its turn back
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            for packet in parse(data):
                self._on_packet(packet)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _check_ack(data: bytes) -> None:
    if len(data) >= _HEADER.size + 4:
        _, kind, _, _, _ = _HEADER.unpack_from(data, 0)
        if kind == _NLMSG_ERROR:
            code = struct.unpack_from("=i", data, _HEADER.size)[0]
            if code != 0:
                raise OSError(-code, f"binding the NFLOG group: {errno.errorcode.get(-code)}")
