"""Hostile checks shared by the suite and by ``test_weakened.py``.

Each ``check_*`` function runs one attack in a sandbox and raises ``AssertionError`` if the
attack got anywhere. The same functions run against deliberately weakened runtimes in
``test_weakened.py``, which asserts that they then fail: none of them can pass vacuously.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.node import SyncNodeSandbox

PROGRAMS = Path(__file__).with_name("programs")
#: Docker's default capability set, as /proc/self/status prints it.
DOCKER_CAPS = "00000000a00405fb"


@dataclass(frozen=True)
class Victim:
    """A neighbour sandbox holding a secret file; see :meth:`assert_unharmed`."""

    PATH = "/work/victim-secret.txt"

    sandbox: SyncNodeSandbox
    secret: str
    host_dir: Path  # its directory on the host, which an attacker may try to reach

    def assert_unharmed(self) -> None:
        assert self.sandbox.files.read_text(self.PATH) == self.secret
        r = self.sandbox.commands.run(["cat", self.PATH], timeout=60)
        assert r.exit_code == 0 and r.stdout == self.secret, (r.stdout, r.stderr)


def run_python(sb: SyncNodeSandbox, source: str, *args: str, timeout: float = 120,
               user: str | None = None) -> Any:
    """Run ``source`` with the image's python3; it prints one JSON value as its last line."""
    r = sb.commands.run(["python3", "-c", source, *args], timeout=timeout, user=user)
    assert r.exit_code == 0, f"the hostile program itself broke: {r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_program(sb: SyncNodeSandbox, name: str, *args: str, timeout: float = 120) -> Any:
    """Run ``programs/<name>`` the same way."""
    return run_python(sb, (PROGRAMS / name).read_text(), *args, timeout=timeout)


# -- privilege ----------------------------------------------------------------------------

#: What programs/privilege.py tries, and what each runtime must answer.
NAMESPACES_REFUSED = (
    "mount", "mount_proc", "mount_cgroup", "umount_proc", "pivot_root", "ptrace_agent",
    "process_vm_readv_agent", "init_module", "finit_module", "delete_module",
    "bpf_prog_load", "bpf_map_create", "perf_event_open", "keyctl", "add_key",
    "userfaultfd", "io_uring_setup", "kexec_load", "reboot", "open_by_handle_at",
    "mknod_block", "swapon", "syslog_read", "settimeofday", "iopl", "fsopen",
    "socket_packet", "socket_raw_inet", "socket_vsock", "unshare_user", "unshare_mount",
    "unshare_net", "unshare_cgroup", "setns", "clone_newuser", "socket_alg",
    "socket_netlink_netfilter", "socket_netlink_crypto", "name_to_handle_at", "kcmp_agent",
    "personality_no_aslr",
)  # fmt: skip
#: Under gVisor every syscall is served by the Sentry, never by the host kernel; these are
#: the ones the Sentry must refuse as well. The rest (unshare, io_uring, mknod, a fake
#: syslog, keyctl's session keyrings since 20240729, ...) the Sentry implements for the
#: sandbox alone, which reaches nothing outside.
GVISOR_REFUSED = (
    "mount", "mount_proc", "mount_cgroup", "umount_proc", "pivot_root", "ptrace_agent",
    "process_vm_readv_agent", "init_module", "finit_module", "delete_module",
    "bpf_prog_load", "bpf_map_create", "perf_event_open", "add_key",
    "userfaultfd", "kexec_load", "reboot", "open_by_handle_at", "swapon", "settimeofday",
    "iopl", "fsopen", "socket_packet", "socket_raw_inet", "socket_vsock", "unshare_net",
    "setns", "socket_alg",
)  # fmt: skip


def check_privileged_syscalls(sb: SyncNodeSandbox, runtime: str) -> dict[str, str]:
    """mount, unshare, ptrace of the agent, modules, bpf, perf, keyctl, userfaultfd, raw
    and packet sockets, ...: all refused; Docker's capabilities; no-new-privileges."""
    results: dict[str, str] = run_program(sb, "privilege.py", timeout=60)
    assert results["CapEff"] == DOCKER_CAPS, f"capabilities beyond Docker's: CapEff {results}"
    assert results["no_new_privs"] == "1", "no-new-privileges is off"
    if runtime == "namespaces":
        # Seccomp answers EPERM; nothing is killed, so programs can fall back.
        wrong = {k: results[k] for k in NAMESPACES_REFUSED if results[k] != "EPERM"}
    else:
        wrong = {k: results[k] for k in GVISOR_REFUSED if results[k] == "ok"}
    assert not wrong, f"privileged operations that were not refused: {wrong}"
    if runtime == "namespaces":
        assert results["Seccomp"] == "2", "no seccomp filter"
    return results


INT80 = """
import ctypes, json, mmap, os, signal
pid = os.fork()
if pid == 0:
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(bytes.fromhex("b814000000cd80c3"))  # mov eax, 20 (i386 getpid); int 0x80; ret
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
    os._exit(0 if fn() == os.getpid() else 3)
status = os.waitpid(pid, 0)[1]
if os.WIFSIGNALED(status):
    print(json.dumps(signal.Signals(os.WTERMSIG(status)).name))
else:
    print(json.dumps("ok" if os.WEXITSTATUS(status) == 0 else f"exit {os.WEXITSTATUS(status)}"))
"""


