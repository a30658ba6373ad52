"""Category 2, information leaks: the host's kernel and hardware details, the server's
environment, other sandboxes' and tenants' ids, /proc and /sys, DMI.

What stays visible by design (namespaces shares the host kernel: /proc/cpuinfo, meminfo,
loadavg, the kernel version; gVisor passes the CPU model through) is listed in SECURITY.md
"Known limits" and printed here with ``-s``, not asserted on."""

from __future__ import annotations

import json
import socket
import uuid

import pytest

from corral.node import SyncNode, SyncNodeSandbox

from ._checks import Victim, check_host_describing_files_masked, run_python

SCAN = """
import json, os, sys
needles = [n[::-1] for n in json.loads(sys.argv[1])]  # reversed: not in our own argv
places = {"hostname": os.uname().nodename, "env": json.dumps(dict(os.environ))}
for path in ("/etc/hostname", "/etc/hosts", "/proc/self/cgroup", "/proc/self/mountinfo",
             "/proc/mounts", "/proc/self/environ", "/proc/1/environ", "/proc/1/cmdline",
             "/proc/self/cmdline", "/etc/resolv.conf"):
    try:
        places[path] = open(path, "rb").read().decode(errors="replace")
    except OSError as exc:
        places[path] = ""
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for name in ("environ", "cmdline"):
            try:
                places[f"/proc/{pid}/{name}"] = open(f"/proc/{pid}/{name}", "rb").read(
                    ).decode(errors="replace")
            except OSError:
                pass
hits = {n: sorted(p for p, text in places.items() if n in text) for n in needles}
print(json.dumps({"hits": hits, "nodename": os.uname().nodename}))
"""
FACTS = """
import json, os
facts = {"uname": " ".join(os.uname())}
for path in ("/proc/cpuinfo", "/proc/meminfo", "/proc/version", "/proc/loadavg"):
    try:
        facts[path] = open(path).read().splitlines()[:5]
    except OSError as exc:
        facts[path] = exc.strerror
print(json.dumps(facts))
"""


def _reversed(needles: list[str]) -> str:
    return json.dumps([n[::-1] for n in needles])


def test_proc_and_sys_do_not_describe_the_host(attacker: SyncNodeSandbox) -> None:
    """Kernel symbols, boot command line, config.gz, I/O memory, interrupts by device, disks,
    DMI serials, firmware tables, cgroup files: absent, refused or empty."""
    check_host_describing_files_masked(attacker)


def test_the_servers_environment_does_not_leak(node: SyncNode, runtime: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in the node's own environment (an API key, a database URL) never reaches a
    sandbox started afterwards: not its environment, nor any of its processes'."""
    secret = f"server-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("CORRAL_DATABASE_URL", f"postgresql://corral:{secret}@db/corral")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    sb = node.create("python", runtime=runtime, timeout=120)
    try:
        result = run_python(sb, SCAN, _reversed([secret, "AWS_SECRET_ACCESS_KEY"]))
        assert result["hits"] == {secret: [], "AWS_SECRET_ACCESS_KEY": []}, result["hits"]
        assert sb.commands.run("env").stdout.count(secret) == 0
    finally:
        sb.kill()


def test_other_sandboxes_and_the_node_are_invisible(node: SyncNode, runtime: str,
                                                    attacker: SyncNodeSandbox,
                                                    victim: Victim) -> None:
    """The neighbour's id, the node's cgroup key and the host's name appear nowhere the
    attacker can read: hostname, hosts, cgroups, mounts, any process's environment."""
    key = node.node.settings.node_key
    data_dir = str(node.node.settings.data_dir)
    host = socket.gethostname()
    host = host if len(host) >= 6 else victim.sandbox.id  # "vm" is in mount options too
    needles = [victim.sandbox.id, key, host, data_dir]
    result = run_python(attacker, SCAN, _reversed(needles))
    assert result["nodename"] == "sandbox"
    hits = result["hits"]
    assert hits[victim.sandbox.id] == [], hits
    assert hits[key] == [], hits
    assert hits[host] == [], hits
    # namespaces: /proc/self/mountinfo shows the host path of the attacker's *own* root
    # (SECURITY.md, "Known limits"); nothing else names the data dir.
    known = {"/proc/self/mountinfo", "/proc/mounts"} if runtime == "namespaces" else set()
    assert set(hits[data_dir]) <= known, hits


def test_report_what_the_host_kernel_shows(runtime: str, attacker: SyncNodeSandbox) -> None:
    """Reported only (run with -s): facts a sandbox can still read; see SECURITY.md."""
    facts = run_python(attacker, FACTS)
    print(f"\n[{runtime}] host facts visible in a sandbox: {json.dumps(facts)[:1500]}")
    assert facts["uname"].split()[1] == "sandbox"
