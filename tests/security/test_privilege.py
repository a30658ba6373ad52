"""Category 4, privilege: setuid binaries, capabilities, mount, unshare, ptrace of the
agent, kernel modules, bpf, perf_event_open, keyctl, userfaultfd, io_uring, raw, packet
and AF_ALG sockets, 32-bit syscalls, the cgroup ``release_agent`` escape. Each fails with
the expected error, and the host's mounts and cgroups are unchanged."""

from __future__ import annotations

import pytest

from corral.node import SyncNodeSandbox

from ._checks import (
    Victim,
    check_32bit_syscalls_are_killed,
    check_privileged_syscalls,
    check_setuid_does_not_elevate,
    run_python,
)
from ._host import host_mounts, release_agents
from .conftest import Canary

RELEASE_AGENT = """
import glob, json, os
done = []
targets = glob.glob("/sys/fs/cgroup/*/release_agent") + ["/sys/fs/cgroup/release_agent"]
for path in targets:
    try:
        with open(path, "w") as f:
            f.write("/work/escape.sh")
        done.append(path)
    except OSError:
        pass
for path in glob.glob("/sys/fs/cgroup/*/notify_on_release"):
    try:
        open(path, "w").write("1")
        done.append(path)
    except OSError:
        pass
for path in ("/sys/fs/cgroup/x", "/sys/fs/cgroup/memory/x"):
    try:
        os.mkdir(path)
        done.append(path)
    except OSError:
        pass
print(json.dumps(done))
"""


def test_privileged_syscalls_are_refused(runtime: str, attacker: SyncNodeSandbox, victim: Victim,
                                         canary: Canary) -> None:
    mounts = host_mounts()
    check_privileged_syscalls(attacker, runtime)
    assert host_mounts() == mounts
    canary.assert_intact()
    victim.assert_unharmed()


def test_32bit_syscalls_are_killed(runtime: str, attacker: SyncNodeSandbox, victim: Victim) -> None:
    if runtime != "namespaces":
        pytest.skip("a seccomp matter of the namespaces runtime (gVisor runs 64-bit code only)")
    check_32bit_syscalls_are_killed(attacker)
    victim.assert_unharmed()


def test_setuid_binaries_do_not_elevate(attacker: SyncNodeSandbox) -> None:
    check_setuid_does_not_elevate(attacker)


def test_cgroup_release_agent_escape_fails(attacker: SyncNodeSandbox, victim: Victim) -> None:
    before = release_agents()
    assert before, "this host has no cgroup v1 release_agent: the test would prove nothing"
    assert run_python(attacker, RELEASE_AGENT) == []
    assert release_agents() == before
    victim.assert_unharmed()


def test_nested_sandbox_tools_fail(runtime: str, attacker: SyncNodeSandbox) -> None:
    """The image's own tools, as an attacker would try them first."""
    for argv in (["unshare", "-U", "-r", "true"], ["unshare", "-m", "true"],
                 ["mount", "-t", "tmpfs", "x", "/mnt"], ["chroot", "/", "true"]):
        r = attacker.commands.run(argv)
        if runtime == "gvisor" and argv[0] == "unshare":
            continue  # the Sentry's own namespaces: nothing outside it changes
        if runtime == "gvisor" and argv[0] == "chroot":
            continue  # CAP_SYS_CHROOT inside the Sentry, Docker's default
        assert r.exit_code != 0, (argv, r.stdout)
    assert "/mnt" not in attacker.commands.run("cat /proc/mounts").stdout