def check_32bit_syscalls_are_killed(sb: SyncNodeSandbox) -> None:
    """namespaces: a 32-bit syscall (``int 0x80``) kills the process with SIGSYS, since the
    i386 ``socketcall`` would let every socket family past the filter."""
    result = run_python(sb, INT80)
    assert result == "SIGSYS", f"a 32-bit syscall was not killed: {result}"


SETUID = """
import json, os, shutil, subprocess
shutil.copy("/usr/bin/python3", "/work/suid-python")
os.chown("/work/suid-python", 0, 0)
os.chmod("/work/suid-python", 0o4755)

def demote():
    os.setgroups([]); os.setgid(1000); os.setuid(1000)

out = subprocess.run(["/work/suid-python", "-c", "import os; print(os.geteuid())"],
                     capture_output=True, text=True, preexec_fn=demote)
print(json.dumps({"euid": out.stdout.strip(), "stderr": out.stderr[-500:]}))
"""


def check_setuid_does_not_elevate(sb: SyncNodeSandbox) -> None:
    """A setuid-root binary run by an unprivileged user stays unprivileged."""
    result = run_python(sb, SETUID)
    assert result["euid"] == "1000", result


# -- /proc and /sys ------------------------------------------------------------------------

#: Files that describe the host (its kernel build, hardware, devices, disks, other
#: tenants' activity). In a sandbox each must be absent, unreadable or empty.
HOST_DESCRIBING = (
    "/proc/kallsyms", "/proc/config.gz", "/proc/cmdline", "/proc/iomem", "/proc/ioports",
    "/proc/interrupts", "/proc/softirqs", "/proc/timer_list", "/proc/keys",
    "/proc/key-users", "/proc/kcore", "/proc/sched_debug", "/proc/slabinfo",
    "/proc/vmallocinfo", "/proc/zoneinfo", "/proc/buddyinfo", "/proc/pagetypeinfo",
    "/proc/kpageflags", "/proc/kmsg", "/proc/modules", "/proc/partitions", "/proc/diskstats",
    "/proc/devices", "/proc/misc", "/proc/consoles", "/proc/locks", "/proc/swaps",
    "/proc/mtrr", "/proc/dma", "/sys/class/dmi/id/product_uuid",
    "/sys/class/dmi/id/product_serial", "/sys/class/dmi/id/board_serial",
    "/sys/class/dmi/id/sys_vendor", "/sys/firmware/acpi/tables/DSDT",
    "/sys/kernel/notes", "/sys/fs/cgroup/memory/release_agent",
    "/sys/fs/cgroup/unified/cgroup.procs",
)  # fmt: skip
PROC_DIRS = ("/proc/acpi", "/proc/scsi", "/proc/driver", "/proc/asound", "/sys/firmware")

#: gVisor's Sentry makes up its own /proc/cmdline (of a 4.4.0 "gvisor" kernel).
SYNTHETIC = {"/proc/cmdline": "-gvisor "}
ERRORS = {"No such file or directory", "Permission denied", "Operation not permitted"}

READ_ALL = """
import json, os, sys
files, dirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for path in files:
    try:
        with open(path, "rb") as f:
            out[path] = f.read(1 << 20)[:200].decode("latin-1")
    except OSError as exc:
        out[path] = exc.strerror
for path in dirs:
    try:
        out[path] = " ".join(os.listdir(path))
    except OSError as exc:
        out[path] = exc.strerror
print(json.dumps(out))
"""


#: A file of the agent bundle no running process needs (the kernel bridge reads it when it
#: starts); the bundle is a read-only bind of one host directory shared by a node's sandboxes.
BUNDLE_FILE = "py/corral/api/bridge_protocol.py"


def check_read_only_mounts_hold(sb: SyncNodeSandbox, bundle: Path) -> None:
    """Writing through the read-only agent bundle mount changes nothing on the host."""
    host_file = bundle / BUNDLE_FILE
    before = host_file.read_bytes()
    attempt = sb.commands.run(["sh", "-c", f"echo replaced > /.corral/{BUNDLE_FILE}; "
                                           f"echo more >> /.corral/{BUNDLE_FILE}; true"])
    assert attempt.exit_code == 0, attempt  # the shell ran the attack
    after = host_file.read_bytes()
    assert after == before, (f"the sandbox wrote through the read-only bundle mount: "
                             f"{len(before)} bytes became {after[:40]!r}")


def check_host_describing_files_masked(sb: SyncNodeSandbox) -> dict[str, Any]:
    """/proc and /sys files describing the host read as absent, refused or empty."""
    seen = run_python(sb, READ_ALL, json.dumps(HOST_DESCRIBING), json.dumps(PROC_DIRS))
    leaking = {path: text for path, text in seen.items()
               if text and text not in ERRORS and SYNTHETIC.get(path, "\0") not in text}
    assert not leaking, f"host-describing files readable in the sandbox: {leaking}"
    return dict(seen)
