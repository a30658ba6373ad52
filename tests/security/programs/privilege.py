"""Hostile program: privileged syscalls through ctypes; prints {name: errno name or "ok"}.

Runs as root inside a sandbox on the image's python3. Every attempt is one that a
container escape or a kernel exploit starts with. Nothing here needs a compiler.
"""

import ctypes
import errno
import json
import os
import socket

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {  # x86_64
    "ptrace": 101, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "unshare": 272, "setns": 308, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "bpf": 321, "perf_event_open": 298, "keyctl": 250,
    "add_key": 248, "userfaultfd": 323, "io_uring_setup": 425, "kexec_load": 246,
    "reboot": 169, "open_by_handle_at": 304, "process_vm_readv": 310, "mknod": 133,
    "swapon": 167, "syslog": 103, "acct": 163, "settimeofday": 164, "iopl": 172,
    "fsopen": 430, "clone": 56, "name_to_handle_at": 303, "kcmp": 312, "personality": 135,
}
results = {}


def call(name, *args):
    """The syscall's errno name, or "ok" (its result then closed if it is an fd)."""
    ctypes.set_errno(0)
    ret = libc.syscall(NR[name], *args)
    if ret < 0:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return "ok"


buf = ctypes.create_string_buffer(256)
NET_NS = os.open("/proc/self/ns/net", os.O_RDONLY)  # now: an umount below may take /proc
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\t" in line)
results["CapEff"] = status.get("CapEff", "").strip()
results["CapBnd"] = status.get("CapBnd", "").strip()
results["NoNewPrivs"] = status.get("NoNewPrivs", "?").strip()
results["Seccomp"] = status.get("Seccomp", "?").strip()
results["no_new_privs"] = str(libc.prctl(39, 0, 0, 0, 0))  # PR_GET_NO_NEW_PRIVS
results["mount"] = call("mount", b"none", b"/mnt", b"tmpfs", 0, None)
results["mount_proc"] = call("mount", b"proc", b"/mnt", b"proc", 0, None)
results["mount_cgroup"] = call("mount", b"cgroup", b"/mnt", b"cgroup", 0, b"memory")
results["umount_proc"] = call("umount2", b"/proc", 2)
results["pivot_root"] = call("pivot_root", b"/tmp", b"/tmp")
results["ptrace_agent"] = call("ptrace", 16, 1, 0, 0)  # PTRACE_ATTACH to pid 1
if results["ptrace_agent"] == "ok":  # let the agent go again, or it stays stopped
    os.waitpid(1, 0x40000000)  # __WALL
    call("ptrace", 17, 1, 0, 0)  # PTRACE_DETACH
iov = (ctypes.c_char * 64)()
local = (ctypes.c_void_p * 2)(ctypes.addressof(iov), 64)
results["process_vm_readv_agent"] = call("process_vm_readv", 1, local, 1, local, 1, 0)
results["init_module"] = call("init_module", buf, 256, b"")
results["finit_module"] = call("finit_module", 0, b"", 0)
results["delete_module"] = call("delete_module", b"ext4", 0)
bpf_attr = ctypes.create_string_buffer(128)
ctypes.memmove(bpf_attr, (1).to_bytes(4, "little"), 4)  # BPF_PROG_TYPE_SOCKET_FILTER
results["bpf_prog_load"] = call("bpf", 5, bpf_attr, 128)
results["bpf_map_create"] = call("bpf", 0, bpf_attr, 128)
perf_attr = ctypes.create_string_buffer(128)
ctypes.memmove(perf_attr, (0).to_bytes(4, "little") + (128).to_bytes(4, "little"), 8)
results["perf_event_open"] = call("perf_event_open", perf_attr, 0, -1, -1, 0)
results["keyctl"] = call("keyctl", 0, -3, 0)  # KEYCTL_GET_KEYRING_ID(session)
results["add_key"] = call("add_key", b"user", b"corral", b"x", 1, -4)
results["userfaultfd"] = call("userfaultfd", 0)
params = ctypes.create_string_buffer(120)
results["io_uring_setup"] = call("io_uring_setup", 4, params)
results["kexec_load"] = call("kexec_load", 0, 0, 0, 0)
results["reboot"] = call("reboot", 0xFEE1DEAD, 0x28121969, 0x4321FEDC, 0)  # POWER_OFF
handle = ctypes.create_string_buffer(8 + 8)
ctypes.memmove(handle, (8).to_bytes(4, "little") + (1).to_bytes(4, "little"), 8)
results["open_by_handle_at"] = call("open_by_handle_at", -100, handle, 0)
results["mknod_block"] = call("mknod", b"/tmp/sda", 0o60600, (8 << 8) | 0)
results["swapon"] = call("swapon", b"/tmp/swap", 0)
results["syslog_read"] = call("syslog", 3, buf, 256)  # SYSLOG_ACTION_READ_ALL
results["settimeofday"] = call("settimeofday", buf, 0)
results["iopl"] = call("iopl", 3)
results["fsopen"] = call("fsopen", b"tmpfs", 0)
mount_id = ctypes.c_int()
results["name_to_handle_at"] = call("name_to_handle_at", -100, b"/", handle,
                                    ctypes.byref(mount_id), 0)
results["kcmp_agent"] = call("kcmp", os.getpid(), 1, 0, 0, 0)  # KCMP_FILE
results["personality_no_aslr"] = call("personality", 0x0040000)  # ADDR_NO_RANDOMIZE
if results["personality_no_aslr"] == "ok":
    call("personality", 0)
for name, args in {"packet": (socket.AF_PACKET, socket.SOCK_RAW, 0),
                   "raw_inet": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                   "vsock": (40, socket.SOCK_STREAM, 0),
                   "alg": (38, socket.SOCK_SEQPACKET, 0),  # AF_ALG: kernel crypto API
                   "netlink_netfilter": (socket.AF_NETLINK, socket.SOCK_RAW, 12),
                   "netlink_crypto": (socket.AF_NETLINK, socket.SOCK_RAW, 21)}.items():
    try:
        socket.socket(*args).close()
        results[f"socket_{name}"] = "ok"
    except OSError as exc:
        results[f"socket_{name}"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))


def in_child(name, *args):
    """Namespace calls run in a child: one that succeeds must not change this process."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, call(name, *args).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    answer = os.read(read, 64).decode()
    os.close(read)
    return "ok" if answer.startswith("ok") else answer  # a clone's child answers too


results["unshare_user"] = in_child("unshare", 0x10000000)
results["unshare_mount"] = in_child("unshare", 0x00020000)
results["unshare_net"] = in_child("unshare", 0x40000000)
results["unshare_cgroup"] = in_child("unshare", 0x02000000)
results["setns"] = in_child("setns", NET_NS, 0)
os.close(NET_NS)
results["clone_newuser"] = in_child("clone", 0x10000000 | 17, 0, 0, 0, 0)  # | SIGCHLD
print(json.dumps(results))
