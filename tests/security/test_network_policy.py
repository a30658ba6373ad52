"""Category 3, network, with the widest policy a tenant can ask for: ``network="all"`` on a
node whose operator opened nothing. What must stay out of reach still does: the cloud
metadata address, a private range, the host's own services on every address it has
(loopback-bound ones, the gateway, its other interfaces, IPv6 link-local), another
sandbox, an IPv4-mapped IPv6 address, and another source address than the sandbox's own.

Every target exists and answers the host (checked first, from the host), so a refusal is
the policy's doing. The "internet" is a network namespace this module makes
(tests/fakes/internet.py); no packet leaves the machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from corral.bench.testnet import (HOST_SIDE, METADATA, PORT, PRIVATE, PUBLIC_A, PUBLIC_B,
                                  RESOLVER,
                                  UDP_PORT, dns_log, internet, udp_log)
from corral.api.network import NetOperator
from corral.node import NodeSettings, SyncNode, SyncNodeSandbox
from corral.runtime.host import NET_LOG_BURST as LOG_BURST
from corral.runtime.host import NET_LOG_RATE as LOG_RATE
from corral.runtime.base import Weakening
from corral.runtime.gvisor.runtime import GvisorRuntime
from tests.conftest import IMAGE_DIR, WORKING, sandbox_data_dir

from ._checks import run_python

pytestmark = pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0,
                                reason="needs root and nftables (scripts/install installs it)")

#: Tries each (name, family, host, port) with a 2 s timeout; prints {name: outcome}.
CONNECT = """
import json, socket, sys
out = {}
for name, family, host, port in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        out[name] = "connected: " + s.recv(200).decode(errors="replace")[-40:]
    except OSError as exc:
        out[name] = "refused: " + type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


def _host_addresses() -> list[str]:
    """The host's global IPv4 addresses, but those of the test's own interfaces."""
    listed = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                            capture_output=True, text=True, check=True).stdout
    found = []
    for line in listed.splitlines():
        fields = line.split()
        if not fields[1].startswith(("cxh", "cti")):
            found.append(fields[3].split("/")[0])
    return found


@contextlib.contextmanager
def host_listener() -> Iterator[int]:
    """A TCP service on every host address (IPv6 and IPv4), answering "host"."""
    server = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"host")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.fixture(scope="module")
def open_node(python_image: str) -> Iterator[SyncNode]:
    with internet(), sandbox_data_dir("corral-test-netsec-") as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                                network=NetOperator.parse(dns=RESOLVER))
        with SyncNode(settings) as node:  # names: the test internet's resolver only
            yield node


def _addresses(sb: SyncNodeSandbox) -> tuple[str, str, str | None]:
    """The sandbox's address, its gateway (the host end of its veth) and that end's IPv6
    link-local address (None: it has none, IPv6 being off there), from the host's side."""
    slot = int(sb._inner.handle.extra["net"]["index"])  # the node's record of its slot
    link = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", f"cxh{slot}"],
                          capture_output=True, text=True, check=True).stdout
    v4 = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", f"cxh{slot}"],
                        capture_output=True, text=True, check=True).stdout
    gateway = v4.split()[3].split("/")[0]
    return (str(ipaddress.ip_address(gateway) + 1), gateway,
            link.split()[3].split("/")[0] if link.strip() else None)


def test_all_still_keeps_out_what_is_always_denied(open_node: SyncNode, runtime: str) -> None:
    with host_listener() as port, \
            open_node.create("python", runtime=runtime, network="all") as sb, \
            open_node.create("python", runtime=runtime, network="all") as other:
        _, gateway, link_local = _addresses(sb)
        other_address = _addresses(other)[0]
        listening = other.commands.run_background(
            ["python3", "-c", "import socket; s = socket.create_server(('0.0.0.0', 9000)); "
             "print('up', flush=True); "
             "[c.sendall(b'sandbox') or c.close() for c, _ in iter(s.accept, None)]"])
        _wait_until_listening(other_address, 9000)
        targets = [("metadata", 4, METADATA, PORT), ("private", 4, PRIVATE, PORT),
                   ("mapped metadata", 6, f"::ffff:{METADATA}", PORT),
                   ("gateway", 4, gateway, port), ("host side", 4, HOST_SIDE, port),
                   ("other sandbox", 4, other_address, 9000),
                   ("public (control)", 4, PUBLIC_A, PORT)]
        targets += [(f"host {a}", 4, a, port) for a in _host_addresses()]
        # The controls: every target answers from the host (the other sandbox's service
        # too: the host may open connections into a sandbox; sandboxes may not).
        from_host = json.loads(subprocess.run(
            ["python3", "-c", CONNECT, json.dumps([t for t in targets if t[1] == 4])],
            capture_output=True, text=True, timeout=60, check=True).stdout)
        failed = {k: v for k, v in from_host.items() if not v.startswith("connected")}
        assert failed == {}
        # The host end has no IPv6 address at all (not even link-local): IPv6 to the host
        # over the sandbox's link has nowhere to go.
        assert link_local is None
        targets.append(("host link-local", 6, "fe80::1%eth0", port))
        found = run_python(sb, CONNECT, json.dumps(targets))
        other.commands.kill(listening.id)
        refused = _refused_packets(sb, {METADATA, PRIVATE, other_address, gateway, HOST_SIDE})
    assert found.pop("public (control)").startswith("connected")
    assert all(v.startswith("refused") for v in found.values()), found
    # Each refused attempt is in the sandbox's egress log, with where and why.
    assert refused[METADATA, PORT] == "always-denied"
    assert refused[PRIVATE, PORT] == "always-denied"
    assert refused[other_address, 9000] == "always-denied"
    assert refused[gateway, port] == "host" and refused[HOST_SIDE, port] == "host"


