"""Isolation on every runtime: each test fails if the wall it checks were missing.

What the sandbox must not see or reach: the host's files, the host's processes, neighbour
sandboxes' files and processes, any network beyond its own loopback, and (namespaces)
host root or privileged kernel operations.

Notes from running these here: gVisor's 2022 runsc (the fallback build) answers coreutils
9.1's ``statx`` with EINVAL, so ``ls``/``stat`` fail there; listings here go through Python.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.node import SyncNode, SyncNodeSandbox

CGROUP_ROOT = Path("/sys/fs/cgroup")

# Prints the pids of the sandbox's /proc and each one's cmdline (any whitespace as one space).
PROC_SCAN = """
import os
for name in sorted(os.listdir('/proc')):
    if name.isdigit():
        try:
            with open(f'/proc/{name}/cmdline', 'rb') as f:
                cmd = ' '.join(f.read().decode(errors='replace').split('\\0')).strip()
        except OSError:
            cmd = '?'
        print(name, ' '.join(cmd.split()))
"""


def proc_table(sb: SyncNodeSandbox) -> dict[int, str]:
    """pid -> cmdline of every process visible in the sandbox's /proc."""
    r = sb.commands.run(["python3", "-c", PROC_SCAN], timeout=60)
    assert r.exit_code == 0, r.stderr
    table = {}
    for line in r.stdout.splitlines():
        pid, _, cmd = line.partition(" ")
        table[int(pid)] = cmd
    return table


def unified_cgroup(node: SyncNode, sb: SyncNodeSandbox) -> Path:
    return CGROUP_ROOT / "unified" / "corral" / node.node.settings.node_key / sb.id


def host_pids_of(node: SyncNode, sb: SyncNodeSandbox) -> list[int]:
    """Host pids of every process in the sandbox's cgroup."""
    procs = (unified_cgroup(node, sb) / "cgroup.procs").read_text().split()
    assert procs, "the sandbox's cgroup holds no process"
    return [int(p) for p in procs]


