"""A test "internet" in a network namespace of its own, routed from the host: what the
network benchmark rows and the network tests send sandboxes' traffic to.

Every address sandboxes are sent to lives here, on this machine:

* ``PRIVATE`` (10.251.0.2): a host in a private range, reached only once the operator opens
  :data:`LINK` (``NetOperator.parse(open_ranges=[LINK])``, as ``--net-open`` does);
* ``PUBLIC_A``/``PUBLIC_B`` (198.51.100.10 and .20, TEST-NET-2; this host may sit on
  TEST-NET-1): "public" hosts;
* ``METADATA`` (169.254.169.254): a fake cloud metadata server.

Each runs an HTTP server on :data:`PORT` (``PUBLIC_A`` also on :data:`OTHER_PORT`, and
both public hosts HTTPS on :data:`HTTPS_PORT`, with a self-signed certificate for
:data:`TLS_NAMES`) answering ``GET /`` with its own address and port, ``GET /bytes/N``
with N zero bytes (at most :data:`MAX_BYTES`), a one-package index at
``/simple/corral-demo/``, and a one-package flat apt repository at ``/apt/``
(:data:`APT_SOURCE`: :data:`APT_PACKAGE`, whose one program prints :data:`APT_LINE`).
``RESOLVER`` answers the A records of :data:`NAMES` (see
:mod:`._testnet_server`). The host gets routes to 198.51.100.0/24 and 169.254.169.254/32
through the namespace's veth for as long as the context lasts, so a sandbox's packet to
them would arrive if a rule did not stop it: a refusal proves the rule. Nothing here
sends a packet anywhere else.
"""

from __future__ import annotations

import contextlib
import datetime
import json
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
#: The test internet's DNS server (set as the node's upstream: ``NetOperator(dns=...)``).
RESOLVER = "198.51.100.53"
HTTPS_PORT = 443
#: The names it answers (A records); any other is NXDOMAIN.
NAMES = {
    "allowed.test": PUBLIC_A, "www.allowed.test": PUBLIC_A, "pypi.test": PUBLIC_A,
    "apt.test": PUBLIC_A, "other.test": PUBLIC_B, "rebind.test": PRIVATE, "meta.test": METADATA,
}
#: The names the HTTPS servers' (self-signed) certificate is for.
TLS_NAMES = ("allowed.test", "*.allowed.test", "other.test", "pypi.test")
#: The apt repository's one package (built with ``dpkg-deb`` when the servers start): it
#: installs ``/usr/bin/corral-demo-tool``, which prints :data:`APT_LINE`.
APT_PACKAGE = "corral-demo-tool"
APT_LINE = "corral-demo-tool 1.0 from the test internet"
#: The sources.list line of that repository (unsigned, hence trusted).
APT_SOURCE = f"deb [trusted=yes] http://apt.test:{PORT}/apt/ ./"


@dataclass(frozen=True)
class Internet:
    netns: str


def udp_log() -> Path:
    """Where the test internet writes each datagram it took: ``<source> <payload>`` lines."""
    return Path(tempfile.gettempdir()) / f"corral-test-internet-udp-{os.getpid()}.log"


def dns_log() -> Path:
    """Where the test internet's resolver writes each question it got: ``<source> <name>``."""
    return Path(tempfile.gettempdir()) / f"corral-test-internet-dns-{os.getpid()}.log"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def internet() -> Iterator[Internet]:
    """Build the namespace, its servers and the host's routes; remove them all after."""
    name = f"ctest-inet-{secrets.token_hex(3)}"
    host_if, inner_if = f"cti{name[-6:]}", f"ctj{name[-6:]}"
    server: subprocess.Popen[bytes] | None = None
    routed: list[str] = []
    stack = contextlib.ExitStack()
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", inner_if, "netns", name)
        _ip("addr", "add", f"{HOST_SIDE}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        inside = ["-n", name]
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{PRIVATE}/24", "dev", inner_if)
        for extra in (PUBLIC_A, PUBLIC_B, METADATA, RESOLVER):
            _ip(*inside, "addr", "add", f"{extra}/32", "dev", "lo")
        _ip(*inside, "link", "set", inner_if, "up")
        _ip(*inside, "route", "add", "default", "via", HOST_SIDE)
        for prefix in _ROUTED:
            _ip("route", "add", prefix, "via", PRIVATE, "dev", host_if)
            routed.append(prefix)
        udp_log().unlink(missing_ok=True)
        dns_log().unlink(missing_ok=True)
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="corral-testnet-"))
        cert, key = _certificate(Path(scratch))
        config = {
            "http": [f"{PRIVATE}:{PORT}", f"{PUBLIC_A}:{PORT}", f"{PUBLIC_A}:{OTHER_PORT}",
                     f"{PUBLIC_B}:{PORT}", f"{METADATA}:{PORT}"],
            "https": [f"{PUBLIC_A}:{HTTPS_PORT}", f"{PUBLIC_B}:{HTTPS_PORT}"],
            "cert": str(cert), "key": str(key), "max_bytes": MAX_BYTES,
            "udp_log": str(udp_log()), "udp_host": PUBLIC_A, "udp_port": UDP_PORT,
            "resolver": RESOLVER, "names": NAMES, "dns_log": str(dns_log()),
            "apt_package": APT_PACKAGE, "apt_line": APT_LINE}
        config_path = Path(scratch) / "config.json"
        config_path.write_text(json.dumps(config))
        argv = ["ip", "netns", "exec", name, sys.executable, "-m",
                "corral.bench._testnet_server", str(config_path)]
        server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                       "PYTHONPATH": str(Path(__file__).parents[2])})
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
        stack.close()


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and key) for :data:`TLS_NAMES`, written in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAMES[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.DNSName(n) for n in TLS_NAMES]), critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