def _refused_packets(sb: SyncNodeSandbox, addresses: set[str]) -> dict[tuple[str, int], str]:
    """(address, port) -> reason of the refused packets in ``sb``'s egress log, once one
    for each of ``addresses`` arrived (the kernel hands them over asynchronously; bounded
    wait)."""
    refused: dict[tuple[str, int], str] = {}
    for _ in range(50):
        refused = {(e.address or "", e.port or 0): e.reason
                   for e in sb.network.events().events if e.kind == "packet"}
        if addresses <= {address for address, _ in refused}:
            break
        time.sleep(0.1)
    return refused


def _after_the_control() -> str:
    """The test host's UDP log once the sandbox's plain datagram is in it. It was sent after
    the spoofed one, on the same path, so a spoofed datagram let through is in by then."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        received = udp_log().read_text() if udp_log().exists() else ""
        if "plain" in received:
            return received
        time.sleep(0.05)
    return udp_log().read_text() if udp_log().exists() else ""


def _wait_until_listening(host: str, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {host}:{port} after 30 s")


def test_a_sandbox_cannot_send_as_another_address(open_node: SyncNode, runtime: str) -> None:
    """A spoofed source through a raw socket: refused in the sandbox where it cannot have
    one (namespaces: no CAP_NET_RAW over the host-owned namespace); where it can (gVisor's
    netstack builds the packet), the host drops it: the test host's UDP log gets the
    sandbox's own datagram (the control) and never the spoofed one."""
    with open_node.create("python", runtime=runtime, network="all") as sb:
        udp_log().unlink(missing_ok=True)
        sent = run_python(sb, SPOOF, PUBLIC_A, str(UDP_PORT))
    received = _after_the_control()
    assert "plain" in received  # the sandbox's own datagram arrived: the path works
    assert "spoof" not in received, received
    if runtime == "namespaces":
        assert sent["raw"] == "PermissionError"
    else:
        assert sent["raw"] in ("PermissionError", "sent"), sent


@pytest.mark.skipif("gvisor" not in WORKING, reason="gvisor does not work here")
def test_a_spoofed_source_is_dropped_on_the_host(open_node: SyncNode) -> None:
    """With raw sockets on and every capability left in the Sentry (a weakened runtime; the
    real one has neither), a sandbox can build packets with any source; the host's
    anti-spoofing rule still drops them."""
    weak = GvisorRuntime(weakening=Weakening(all_capabilities=True, gvisor_net_raw=True))
    with sandbox_data_dir("corral-test-netsec-weak-") as data_dir:
        with SyncNode(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR),
                      runtimes={"gvisor": weak}) as node:
            with node.create("python", runtime="gvisor", network="all") as sb:
                udp_log().unlink(missing_ok=True)
                sent = run_python(sb, SPOOF, PUBLIC_A, str(UDP_PORT))
                refused = _refused_packets(sb, {PUBLIC_A})
    assert sent == {"raw": "sent"}  # the weakening took: the spoofed packet left the Sentry
    received = _after_the_control()
    assert "plain" in received and "spoof" not in received, received
    assert refused[PUBLIC_A, UDP_PORT] == "spoofed"  # and the egress log says so


SPOOF = """
import json, socket, struct, sys
def plain():  # the control, sent last: once it arrived, whatever went before has too
    p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    p.sendto(b"plain", (sys.argv[1], int(sys.argv[2])))
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
except OSError as exc:
    plain()
    print(json.dumps({"raw": type(exc).__name__})); raise SystemExit
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
src, dst = socket.inet_aton("198.51.100.99"), socket.inet_aton(sys.argv[1])
udp = struct.pack("!HHHH", 4444, int(sys.argv[2]), 8 + 5, 0) + b"spoof"
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
try:
    s.sendto(header + udp, (sys.argv[1], 0))
    result = {"raw": "sent"}
except OSError as exc:
    result = {"raw": type(exc).__name__}
plain()
print(json.dumps(result))
"""


