"""Network policies over HTTP, with the SDK: set at create, read back, changed while the
sandbox runs, and every bad entry refused by name before anything starts. Enforcement
itself is tests/integration/test_network.py's (it needs a test internet)."""

from __future__ import annotations

import re
import shutil

import pytest

from corral import NotFoundError, Sandbox
from corral.api.errors import InvalidArgumentError, SandboxNotRunningError

from .conftest import Server

pytestmark = pytest.mark.skipif(shutil.which("nft") is None,
                                reason="needs nftables (scripts/install installs it)")


def test_a_policy_is_set_read_and_replaced(server: Server, runtime: str) -> None:
    with Sandbox.create("python", runtime=runtime, network={"allow": ["203.0.113.0/24:443"],
                                                             "deny": ["203.0.113.7"]},
                        **server.sdk()) as sb:
        assert sb.info.network.model_dump() == {"allow": ["203.0.113.0/24:443"],
                                                "deny": ["203.0.113.7"]}
        info = sb.network.update({"allow": ["198.51.100.1"]})
        assert info.network.model_dump() == {"allow": ["198.51.100.1"], "deny": []}
        assert sb.network.get().network.model_dump() == {"allow": ["198.51.100.1"], "deny": []}
        assert sb.network.update("all").network == "all"
        assert Sandbox.connect(sb.id, **server.sdk()).info.network == "all"
        with server.http(server.other_key) as other:  # another tenant's sandbox: not found
            answer = other.put(f"/v1/sandboxes/{sb.id}/network", json={"network": "none"})
            assert answer.status_code == 404
    stopped = Sandbox.connect(sb.id, **server.sdk())
    with pytest.raises(SandboxNotRunningError):
        stopped.network.update("none")
    assert stopped.info.network == "all"  # the record keeps the last policy


def test_a_sandbox_without_a_network_cannot_be_opened_later(server: Server) -> None:
    with Sandbox.create("python", **server.sdk()) as sb:
        assert sb.info.network == "none"
        with pytest.raises(InvalidArgumentError, match="created without a network"):
            sb.network.update({"allow": ["198.51.100.1"]})


@pytest.mark.parametrize(("network", "named"), [
    ({"allow": ["1.2.3:80"]}, "'1.2.3:80' is not an IP address"),
    ({"allow": ["198.51.100.1:0"]}, "port '0' is not 1 to 65535"),
    ({"allow": ["198.51.100.1:65536"]}, "port '65536' is not 1 to 65535"),
    ({"allow": ["[2001:db8::1"]}, "written \\[address\\]:port"),
    ({"allow": ["10.1.2.3"]}, "10.0.0.0/8 is never reachable"),
    ({"allow": ["169.254.169.254"]}, "169.254.0.0/16 is never reachable"),
    ({"allow": ["127.0.0.1"]}, "127.0.0.0/8 is never reachable"),
    ({"allow": ["[fd00:ec2::254]:80"]}, "IPv4 only"),
    ({"allow": ["x" * 301]}, "longer than 300|at most 300"),
    ({"allow": ["198.51.100.1"] * 257}, "at most 256"),
    ({"permit": ["198.51.100.1"]}, "permit"),
    ("some", "none|all"),
])
def test_bad_policies_are_refused_naming_the_entry(server: Server, network: object,
                                                   named: str) -> None:
    with server.http(server.key) as http:
        answer = http.post("/v1/sandboxes", json={"network": network})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_argument"
    assert re.search(named, error["message"]), error["message"]


def test_an_unknown_sandbox_has_no_network(server: Server) -> None:
    with server.http(server.key) as http:
        answer = http.put("/v1/sandboxes/sbx-0000000000000000/network",
                          json={"network": "all"})
    assert answer.status_code == 404
    with pytest.raises(NotFoundError):
        Sandbox.connect("sbx-0000000000000000", **server.sdk())


def test_the_egress_log_and_its_metrics(server: Server, runtime: str) -> None:
    """A name the policy does not list is answered NXDOMAIN by the node itself (nothing
    is asked upstream), and the verdict is in the sandbox's log and in /metrics."""
    with Sandbox.create("python", runtime=runtime, network={"allow": ["allowed.example"]},
                        **server.sdk()) as sb:
        looked = sb.commands.run(["python3", "-c", "import socket\ntry:\n"
                                  "    socket.gethostbyname('blocked.example')\n"
                                  "except OSError as e:\n    print('refused')"])
        assert looked.stdout == "refused\n"
        events = sb.network.events().events
        assert [(e.kind, e.name, e.allowed, e.reason) for e in events] == [
            ("dns", "blocked.example", False, "not-allowed")]
    with server.http(server.key) as http:
        answer = http.get("/metrics")
        assert answer.status_code == 200
        assert 'corral_egress_verdicts_total{kind="dns",reason="not-allowed"}' in answer.text
        other = server.http(server.other_key)
        assert other.get(f"/v1/sandboxes/{sb.id}/network/events").status_code == 404
        other.close()
