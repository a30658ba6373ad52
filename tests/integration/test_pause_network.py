"""Pausing and resuming networked sandboxes, against a test "internet" in a network namespace
of this test's own (corral.bench.testnet); no packet leaves the machine (docs/pause.md).

gVisor: the checkpoint drops the sandbox's connections (it runs with ``--net-disconnect-ok``),
its network slot stays while it is paused, and the restore goes back into the same namespace
once the node has put back the address runsc took out of it. On both runtimes, after each
resume: what its policy allows is reached again (by address, and by name through its
resolver and proxy), what it does not stays refused (the refusal is in its egress log), and
all of this survives a restart of the node. gVisor only: after a reboot of the host (its
namespace, veth and rules gone) the slot is made again, at the same index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.errors import ResourceExhaustedError
from corral.api.network import NetOperator
from corral.bench.testnet import PORT, PUBLIC_A, PUBLIC_B, RESOLVER, UDP_PORT, internet
from corral.node import NodeSettings, SandboxState
from corral.node.sync import SyncNode, SyncNodeSandbox
from corral.runtime.host import SandboxNet, destroy_net

from ..conftest import IMAGE_DIR, WORKING, sandbox_data_dir
from .test_pause import wait_for

pytestmark = pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0,
                                reason="needs root and nftables (scripts/install installs it)")

#: Fetches each URL (3 s timeout) and prints {url: body or "error: <kind>"} as JSON; then
#: sends one UDP datagram to the host and port given with ``--udp`` (a packet no proxy
#: handles: only the sandbox's rules stand in its way).
PROBE = """
import json, socket, sys, urllib.request
out = {}
args = sys.argv[1:]
if args[:1] == ["--udp"]:
    host, port = args[1].split(":")
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (host, int(port)))
    args = args[2:]
for url in args:
    try:
        out[url] = urllib.request.urlopen(url, timeout=3).read().decode()
    except Exception as exc:
        out[url] = "error: " + type(getattr(exc, "reason", exc)).__name__
print(json.dumps(out))
"""
#: Opens a connection to the allowed host, says so in /work/held, and keeps it open.
HOLD = f"""
import socket, time
s = socket.create_connection(("{PUBLIC_A}", {PORT}), timeout=10)
open("/work/held", "w").write("held")
time.sleep(100000)
"""
A_URL = f"http://{PUBLIC_A}:{PORT}/"
NAMED_URL = f"http://allowed.test:{PORT}/"  # through its resolver and proxy
B_URL = f"http://{PUBLIC_B}:{PORT}/"  # a test host its policy does not allow
OTHER_NAME_URL = f"http://other.test:{PORT}/"  # a name its policy does not allow
EVERY = [A_URL, NAMED_URL, B_URL, OTHER_NAME_URL]
POLICY = {"allow": [f"{PUBLIC_A}:{PORT}", f"allowed.test:{PORT}"]}
CYCLES = 3


def reached(sb: SyncNodeSandbox) -> dict[str, str]:
    result = sb.commands.run(["python3", "-c", PROBE, "--udp", f"{PUBLIC_B}:{UDP_PORT}",
                              *EVERY], timeout=120)
    assert result.exit_code == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout)
    return found


def assert_policy_holds(sb: SyncNodeSandbox, since: float) -> None:
    """The allowed host answers, by address and by name; the others do not, and the
    refusals since ``since`` are in its egress log: the resolver's verdict on the name,
    the proxy's on the address (a policy with names sends other TCP to its proxy), and the
    rules' on the datagram (the kernel hands those over asynchronously: bounded wait)."""
    found = reached(sb)
    assert found[A_URL] == found[NAMED_URL] == f"{PUBLIC_A}:{PORT}", found
    assert found[B_URL].startswith("error") and found[OTHER_NAME_URL].startswith("error"), found

    def refused() -> set[tuple[str, str, str]]:
        return {(e.kind, e.name or e.address or "", e.reason)
                for e in sb.network.events().events if e.at.timestamp() >= since and not e.allowed}

    wanted = {("dns", "other.test", "not-allowed"), ("connect", PUBLIC_B, "ip-literal"),
              ("packet", PUBLIC_B, "not-allowed")}
    wait_for(lambda: wanted <= refused(), 10)


