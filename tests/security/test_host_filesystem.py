"""Category 1, the host's filesystem: /etc/shadow, the server's database and keys, other
sandboxes' files, writes outside the sandbox, device nodes, /proc/<pid>/root and
/proc/self/exe tricks. Each attack fails and the host's and the victim's files are intact."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from corral.node import SyncNode, SyncNodeSandbox

from ._checks import Victim, check_read_only_mounts_hold, run_program, run_python
from .conftest import Canary

#: Character devices a sandbox may have: the harmless ones every container gets.
ALLOWED_DEVICES = {"null", "zero", "full", "random", "urandom", "tty", "ptmx"}
SENTRY_DEVICES = {"/dev/fuse", "/dev/net/tun"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _host_secrets(node: SyncNode, victim: Victim, canary: Canary) -> tuple[list[str], list[str]]:
    """Host paths an attacker would go for, and strings that must never come back."""
    data_dir = node.node.settings.data_dir
    shadow_hashes = [line.split(":")[1] for line in Path("/etc/shadow").read_text().splitlines()
                     if line.count(":") >= 2 and len(line.split(":")[1]) > 3]
    paths = [str(p) for p in canary.paths] + [
        "/etc/shadow", "/etc/ssh/ssh_host_ed25519_key", "/root/.ssh/id_rsa",
        str(data_dir / "corral.db"), str(data_dir / "tls" / "ca.key"),
        "/var/lib/corral/corral.db", "/var/lib/corral/tls/server.key",
        str(victim.host_dir / "rootfs" / Victim.PATH.lstrip("/")),
        str(victim.host_dir / "disk" / "upper" / Victim.PATH.lstrip("/")),
    ]
    return paths, [canary.secret, victim.secret, *shadow_hashes]


def test_host_and_neighbour_files_cannot_be_read(node: SyncNode, attacker: SyncNodeSandbox,
                                                 victim: Victim, canary: Canary) -> None:
    paths, secrets = _host_secrets(node, victim, canary)
    assert len(secrets) > 2 or Path("/etc/shadow").read_text(), "nothing to look for"
    result = run_program(attacker, "host_fs.py", json.dumps({"paths": paths,
                                                            "secrets": secrets}))
    assert result["found"] == [], result["found"]
    assert result["proc_roots"] == [], result["proc_roots"]
    # What the sandbox calls /etc/shadow is the image's, never the host's.
    shadow = attacker.commands.run(["cat", "/etc/shadow"]).stdout
    assert shadow == (node.node.images.get("python").rootfs / "etc/shadow").read_text()
    canary.assert_intact()
    victim.assert_unharmed()


def test_writes_never_leave_the_sandbox(node: SyncNode, attacker: SyncNodeSandbox,
                                        victim: Victim, canary: Canary) -> None:
    paths, secrets = _host_secrets(node, victim, canary)
    result = run_program(attacker, "host_fs.py", json.dumps({"paths": paths,
                                                            "secrets": secrets}))
    assert result["writable"] == [], f"writes landed outside the sandbox: {result['writable']}"
    # The host paths exist nowhere in the sandbox: writing them lands in its own layer.
    script = ("import json, os, sys\n"
              "done = []\n"
              "for p in json.loads(sys.argv[1]):\n"
              "    try:\n"
              "        os.makedirs(os.path.dirname(p), exist_ok=True)\n"
              "        open(p, 'w').write('overwritten by a sandbox')\n"
              "        done.append(p)\n"
              "    except OSError:\n"
              "        pass\n"
              "print(json.dumps(done))\n")
    run_python(attacker, script, json.dumps(paths))
    canary.assert_intact()
    victim.assert_unharmed()
    assert "overwritten" not in Path("/etc/shadow").read_text()


def test_the_image_and_host_binaries_stay_unchanged(node: SyncNode, runtime: str,
                                                    attacker: SyncNodeSandbox,
                                                    victim: Victim) -> None:
    """Overwriting the image's python, /proc/*/exe (the runc CVE-2019-5736 route) and the
    agent's own files changes neither the shared image, nor the host's tools, nor the
    neighbour's view."""
    image_tool = node.node.images.get("python").rootfs / "usr/bin/base64"
    runsc = node.node.runtime("gvisor").chosen()[0].path if runtime == "gvisor" else None  # type: ignore[attr-defined]
    tools = [Path(p) for p in (shutil.which("bwrap"), shutil.which("runsc"), runsc) if p]
    before = {p: _sha(p) for p in [image_tool, *tools]}
    result = run_program(attacker, "host_fs.py", json.dumps({"paths": [], "secrets": []}))
    # namespaces refuses them all (ETXTBSY, a read-only agent bundle). gVisor lets a running
    # image binary be opened for writing: a write would be copied up into the sandbox's own
    # layer. The agent's interpreter (in the read-only bundle) is never writable.
    assert not [t for t in result["exe"] if t.startswith("/.corral")], result["exe"]
    if runtime == "namespaces":
        assert result["exe"] == [], result["exe"]
    r = attacker.commands.run("cp /bin/true /usr/bin/base64.new && "
                              "mv /usr/bin/base64.new /usr/bin/base64 && "
                              "echo replaced > /.corral/bin/corral-agent ; true")
    assert r.exit_code == 0
    assert attacker.commands.run("echo hi | base64").stdout == ""  # replaced, over there
    assert {p: _sha(p) for p in before} == before
    assert victim.sandbox.commands.run("echo hi | base64").stdout == "aGkK\n"
    victim.assert_unharmed()


def test_no_device_node_reaches_the_host(runtime: str, attacker: SyncNodeSandbox,
                                         victim: Victim) -> None:
    result = run_program(attacker, "host_fs.py", json.dumps({"paths": [], "secrets": []}))
    opened = set(result["devices"])
    if runtime == "gvisor":
        # The Sentry implements these two itself (its own FUSE and its own tun on the
        # sandbox's netstack, which has no interface but loopback): no host device behind.
        opened -= SENTRY_DEVICES
    assert not opened, f"device nodes that opened: {sorted(opened)}"
    kinds = result["dev"]
    assert not [name for name, kind in kinds.items() if kind == "blk"], kinds
    chars = {name for name, kind in kinds.items() if kind == "chr"}
    allowed = ALLOWED_DEVICES | ({"fuse"} if runtime == "gvisor" else set())
    assert chars <= allowed, chars - allowed
    victim.assert_unharmed()


def test_read_only_mounts_stay_read_only(node: SyncNode, attacker: SyncNodeSandbox,
                                        victim: Victim) -> None:
    """The agent bundle, shared by every sandbox of the node, takes no write from inside
    (runsc 20240729 with directfs let one truncate it: test_weakened.py)."""
    check_read_only_mounts_hold(attacker, node.node.agent_bundle)
    assert victim.sandbox.commands.run("echo alive").stdout == "alive\n"
    victim.assert_unharmed()
