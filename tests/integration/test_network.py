"""Network policies, enforced for real: sandboxes on both runtimes against a test "internet"
in a network namespace of this test's own (tests/fakes/internet.py); no packet leaves the
machine. A refusal counts only where the same request from the host succeeds, so every
"unreachable" below is the policy's doing, not a missing route."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.bench.testnet import (HOST_SIDE, LINK, METADATA, OTHER_PORT, PORT, PRIVATE, PUBLIC_A,
                                PUBLIC_B, RESOLVER, internet)
from corral.api.errors import InvalidArgumentError
from corral.api.network import NetOperator
from corral.node import NodeSettings
from corral.node.sync import SyncNode, SyncNodeSandbox

from ..conftest import IMAGE_DIR, sandbox_data_dir

pytestmark = pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0,
                                reason="needs root and nftables (scripts/install installs it)")

#: Fetches each URL (2 s timeout) and prints {url: body or "error: <kind>"} as JSON.
PROBE = """
import json, socket, sys, urllib.request
out = {}
for url in sys.argv[1:]:
    try:
        out[url] = urllib.request.urlopen(url, timeout=2).read().decode()
    except Exception as exc:
        reason = getattr(exc, "reason", exc)
        out[url] = "error: " + type(reason).__name__
print(json.dumps(out))
"""

PRIVATE_URL = f"http://{PRIVATE}:{PORT}/"
A_URL, A_OTHER_URL = f"http://{PUBLIC_A}:{PORT}/", f"http://{PUBLIC_A}:{OTHER_PORT}/"
B_URL = f"http://{PUBLIC_B}:{PORT}/"
METADATA_URL = f"http://{METADATA}:{PORT}/"
HOST_URL = f"http://{HOST_SIDE}:{PORT}/"
EVERY = [PRIVATE_URL, A_URL, A_OTHER_URL, B_URL, METADATA_URL]
CORRAL = Path(sys.executable).parent / "corral"


def reached(sandbox: SyncNodeSandbox, urls: list[str]) -> dict[str, str]:
    result = sandbox.commands.run(["python3", "-c", PROBE, *urls], timeout=60)
    assert result.exit_code == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout)
    return found


def ok(found: dict[str, str]) -> set[str]:
    return {url for url, body in found.items() if not body.startswith("error")}


@pytest.fixture(scope="module")
def test_internet() -> Iterator[None]:
    with internet():
        from_host = subprocess.run(["python3", "-c", PROBE, *EVERY], capture_output=True,
                                   text=True, timeout=60, check=True)
        assert ok(json.loads(from_host.stdout)) == set(EVERY), from_host.stdout
        yield


@pytest.fixture(scope="module")
def net_node(test_internet: None, python_image: str) -> Iterator[SyncNode]:
    """A node whose operator opened the test internet's private link."""
    with sandbox_data_dir("corral-test-net-") as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                                network=NetOperator.parse(open_ranges=[LINK], dns=RESOLVER))
        with SyncNode(settings) as node:
            yield node


@pytest.fixture(scope="module")
def closed_node(test_internet: None, python_image: str) -> Iterator[SyncNode]:
    """A node with the operator's defaults: nothing private opened."""
    with sandbox_data_dir("corral-test-net-closed-") as data_dir:
        # Names resolve through the test internet's resolver, never the host's.
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                                network=NetOperator.parse(dns=RESOLVER))
        with SyncNode(settings) as node:
            yield node


def test_an_allow_list_reaches_what_it_names_and_nothing_else(net_node: SyncNode,
                                                              runtime: str) -> None:
    with net_node.create("python", runtime=runtime, network={
            "allow": [f"{PRIVATE}:{PORT}", f"{PUBLIC_A}:{PORT}"]}) as sb:
        found = reached(sb, [*EVERY, HOST_URL])
    assert ok(found) == {PRIVATE_URL, A_URL}, found
    assert found[A_OTHER_URL] == found[B_URL] == "error: OSError"  # rejected at once
    assert found[METADATA_URL].startswith("error")
    assert found[HOST_URL].startswith("error")  # the host itself: dropped


def test_deny_wins_and_all_means_public_only(closed_node: SyncNode, runtime: str) -> None:
    policy = {"allow": [f"{PUBLIC_A}/32"], "deny": [f"{PUBLIC_A}:{OTHER_PORT}"]}
    with closed_node.create("python", runtime=runtime, network=policy) as sb:
        assert ok(reached(sb, EVERY)) == {A_URL}
    with closed_node.create("python", runtime=runtime, network="all") as sb:
        # Private and link-local stay closed: this node's operator opened nothing.
        assert ok(reached(sb, EVERY)) == {A_URL, A_OTHER_URL, B_URL}


def test_an_update_reaches_new_connections_within_a_second(net_node: SyncNode,
                                                           runtime: str) -> None:
    with net_node.create("python", runtime=runtime, network={"allow": []}) as sb:
        assert ok(reached(sb, [A_URL, B_URL])) == set()
        started = time.monotonic()
        info = sb.network.update({"allow": [PUBLIC_B]})
        assert info.network.model_dump() == {"allow": [PUBLIC_B], "deny": []}
        assert ok(reached(sb, [A_URL, B_URL])) == {B_URL}
        assert time.monotonic() - started < 5  # the fetch included; the rule is at once
        sb.network.update("none")
        assert ok(reached(sb, [A_URL, B_URL])) == set()
        assert sb.network.policy.mode == "none"