def host_processes_with_cmdline(cmdline: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == cmdline:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def host_markers() -> Iterator[tuple[list[Path], str]]:
    """Two files with random content on the host: one in /tmp, one in /root."""
    secret = f"corral-secret-{uuid.uuid4().hex}"
    paths = [Path(f"/tmp/corral-host-marker-{uuid.uuid4().hex}"),
             Path(f"/root/corral-host-marker-{uuid.uuid4().hex}")]
    for path in paths:
        path.write_text(secret + "\n")
    try:
        yield paths, secret
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


# -- the host's filesystem ----------------------------------------------------------------


def test_host_files_are_invisible(sandbox: SyncNodeSandbox,
                                  host_markers: tuple[list[Path], str]) -> None:
    paths, secret = host_markers
    for path in paths:
        r = sandbox.commands.run(["cat", str(path)])
        assert r.exit_code != 0, f"the host's {path} is readable in the sandbox"
        assert secret not in r.stdout
        assert "No such file" in r.stderr
    found = sandbox.commands.run(
        f"grep -rl {secret} /tmp /root /work 2>/dev/null; true", timeout=60).stdout
    assert secret not in found and found.strip() == ""


def test_etc_is_the_images_not_the_hosts(node: SyncNode, sandbox: SyncNodeSandbox) -> None:
    passwd = sandbox.commands.run(["cat", "/etc/passwd"]).stdout
    assert "user:x:1000:1000:sandbox user:/home/user:/bin/bash" in passwd.splitlines()
    host_passwd = Path("/etc/passwd").read_text()
    assert passwd != host_passwd
    image_shadow = (node.node.images.get("python").rootfs / "etc" / "shadow").read_text()
    host_only = [line for line in Path("/etc/shadow").read_text().splitlines()
                 if line and line not in image_shadow.splitlines()]
    assert host_only, "the host's /etc/shadow equals the image's: this test proves nothing"
    r = sandbox.commands.run(["cat", "/etc/shadow"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == image_shadow
    assert not [line for line in host_only if line in r.stdout]


# -- the host's processes -----------------------------------------------------------------


def test_host_processes_are_invisible(sandbox: SyncNodeSandbox) -> None:
    table = proc_table(sandbox)
    # The agent, the python doing the scan and perhaps a wrapper: nothing of the host's.
    assert 0 < len(table) < 10, table
    assert not any("pytest" in cmd or "systemd" in cmd for cmd in table.values()), table
    me = os.getpid()
    my_cmdline = Path(f"/proc/{me}/cmdline").read_bytes()
    handle = sandbox.commands.start(
        ["python3", "-c", f"import sys; sys.stdout.buffer.write(open('/proc/{me}/cmdline', "
                          "'rb').read())"])
    out = b"".join(chunk.data for chunk in handle if chunk.stream == "stdout")
    assert handle.wait().exit_code != 0 or out != my_cmdline
    assert b"pytest" not in out


# -- neighbour sandboxes ----------------------------------------------------------------------


def test_other_sandboxes_files_are_invisible(sandbox: SyncNodeSandbox,
                                             neighbour: SyncNodeSandbox) -> None:
    secret = uuid.uuid4().hex
    for path in ("/work/mine.txt", "/tmp/mine.txt"):
        sandbox.files.write(path, secret)
        assert sandbox.files.read_text(path) == secret
        assert not neighbour.files.exists(path)
        r = neighbour.commands.run(["cat", path])
        assert r.exit_code != 0 and secret not in r.stdout
    r = neighbour.commands.run(f"grep -rl {secret} /work /tmp /root 2>/dev/null; true")
    assert r.stdout.strip() == ""


def test_other_sandboxes_processes_are_invisible(sandbox: SyncNodeSandbox,
                                                 neighbour: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start(["sleep", "123"])
    try:
        assert "sleep 123" in proc_table(sandbox).values()  # it does run, over there
        theirs = proc_table(neighbour)
        assert not any("sleep 123" in cmd for cmd in theirs.values()), theirs
        assert handle.pid not in theirs or "sleep" not in theirs[handle.pid]
    finally:
        handle.kill()
        handle.wait()


# -- network ------------------------------------------------------------------------------


def test_only_loopback_and_no_route(sandbox: SyncNodeSandbox) -> None:
    dev = sandbox.commands.run(["cat", "/proc/net/dev"]).stdout.splitlines()
    interfaces = sorted(line.split(":")[0].strip() for line in dev[2:] if ":" in line)
    assert interfaces == ["lo"], dev
    route = sandbox.commands.run(["cat", "/proc/net/route"])
    assert route.exit_code == 0
    lines = [line for line in route.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Iface"), lines


def test_hosts_loopback_is_not_the_sandboxes(sandbox: SyncNodeSandbox) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        script = (
            "import socket, sys\n"
            "s = socket.socket(); s.settimeout(5)\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {port}))\n"
            "except OSError as e:\n"
            "    print(type(e).__name__); sys.exit(3)\n"
            "print('connected')\n")
        r = sandbox.commands.run(["python3", "-c", script], timeout=30)
        assert r.exit_code == 3 and "connected" not in r.stdout, (r.stdout, r.stderr)
        assert r.stdout.strip() == "ConnectionRefusedError"
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_names_do_not_resolve(sandbox: SyncNodeSandbox) -> None:
    r = sandbox.commands.run(
        ["python3", "-c", "import socket; socket.getaddrinfo('example.com', 80)"], timeout=30)
    assert r.exit_code != 0
    assert "gaierror" in r.stderr


# -- privilege ----------------------------------------------------------------------------


def test_sandbox_root_is_not_host_root(node: SyncNode, runtime: str,
                                       sandbox: SyncNodeSandbox) -> None:
    marker = ["sleep", "4242"]
    handle = sandbox.commands.start(marker)
    try:
        deadline = time.monotonic() + 10
        while handle.pid not in [p.pid for p in sandbox.commands.list()]:
            assert time.monotonic() < deadline, "the sleep never showed up"
            time.sleep(0.05)
        assert sandbox.commands.run("id -u").stdout == "0\n"  # root inside...
        pids = host_pids_of(node, sandbox)
        if runtime == "namespaces":
            for pid in pids:  # ...an unprivileged host uid outside
                status = Path(f"/proc/{pid}/status").read_text()
                uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
                assert all(int(u) != 0 for u in uids.split()[1:]), (pid, uids)
            assert host_processes_with_cmdline(b"sleep\x004242\x00")
        else:
            # gVisor: every host process of the sandbox is runsc (Sentry, gofer, stubs); the
            # user's code runs inside the Sentry and is no host process at all.
            gvisor = node.node.runtime("gvisor")
            runsc = os.path.realpath(gvisor.chosen()[0].path)  # type: ignore[attr-defined]
            for pid in pids:
                assert os.readlink(f"/proc/{pid}/exe") == runsc, pid
            assert host_processes_with_cmdline(b"sleep\x004242\x00") == []
    finally:
        handle.kill()
        handle.wait()


def test_privileged_operations_fail(runtime: str, sandbox: SyncNodeSandbox) -> None:
    packet = sandbox.commands.run(
        ["python3", "-c",
         "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))"])
    assert packet.exit_code != 0 and "PermissionError" in packet.stderr, packet.stderr
    mount = sandbox.commands.run(
        ["python3", "-c",
         "import ctypes, os, sys\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "r = libc.mount(b'x', b'/mnt', b'tmpfs', 0, None)\n"
         "print(r, os.strerror(ctypes.get_errno()))"])
    assert mount.stdout == "-1 Operation not permitted\n", (mount.stdout, mount.stderr)
    if runtime == "namespaces":
        # gVisor's user namespaces live inside its own kernel; here they would be the host's.
        r = sandbox.commands.run(["unshare", "-U", "true"])
        assert r.exit_code != 0 and "Operation not permitted" in r.stderr, r.stderr
        r = sandbox.commands.run(["mount", "-t", "tmpfs", "x", "/mnt"])
        assert r.exit_code != 0, r.stdout
        assert sandbox.commands.run("grep -c ' /mnt ' /proc/mounts || true").stdout == "0\n"
