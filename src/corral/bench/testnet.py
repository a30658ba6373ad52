"""A test "internet" in a network namespace of its own, routed from the host: what the
network benchmark rows and the network tests send sandboxes' traffic to.

Every address sandboxes are sent to lives here, on this machine:

* ``PRIVATE`` (10.251.0.2): a host in a private range, reached only once the operator opens
  :data:`LINK` (``NetOperator.parse(open_ranges=[LINK])``, as ``--net-open`` does);
* ``PUBLIC_A``/``PUBLIC_B`` (198.51.100.10 and .20, TEST-NET-2; this host may sit on
  TEST-NET-1): "public" hosts;
* ``METADATA`` (169.254.169.254): a fake cloud metadata server.

Each runs an HTTP server on :data:`PORT` (``PUBLIC_A`` also on :data:`OTHER_PORT`)
answering ``GET /`` with its own address and port, and ``GET /bytes/N`` with N zero bytes
(at most :data:`MAX_BYTES`). The host gets routes to
198.51.100.0/24 and 169.254.169.254/32 through the namespace's veth for as long as the
context lasts, so a sandbox's packet to them would arrive if a rule did not stop it: a
refusal proves the rule. Nothing here sends a packet anywhere else.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LINK = "10.251.0.0/24"
HOST_SIDE = "10.251.0.1"
PRIVATE = "10.251.0.2"
PUBLIC_A = "198.51.100.10"
PUBLIC_B = "198.51.100.20"
METADATA = "169.254.169.254"
PORT = 8000
OTHER_PORT = 8001
#: ``PUBLIC_A`` also takes UDP datagrams on this port and logs them (:func:`udp_log`).
UDP_PORT = 9999
_ROUTED = ("198.51.100.0/24", "169.254.169.254/32")

MAX_BYTES = 256 * 1024 * 1024

_SERVER = r"""
import http.server, socket, socketserver, sys, threading
CHUNK = bytes(1024 * 1024)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/bytes/") and self.path[7:].isdigit():
            size = min(int(self.path[7:]), MAX_BYTES)
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            while size > 0:
                self.wfile.write(CHUNK[:min(size, len(CHUNK))])
                size -= len(CHUNK)
            return
        body = f"{self.server.server_address[0]}:{self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
log_path, udp_host, udp_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((udp_host, udp_port))
    while True:
        data, source = s.recvfrom(2048)
        with open(log_path, "a") as log:
            log.write(f"{source[0]} {data[:64].decode(errors='replace')}\n")
threading.Thread(target=udp, daemon=True).start()
servers = []
for spec in sys.argv[4:]:
    host, port = spec.rsplit(":", 1)
    s = socketserver.ThreadingTCPServer((host, int(port)), H)
    s.daemon_threads = True
    servers.append(s)
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
""".replace("MAX_BYTES", str(MAX_BYTES))


@dataclass(frozen=True)
class Internet:
    netns: str


def udp_log() -> Path:
    """Where the test internet writes each datagram it took: ``<source> <payload>`` lines."""
    return Path(tempfile.gettempdir()) / f"corral-test-internet-udp-{os.getpid()}.log"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def internet() -> Iterator[Internet]:
    """Build the namespace, its servers and the host's routes; remove them all after."""
    name = f"ctest-inet-{secrets.token_hex(3)}"
    host_if, inner_if = f"cti{name[-6:]}", f"ctj{name[-6:]}"
    server: subprocess.Popen[bytes] | None = None
    routed: list[str] = []
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", inner_if, "netns", name)
        _ip("addr", "add", f"{HOST_SIDE}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        inside = ["-n", name]
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{PRIVATE}/24", "dev", inner_if)
        for extra in (PUBLIC_A, PUBLIC_B, METADATA):
            _ip(*inside, "addr", "add", f"{extra}/32", "dev", "lo")
        _ip(*inside, "link", "set", inner_if, "up")
        _ip(*inside, "route", "add", "default", "via", HOST_SIDE)
        for prefix in _ROUTED:
            _ip("route", "add", prefix, "via", PRIVATE, "dev", host_if)
            routed.append(prefix)
        listen = [f"{PRIVATE}:{PORT}", f"{PUBLIC_A}:{PORT}", f"{PUBLIC_A}:{OTHER_PORT}",
                  f"{PUBLIC_B}:{PORT}", f"{METADATA}:{PORT}"]
        udp_log().unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", name, sys.executable, "-c", _SERVER, str(udp_log()),
                PUBLIC_A, str(UDP_PORT), *listen]
        server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        assert server.stdout is not None
        deadline = time.monotonic() + 30
        line = server.stdout.readline()
        if line.strip() != b"ready" or time.monotonic() > deadline:
            raise RuntimeError(f"the test internet's servers did not start: {line!r}")
        yield Internet(netns=name)
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        for prefix in routed:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("route", "del", prefix, "via", PRIVATE, "dev", host_if)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", name)
