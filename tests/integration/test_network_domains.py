"""Domain entries, enforced for real: a sandbox's names go through its node's resolver and
its connections to names through its node's proxy, against the test internet's DNS server,
HTTP, HTTPS and package index (corral.bench.testnet). Every refusal below is a name or
address that answers the host."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest

from corral.api.network import NetOperator
from corral.bench.testnet import (HTTPS_PORT, PORT, PRIVATE, PUBLIC_A, PUBLIC_B, RESOLVER,
                                  internet)
from corral.node import NodeSettings
from corral.node.sync import SyncNode, SyncNodeSandbox

from ..conftest import IMAGE_DIR, sandbox_data_dir

pytestmark = pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0,
                                reason="needs root and nftables (scripts/install installs it)")

#: For each (what, url[, extra]): the body, or "error: <kind>". TLS is not verified (the
#: test certificate is self-signed): these tests are about which name reaches which host.
PROBE = r"""
import json, socket, ssl, sys, urllib.request
insecure = ssl.create_default_context()
insecure.check_hostname = False
insecure.verify_mode = ssl.CERT_NONE
def body(s):
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data.decode().split("\r\n\r\n", 1)[-1]
out = {}
for what, target in json.loads(sys.argv[1]):
    try:
        if what == "resolve":
            out[target] = socket.gethostbyname(target)
        elif what == "tls-to":  # TLS to an address, with a server name of our choosing
            address, name = target.split("|")
            raw = socket.create_connection((address, 443), timeout=3)
            with insecure.wrap_socket(raw, server_hostname=name) as s:
                s.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
                out[target] = body(s)
        elif what == "connect-proxy":  # CONNECT name:443, then TLS with another SNI
            name, sni = target.split("|")
            raw = socket.create_connection((sys.argv[2], 3128), timeout=3)
            raw.sendall(f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
            raw.recv(4096)
            with insecure.wrap_socket(raw, server_hostname=sni) as s:
                s.sendall(f"GET / HTTP/1.0\r\nHost: {sni}\r\n\r\n".encode())
                out[target] = body(s)
        else:
            out[target] = urllib.request.urlopen(target, timeout=3,
                                                 context=insecure).read().decode()
    except Exception as exc:
        out[target] = "error: " + type(exc).__name__
print(json.dumps(out))
"""


def probe(sb: SyncNodeSandbox, *checks: tuple[str, str]) -> dict[str, str]:
    result = sb.commands.run(["python3", "-c", PROBE, json.dumps(checks), PUBLIC_A],
                             timeout=120)
    assert result.exit_code == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout)
    return found


@pytest.fixture(scope="module")
def node(python_image: str) -> Iterator[SyncNode]:
    with internet(), sandbox_data_dir("corral-test-names-") as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                                network=NetOperator.parse(dns=RESOLVER))
        with SyncNode(settings) as n:
            yield n


def test_an_allowed_name_resolves_and_connects_and_others_do_not(node: SyncNode,
                                                                 runtime: str) -> None:
    policy = {"allow": [f"allowed.test:{PORT}", "*.allowed.test", f"allowed.test:{HTTPS_PORT}"]}
    with node.create("python", runtime=runtime, network=policy) as sb:
        found = probe(sb, ("resolve", "allowed.test"), ("resolve", "www.allowed.test"),
                      ("resolve", "other.test"), ("resolve", "nowhere.test"),
                      ("get", f"http://allowed.test:{PORT}/"),
                      ("get", "https://allowed.test/"),
                      ("get", f"http://www.allowed.test:{PORT}/"),
                      ("get", f"http://other.test:{PORT}/"),
                      ("get", f"http://{PUBLIC_A}:{PORT}/"))
        events = sb.network.events().events
        traffic = sb.network.get()
    assert found["allowed.test"] == found["www.allowed.test"] == PUBLIC_A
    assert found["other.test"].startswith("error") and found["nowhere.test"].startswith("error")
    assert found[f"http://allowed.test:{PORT}/"] == f"{PUBLIC_A}:{PORT}"
    assert found["https://allowed.test/"] == f"{PUBLIC_A}:{HTTPS_PORT}"
    assert found[f"http://www.allowed.test:{PORT}/"] == f"{PUBLIC_A}:{PORT}"
    assert found[f"http://other.test:{PORT}/"].startswith("error")  # it does not resolve
    assert found[f"http://{PUBLIC_A}:{PORT}/"].startswith("error")  # an IP literal
    assert traffic.bytes_in > 100 and traffic.bytes_out > 100  # through the proxy too
    verdicts = {(e.kind, e.name, e.reason) for e in events}
    assert ("dns", "other.test", "not-allowed") in verdicts
    assert ("connect", "allowed.test", "allowed") in verdicts
    assert ("connect", PUBLIC_A, "ip-literal") in verdicts


def test_names_cannot_be_forced_fronted_or_rebound(node: SyncNode, runtime: str) -> None:
    policy = {"allow": ["allowed.test", "rebind.test", "meta.test"],
              "deny": [f"allowed.test:{PORT}"]}
    with node.create("python", runtime=runtime, network=policy) as sb:
        found = probe(
            sb, ("resolve", "rebind.test"), ("resolve", "meta.test"),
            # An allowed name forced onto another host's address: served by the name's.
            ("tls-to", f"{PUBLIC_B}|allowed.test"),
            # A refused name on an allowed address: closed.
            ("tls-to", f"{PUBLIC_A}|other.test"),
            # CONNECT to an allowed name, then TLS for another (fronting): closed.
            ("connect-proxy", "allowed.test|other.test"),
            ("connect-proxy", "allowed.test|allowed.test"),
            ("get", f"http://allowed.test:{PORT}/"))  # the deny entry's port
    assert found["rebind.test"].startswith("error")  # its only answer is private
    assert found["meta.test"].startswith("error")
    assert found[f"{PUBLIC_B}|allowed.test"] == f"{PUBLIC_A}:{HTTPS_PORT}"
    assert found[f"{PUBLIC_A}|other.test"].startswith("error")
    assert found["allowed.test|other.test"].startswith("error")
    assert found["allowed.test|allowed.test"] == f"{PUBLIC_A}:{HTTPS_PORT}"
    assert found[f"http://allowed.test:{PORT}/"].startswith("error")


def test_dns_goes_to_the_node_whatever_server_is_asked(node: SyncNode, runtime: str) -> None:
    """A query sent straight to the test internet's resolver (allowed by address) is still
    answered by the node's, which knows only the policy's names: no tunnelling through
    another resolver."""
    with node.create("python", runtime=runtime,
                     network={"allow": ["allowed.test", f"{RESOLVER}"]}) as sb:
        asked = sb.commands.run(["python3", "-c", ASK, RESOLVER, "other.test"], timeout=60)
    assert asked.exit_code == 0, asked.stderr
    assert json.loads(asked.stdout) == {"rcode": 3}  # NXDOMAIN: it never left the node


def test_pip_installs_from_an_allowed_index_only(node: SyncNode, runtime: str) -> None:
    install = ["python3", "-m", "pip", "install", "--quiet", "--no-cache-dir", "--target",
               "/tmp/demo", "--index-url", f"http://pypi.test:{PORT}/simple/",
               "--trusted-host", f"pypi.test:{PORT}",
               "--retries", "0", "--timeout", "5", "corral-demo"]
    check = ["python3", "-c", "import sys; sys.path.insert(0, '/tmp/demo'); "
             "import corral_demo; print(corral_demo.VALUE)"]
    with node.create("python", runtime=runtime,
                     network={"allow": [f"pypi.test:{PORT}"]}) as sb:
        done = sb.commands.run(install, timeout=120)
        assert done.exit_code == 0, done.stderr
        assert sb.commands.run(check).stdout == "42\n"
    with node.create("python", runtime=runtime, network={"allow": ["allowed.test"]}) as sb:
        refused = sb.commands.run(install, timeout=120)
        assert refused.exit_code != 0
        assert sb.commands.run(check).exit_code != 0


def test_all_resolves_public_names_but_never_private_answers(node: SyncNode,
                                                             runtime: str) -> None:
    with node.create("python", runtime=runtime, network="all") as sb:
        found = probe(sb, ("resolve", "other.test"), ("resolve", "rebind.test"),
                      ("get", f"http://other.test:{PORT}/"))
    assert found["other.test"] == PUBLIC_B
    assert found["rebind.test"].startswith("error")
    assert found[f"http://other.test:{PORT}/"] == f"{PUBLIC_B}:{PORT}"
    assert PRIVATE not in json.dumps(found)


ASK = r"""
import json, socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
query += struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(query, (server, 53))
reply = s.recv(4096)
print(json.dumps({"rcode": reply[3] & 0x0F}))
"""