def test_traffic_is_counted_both_ways(net_node: SyncNode, runtime: str) -> None:
    with net_node.create("python", runtime=runtime, network={"allow": [PUBLIC_A]}) as sb:
        before = sb.network.get()
        assert (before.bytes_in, before.bytes_out) == (0, 0)
        assert ok(reached(sb, [f"http://{PUBLIC_A}:{PORT}/bytes/1000000"])) != set()
        after = sb.network.get()
    assert 1_000_000 <= after.bytes_in < 1_200_000
    assert 100 < after.bytes_out < after.bytes_in


def test_no_policy_means_loopback_only(net_node: SyncNode, runtime: str) -> None:
    with net_node.create("python", runtime=runtime) as sb:
        assert ok(reached(sb, EVERY)) == set()
        listed = sb.commands.run(["python3", "-c", "import socket; print(sorted(n for _, n in "
                                  "socket.if_nameindex()))"])
        assert listed.stdout.strip() == "['lo']"
        with pytest.raises(InvalidArgumentError, match="created without a network"):
            sb.network.update("all")


def test_the_network_goes_with_its_sandbox(net_node: SyncNode, runtime: str) -> None:
    before = set(os.listdir("/run/netns"))
    sb = net_node.create("python", runtime=runtime, network="all")
    mine = set(os.listdir("/run/netns")) - before
    assert len(mine) == 1 and mine.pop().startswith("corral-"), mine
    name = (set(os.listdir("/run/netns")) - before).pop()
    slot = name.rsplit("-", 1)[1]
    sb.kill()
    assert name not in os.listdir("/run/netns")
    deadline = time.monotonic() + 10  # the kernel frees the namespace (and veth) after
    while Path(f"/sys/class/net/cxh{slot}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/sys/class/net/cxh{slot}").exists()
    table = subprocess.run(["nft", "list", "table", "inet", "corral"], capture_output=True,
                           text=True, check=True).stdout
    # Every map and chain forgot it; only a refused-packet log meter may still hold its
    # name for a minute (a packet refused while it stopped), which expires by itself.
    kept = [line for line in table.splitlines() if "limit rate" not in line]
    assert not any(f'"cxh{slot}"' in line for line in kept), table
    assert f"chain s{slot} " not in table
    # /run/netns is one shared mount, made once: a bind over a shared mount would multiply.
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    assert sum(line.split()[4] == "/run/netns" for line in mounts) == 1


def test_policies_beyond_the_operators_rules_are_refused_naming_the_rule(
        python_image: str) -> None:
    with sandbox_data_dir("corral-test-net-strict-") as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                                network=NetOperator.parse(allow_all=False, max_entries=2))
        with SyncNode(settings) as node:
            with pytest.raises(InvalidArgumentError, match="no unrestricted egress"):
                node.create("python", network="all")
            with pytest.raises(InvalidArgumentError,
                               match=r"169\.254\.0\.0/16 is never reachable"):
                node.create("python", network={"allow": [METADATA]})
            with pytest.raises(InvalidArgumentError, match="allows at most 2"):
                node.create("python", network={"allow": [PUBLIC_A, PUBLIC_B, "203.0.113.1"]})
            with pytest.raises(InvalidArgumentError, match="'1.2.3:80' is not an IP"):
                node.create("python", network={"allow": ["1.2.3:80"]})
            assert node.list() == []


@pytest.mark.parametrize("runtime", ["namespaces"])
def test_a_sandbox_cannot_spoof_its_source_address(net_node: SyncNode, runtime: str) -> None:
    """Raw sockets are the namespaces runtime's question (gVisor's netstack builds every
    packet itself): even root in the sandbox has no CAP_NET_RAW over the host-owned
    namespace, and the host drops any packet whose source is not the sandbox's."""
    with net_node.create("python", runtime=runtime, network="all") as sb:
        attempt = sb.commands.run(["python3", "-c", "import socket; socket.socket("
                                   "socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)"])
    assert attempt.exit_code != 0 and "PermissionError" in attempt.stderr


def test_a_restarted_node_keeps_enforcing_and_updating(test_internet: None, runtime: str,
                                                       python_image: str) -> None:
    with sandbox_data_dir("corral-test-net-restart-") as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                                network=NetOperator.parse(dns=RESOLVER))
        first = SyncNode(settings)
        sb = first.create("python", runtime=runtime, network={"allow": [PUBLIC_A]})
        first.close(detach=True)
        with SyncNode(settings) as second:
            again = second.get(sb.id)
            assert again.network.policy.to_wire() == {"allow": [PUBLIC_A], "deny": []}
            assert ok(reached(again, [A_URL, B_URL])) == {A_URL}
            again.network.update({"allow": [PUBLIC_B]})
            assert ok(reached(again, [A_URL, B_URL])) == {B_URL}
            again.kill()
        assert not [n for n in os.listdir("/run/netns")
                    if n.startswith(f"corral-{settings.node_key}-")]


def test_corral_run_net(test_internet: None, runtime: str, python_image: str) -> None:
    with sandbox_data_dir("corral-test-net-cli-") as data_dir:
        env = {**os.environ, "CORRAL_IMAGE_DIR": str(IMAGE_DIR), "CORRAL_NET_DNS": RESOLVER}
        done = subprocess.run(
            [str(CORRAL), "run", "--data-dir", str(data_dir), "--runtime", runtime,
             "--net", f"allow:{PUBLIC_A}:{PORT}", "--", "python3", "-c", PROBE, A_URL, B_URL],
            capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert ok(json.loads(done.stdout)) == {A_URL}