@pytest.fixture(scope="module")
def test_internet() -> Iterator[None]:
    with internet():
        from_host = subprocess.run(["python3", "-c", PROBE, A_URL, B_URL], capture_output=True,
                                   text=True, timeout=60, check=True)
        assert all(not body.startswith("error")  # so every refusal below is the policy's
                   for body in json.loads(from_host.stdout).values()), from_host.stdout
        yield


def settings_for(data_dir: Path) -> NodeSettings:
    # Names resolve through the test internet's resolver, never the host's.
    return NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                        network=NetOperator.parse(dns=RESOLVER))


@pytest.fixture(scope="module")
def net_node(test_internet: None, python_image: str) -> Iterator[SyncNode]:
    with sandbox_data_dir("corral-test-pause-net-") as data_dir:
        with SyncNode(settings_for(data_dir)) as node:
            yield node


@pytest.fixture
def own_data_dir(test_internet: None, python_image: str) -> Iterator[Path]:
    with sandbox_data_dir("corral-test-pause-net-restart-") as path:
        yield path


def slot_of(node: SyncNode, sandbox_id: str) -> SandboxNet:
    net = node.node.network.slot(node.node.get(sandbox_id).handle.extra)
    assert net is not None
    return net


def test_the_policy_holds_across_pause_cycles(net_node: SyncNode, runtime: str) -> None:
    """A connection open at the pause is dropped (gVisor) and does not block it; its slot
    stays while it is paused."""
    sb = net_node.create("python", runtime=runtime, network=POLICY, timeout=600)
    try:
        assert_policy_holds(sb, time.time())
        sb.commands.run_background(["python3", "-c", HOLD])
        wait_for(lambda: sb.files.exists("/work/held"), 60)
        net = slot_of(net_node, sb.id)
        pauses, resumes = [], []
        for _ in range(CYCLES):
            started = time.monotonic()
            net_node.pause(sb.id)
            pauses.append(time.monotonic() - started)
            assert sb.state is SandboxState.PAUSED
            assert os.path.ismount(net.netns_path)  # the slot stays
            assert Path(f"/sys/class/net/{net.host_ifname}").exists()
            since = time.time()
            started = time.monotonic()
            net_node.resume(sb.id)
            resumes.append(time.monotonic() - started)
            assert_policy_holds(sb, since)
        print(f"\n{runtime}, networked: pause {_spread(pauses)} s; resume {_spread(resumes)} s "
              f"over {CYCLES} cycles")
    finally:
        sb.kill()
    assert not os.path.exists(net.netns_path)  # gone with it, paused or not


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]:.3f}/{ordered[len(ordered) // 2]:.3f}/{ordered[-1]:.3f}"


def test_a_paused_networked_sandbox_survives_a_node_restart(own_data_dir: Path,
                                                            runtime: str) -> None:
    """The next node adopts it paused with its slot (the sweep of networks keeps it) and
    serves its resolver; resumed, its policy holds. Adopted running, it pauses again."""
    settings = settings_for(own_data_dir)
    first = SyncNode(settings)
    sb = first.create("python", runtime=runtime, network=POLICY, timeout=600)
    net = slot_of(first, sb.id)
    first.pause(sb.id)
    first.close(detach=True)
    second = SyncNode(settings)
    try:
        assert second.lost == {}
        again = second.get(sb.id)
        assert again.state is SandboxState.PAUSED
        assert os.path.ismount(net.netns_path)  # kept by the sweep
        since = time.time()
        second.resume(sb.id)
        assert_policy_holds(again, since)
        second.close(detach=True)  # handed over running this time
        second = SyncNode(settings)
        again = second.get(sb.id)
        second.pause(sb.id)  # its checkpoint runs on the recorded namespace
        since = time.time()
        second.resume(sb.id)
        assert_policy_holds(again, since)
        again.kill()
        assert not os.path.exists(net.netns_path)
    finally:
        second.close()


def test_a_reboot_takes_the_slot_and_the_resume_makes_it_again(own_data_dir: Path,
                                                               runtime: str) -> None:
    """A reboot is played by removing the slot (namespace, veth pair, rules) while no node
    runs. Another node's interface at its index: the resume says so and it stays paused;
    no new sandbox of this node takes that index meanwhile. Once it is free, the resume
    makes the slot again at the same index, and its policy holds."""
    if runtime != "gvisor":
        pytest.skip("a gVisor matter: a paused namespaces sandbox does not survive a reboot")
    settings = settings_for(own_data_dir)
    first = SyncNode(settings)
    sb = first.create("python", runtime=runtime, network=POLICY, timeout=600)
    sb.files.write("/work/note", b"before the reboot")
    net = slot_of(first, sb.id)
    first.pause(sb.id)
    first.close(detach=True)
    destroy_net(net)
    wait_for(lambda: not Path(f"/sys/class/net/{net.host_ifname}").exists(), 10)
    # Another node's sandbox at that index: an interface of its name, down (a veth pair
    # whose other end is named outside the sandboxes' prefix; nothing is routed to it).
    subprocess.run(["ip", "link", "add", net.host_ifname, "type", "veth", "peer", "name",
                    f"ctp{net.index}"], check=True, capture_output=True, timeout=10)
    impostor = True
    second: SyncNode | None = None
    try:
        second = SyncNode(settings)
        assert second.lost == {}
        again = second.get(sb.id)
        assert again.state is SandboxState.PAUSED
        with pytest.raises(ResourceExhaustedError, match="another node's sandbox holds"):
            second.resume(sb.id)
        assert again.state is SandboxState.PAUSED
        subprocess.run(["ip", "link", "del", net.host_ifname], check=True,
                       capture_output=True, timeout=10)
        impostor = False
        with second.create("python", runtime=runtime, network={"allow": []}) as other:
            assert slot_of(second, other.id).index != net.index
        since = time.time()
        second.resume(sb.id)
        assert slot_of(second, sb.id) == net and os.path.ismount(net.netns_path)
        assert again.files.read("/work/note") == b"before the reboot"
        assert_policy_holds(again, since)
        again.kill()
    finally:
        if impostor:  # only ours: once deleted, the name may be another sandbox's
            subprocess.run(["ip", "link", "del", net.host_ifname], capture_output=True,
                           timeout=10)
        if second is not None:
            second.close()


def test_a_fork_of_a_networked_sandbox_gets_networks_of_its_own(net_node: SyncNode) -> None:
    """gVisor: each copy gets a slot of its own (address, rules, resolver and proxy) under
    its source's policy, and its resolver is its own gateway; a connection its source held
    is not carried over; the source's policy holds on, its slot untouched."""
    if "gvisor" not in WORKING:
        pytest.skip("memory snapshots are gVisor's")
    sb = net_node.create("python", runtime="gvisor", network=POLICY, timeout=600)
    clones: list[SyncNodeSandbox] = []
    nets: list[SandboxNet] = []
    try:
        sb.run_code("token = 'from the source'")
        sb.commands.run_background(["python3", "-c", HOLD])
        wait_for(lambda: sb.files.exists("/work/held"), 60)
        source_net = slot_of(net_node, sb.id)
        since = time.time()
        clones = net_node.fork(sb.id, 2)
        nets = [slot_of(net_node, c.id) for c in clones]
        assert len({n.index for n in (source_net, *nets)}) == 3
        assert len({n.gateway for n in (source_net, *nets)}) == 3
        for clone, net in zip(clones, nets, strict=True):
            assert clone.run_code("token").text == "'from the source'"
            assert clone.files.read("/etc/resolv.conf") == f"nameserver {net.gateway}\n".encode()
            assert_policy_holds(clone, since)
        assert_policy_holds(sb, since)
        assert slot_of(net_node, sb.id) == source_net
    finally:
        sb.kill()
        for clone in clones:
            clone.kill()
    for net in nets:
        assert not os.path.exists(net.netns_path)