def test_names_leak_nothing_and_name_rules_hold(open_node: SyncNode, runtime: str) -> None:
    """With a domain allow list: a name the policy does not list never reaches the
    upstream resolver (no DNS tunnelling through it, whichever server is asked), a CONNECT
    to an address is refused, and so is a TLS connection whose server name is not listed."""
    policy = {"allow": ["allowed.test:443"]}
    secret = "c2VjcmV0.tunnel.example"
    with open_node.create("python", runtime=runtime, network=policy) as sb:
        found = run_python(sb, NAMES_PROBE, secret, PUBLIC_A, RESOLVER)
        events = {(e.name, e.reason) for e in sb.network.events().events}
    assert found == {"lookup": "refused", "direct": "refused", "connect-ip": "refused",
                     "sni-other": "refused", "sni-allowed": "connected"}, found
    asked = dns_log().read_text() if dns_log().exists() else ""
    assert "tunnel.example" not in asked, asked
    assert {(secret.lower(), "not-allowed"), (PUBLIC_A, "ip-literal"),
            ("other.test", "not-allowed")} <= events, events


def test_a_connection_flood_stays_bounded(open_node: SyncNode, runtime: str) -> None:
    """A sandbox opening connections as fast as it can (bounded: 2000 rounds or 20 s) to
    an allowed address, and to others that go to its proxy: a neighbour sandbox keeps
    answering (its latency is printed, never judged), and the proxy turns away what is
    past its 256 connections."""
    with open_node.create("python", runtime=runtime, network={"allow": [PUBLIC_A,
                                                                      "allowed.test"]}) as sb, \
            open_node.create("python", runtime=runtime, network={"allow": [PUBLIC_A]}) as other:
        flood = sb.commands.run_background(["python3", "-c", FLOOD, PUBLIC_A, PUBLIC_B,
                                            PRIVATE])
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            assert other.commands.run(["true"]).exit_code == 0
            latencies.append(time.monotonic() - started)
            time.sleep(0.2)
        reasons = {e.reason for e in sb.network.events().events}
        sb.commands.kill(flood.id)
    print(f"{runtime}: neighbour exec latency under a connection flood, max "
          f"{max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 60  # it answered: no timing is judged here
    assert "too-many-connections" in reasons  # the proxy's bound held


def test_refused_packets_are_logged_at_a_bounded_rate(open_node: SyncNode,
                                                      runtime: str) -> None:
    """2000 datagrams to a private address: every one refused, the first ones in the
    egress log, and no more than the log's rate (a second) and burst however many."""
    started = time.monotonic()
    with open_node.create("python", runtime=runtime, network={"allow": [PUBLIC_A]}) as sb:
        sent = run_python(sb, BURST, PRIVATE, str(UDP_PORT))
        refused = _refused_packets(sb, {PRIVATE})
        events = [e for e in sb.network.events().events if e.kind == "packet"]
    elapsed = time.monotonic() - started
    assert sent == {"sent": 2000}
    assert refused[PRIVATE, UDP_PORT] == "always-denied"
    assert 1 <= len(events) <= LOG_RATE * (elapsed + 1) + LOG_BURST, len(events)


BURST = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for _ in range(2000):
    try:
        s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
        sent += 1
    except OSError:
        sent += 1  # an ICMP refusal of an earlier one surfaces on a later send
print(json.dumps({"sent": sent}))
"""


FLOOD = r"""
import socket, sys, time
direct, proxied, private = sys.argv[1], sys.argv[2], sys.argv[3]
end, held = time.monotonic() + 20, []
for i in range(2000):
    if time.monotonic() > end:
        break
    for target in ((direct, 8000), (proxied, 443), (private, 8000)):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(target)
        held.append(s)
    if len(held) > 900:
        for s in held[:300]:
            s.close()
        del held[:300]
    time.sleep(0.001)
"""

NAMES_PROBE = r"""
import json, socket, ssl, struct, sys
secret, public, resolver = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
try:
    socket.gethostbyname(secret)
    out["lookup"] = "resolved"
except OSError:
    out["lookup"] = "refused"
query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in secret.split(".")) + b"\0"
query += struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(query, (resolver, 53))
out["direct"] = "refused" if s.recv(4096)[3] & 0x0F == 3 else "answered"
def tls(name, connect=None):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection((public, 443 if connect is None else 3128), timeout=3)
    try:
        if connect:
            raw.sendall(f"CONNECT {connect} HTTP/1.1\r\n\r\n".encode())
            if not raw.recv(100).startswith(b"HTTP/1.1 200"):
                return "refused"
        with context.wrap_socket(raw, server_hostname=name) as t:
            t.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return "connected" if t.recv(100) else "refused"
    except OSError:
        return "refused"
out["connect-ip"] = tls("allowed.test", connect=f"{public}:443")
out["sni-other"] = tls("other.test")
out["sni-allowed"] = tls("allowed.test")
print(json.dumps(out))
"""
