"""Tests for the bubblewrap seccomp filter (corral.runtime.namespaces._seccomp).

Two layers: a tiny classic-BPF interpreter runs the exported program against synthetic
``seccomp_data`` for every architecture token (x86_64 and x32 filtered; i386 and foreign
ones killed), and a real bwrap run checks that ordinary work still succeeds and attacks
fail inside the sandbox - and succeed without the filter, which proves the test can fail.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import platform
import random
import shutil
import struct
import subprocess
import textwrap

import pytest

from corral.runtime.namespaces import _seccomp

try:
    import pyseccomp as sc
except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so.2 missing
    pytest.skip(f"pyseccomp unusable: {exc}", allow_module_level=True)

ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000
EPERM, ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
X86_64, X86, X32 = sc.Arch.X86_64, sc.Arch.X86, sc.Arch.X32
x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 host only")


def run_bpf(prog: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Interpret a classic-BPF seccomp program; return the SECCOMP_RET_* value."""
    args64 = [a & (2**64 - 1) for a in (*args, 0, 0, 0, 0, 0, 0)[:6]]
    data = struct.pack("<iIQ6Q", nr, arch, 0x1000, *args64)
    insns = [struct.unpack_from("<HBBI", prog, off) for off in range(0, len(prog), 8)]
    acc = x = pc = 0
    mem = [0] * 16
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            acc = (struct.unpack_from("<I", data, k)[0] if mode == 0x20
                   else mem[k] if mode == 0x60 else k)  # fmt: skip
        elif cls == 0x01:  # LDX
            x = mem[k] if code & 0xE0 == 0x60 else k
        elif cls == 0x02:  # ST
            mem[k] = acc
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            ops = {0x00: int.__add__, 0x10: int.__sub__, 0x40: int.__or__, 0x50: int.__and__,
                   0xA0: int.__xor__, 0x60: int.__lshift__, 0x70: int.__rshift__}  # fmt: skip
            acc = ops[op](acc, src) & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            cond = {0x10: acc == src, 0x20: acc > src, 0x30: acc >= src, 0x40: bool(acc & src)}
            pc += jt if cond[op] else jf
        elif cls == 0x06:  # RET
            return int(k)
        elif cls == 0x07:  # MISC: TAX / TXA
            if code & 0xF8 == 0x80:
                acc = x
            else:
                x = acc
        else:  # pragma: no cover
            raise AssertionError(f"unhandled BPF opcode {code:#x}")


def nr_of(arch: int, name: str) -> int:
    return int(sc.resolve_syscall(ctypes.c_uint32(arch), name))


@pytest.fixture(scope="module")
def bpf() -> bytes:
    return _seccomp.build_filter_bpf()


def test_bpf_shape_and_stability(bpf: bytes) -> None:
    assert isinstance(bpf, bytes) and bpf
    assert len(bpf) % 8 == 0
    assert len(bpf) // 8 <= 4096  # BPF_MAXINSNS
    assert _seccomp.build_filter_bpf() is bpf  # cached
    assert _seccomp._compile() == bpf  # deterministic


DANGEROUS = (
    "mount", "umount2", "unshare", "setns", "chroot", "pivot_root", "ptrace",
    "process_vm_readv", "bpf", "perf_event_open", "keyctl", "add_key", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "init_module", "finit_module", "kexec_load",
    "open_by_handle_at", "name_to_handle_at", "kcmp", "pidfd_getfd", "fsopen", "move_mount",
    "modify_ldt", "syslog", "reboot", "swapon", "iopl", "fanotify_init", "quotactl",
)  # fmt: skip


def test_profile_contents() -> None:
    allowed = _seccomp.ALLOWED_SYSCALLS
    conditional = {name for name, _ in _seccomp.ARGUMENT_RULES}
    assert len(set(allowed)) == len(allowed)
    assert not set(allowed) & set(_seccomp.REFUSED_SYSCALLS)
    assert not (set(allowed) | conditional) & set(_seccomp.ERRNO_RULES)
    for name in DANGEROUS:
        assert name in _seccomp.REFUSED_SYSCALLS and name not in allowed, name
        assert name not in conditional, name
    for name in ("read", "openat", "execve", "statx", "epoll_pwait", "eventfd2", "futex",
                 "rseq", "connect", "mbind", "set_mempolicy", "landlock_create_ruleset"):
        assert name in allowed, name
    assert conditional == {"clone", "personality", "socket", "socketpair", "ioctl"}
    assert not conditional & set(allowed)  # a bare allow would override the conditions
    assert _seccomp.ERRNO_RULES == {"clone3": errno.ENOSYS}
    for name in _seccomp._profile_names():  # a typo would be skipped silently
        assert nr_of(sc.Arch.NATIVE, name) != -1, name


@pytest.mark.parametrize("values", [(0x5412, 0x541C), (0,), (0xFFFFFFFF,), (1, 2, 3, 0x80000000)])
def test_arg_not_in_covers_exactly_the_complement(values: tuple[int, ...]) -> None:
    patterns = _seccomp.ArgNotIn(1, values).patterns()
    assert len(patterns) <= 32 * len(values)
    rng = random.Random(7)
    probes = {rng.getrandbits(32) for _ in range(4000)} | set(values)
    probes |= {v ^ (1 << i) for v in values for i in range(32)}
    for probe in probes:
        hits = sum(probe & mask == value for mask, value in patterns)
        assert hits == (0 if probe in values else 1), hex(probe)  # disjoint, complete


def test_filter_fd_is_sealed_memfd_at_offset_zero(bpf: bytes) -> None:
    fd = _seccomp.filter_fd()
    try:
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.read(fd, len(bpf) + 100) == bpf
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
    finally:
        os.close(fd)
    fd2 = _seccomp.filter_fd()  # each call: a fresh fd, again at offset 0
    try:
        assert os.read(fd2, len(bpf) + 100) == bpf
    finally:
        os.close(fd2)


def _every_known_syscall(arch: int) -> dict[int, str]:
    names = {}
    for nr in range(0, 600):
        number = nr | (0x40000000 if arch == X32 else 0)
        try:
            names[number] = sc.resolve_syscall(ctypes.c_uint32(arch), number).decode()
        except ValueError:
            pass
    return names


@x86_64_only
@pytest.mark.parametrize("arch", [X86_64, X32], ids=["x86_64", "x32"])
def test_policy_per_arch(bpf: bytes, arch: int) -> None:
    audit_arch = X86_64  # x32 syscalls report AUDIT_ARCH_X86_64

    def act(name: str, *args: int) -> int:
        nr = nr_of(arch, name)
        assert nr >= 0, name
        return run_bpf(bpf, audit_arch, nr, args)

    # Default deny: every syscall libseccomp knows is allowed only if the profile says so.
    conditional = {name for name, _ in _seccomp.ARGUMENT_RULES}
    top = max(nr_of(X86_64, name) for name in _seccomp._profile_names())
    for nr, name in _every_known_syscall(arch).items():
        got = run_bpf(bpf, audit_arch, nr)
        if name in _seccomp.ALLOWED_SYSCALLS:
            assert got == ALLOW, name
        elif name in _seccomp.ERRNO_RULES:
            assert got == 0x00050000 | _seccomp.ERRNO_RULES[name], name
        elif name not in conditional:
            newer = arch == X86_64 and nr > top  # newer than the profile
            assert got == (ENOSYS if newer else EPERM), (nr, name)
    for name in _seccomp.REFUSED_SYSCALLS:
        if nr_of(arch, name) >= 0:  # e.g. vm86 exists only on i386
            assert act(name) == EPERM, name
    assert act("clone3") == ENOSYS
    for flag in _seccomp.CLONE_NAMESPACE_FLAGS.values():
        assert act("clone", flag | 17) == EPERM
    assert act("clone", 0x01200011) == ALLOW  # glibc fork()
    assert act("clone", 0x003D0F00) == ALLOW  # glibc pthread_create()
    for family in (1, 2, 10):  # AF_UNIX, AF_INET, AF_INET6
        assert act("socket", family, 1, 0) == ALLOW and act("socket", family, 3, 255) == ALLOW
    for family in (0, 3, 15, 17, 38, 40, 44, 45, 255, 2**32 - 1):  # ... AF_ALG, AF_VSOCK, AF_XDP
        assert act("socket", family, 3, 0) == EPERM, family
    for proto in (0, 4, 9, 15):  # route, sock_diag, audit, uevent
        assert act("socket", 16, 3, proto) == ALLOW
    for proto in (6, 12, 16, 21):  # xfrm, netfilter, generic, crypto
        assert act("socket", 16, 3, proto) == EPERM
    assert act("socketpair", 1, 1, 0) == ALLOW and act("socketpair", 38, 5, 0) == EPERM
    assert act("ioctl", 0, 0x5412) == EPERM and act("ioctl", 0, 0x541C) == EPERM
    assert act("ioctl", 0, 0x5401) == ALLOW and act("ioctl", 0, 0x80045430) == ALLOW
    for name in ("read", "write", "openat", "execve", "mbind", "set_mempolicy", "chdir"):
        assert act(name) == ALLOW, name
    # 64-bit registers: junk in the upper half neither passes a refusal nor refuses a call
    assert act("socket", (1 << 32) | 17, 3, 0) == EPERM
    assert act("socket", (1 << 32) | 2, 1, 0) == ALLOW
    assert act("ioctl", 0, (7 << 32) | 0x5412) == EPERM
    assert act("ioctl", 0, (7 << 32) | 0x5401) == ALLOW
    assert act("clone", (1 << 32) | 0x10000011) == EPERM
    assert act("personality", (1 << 32) | 0x0040000) == EPERM


@x86_64_only
def test_personality_exact_allowlist(bpf: bytes) -> None:
    nr = nr_of(X86_64, "personality")
    rng = random.Random(1234)
    values = {0, 8, 0x20000, 0x20008, 0xFFFFFFFF, 0xFFFFFFF7, 0x0040000, 0x0400000, 0xC, 9, 7}
    values |= {1 << i for i in range(32)} | {(1 << i) | 8 for i in range(32)}
    values |= {0xFFFFFFFF ^ (1 << i) for i in range(32)}
    values |= {rng.getrandbits(32) for _ in range(3000)}
    for value in values:
        expected = ALLOW if value in _seccomp.ALLOWED_PERSONALITIES else EPERM
        assert run_bpf(bpf, X86_64, nr, (value,)) == expected, hex(value)


@x86_64_only
def test_i386_and_foreign_arches_are_killed(bpf: bytes) -> None:
    for arch in (X86, sc.Arch.AARCH64, sc.Arch.ARM):
        for nr in (0, 3, 20, 102, 359):  # ..., getpid, socketcall, socket
            assert run_bpf(bpf, arch, nr) == KILL_PROCESS
    x32_unshare = nr_of(X32, "unshare")
    assert x32_unshare & 0x40000000
    assert run_bpf(bpf, X86_64, x32_unshare) == EPERM  # x32 entry shares AUDIT_ARCH_X86_64
    assert run_bpf(bpf, X86_64, 0x40000000 | 599) == EPERM  # x32: never ENOSYS, never allowed


SNIPPET = textwrap.dedent(
    r"""
    import ctypes, errno, json, mmap, os, signal, socket, subprocess, sys, threading
    nr = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {}
    def res(r):
        return [int(r), ctypes.get_errno() if r == -1 else 0]
    def call(fn, *args):
        ctypes.set_errno(0)
        return res(fn(*[ctypes.c_ulong(a) if isinstance(a, int) else a for a in args]))
    def sysc(name, *args):
        return call(libc.syscall, nr[name], *args)
    def sock(*args):
        try:
            socket.socket(*args).close()
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    out["seccomp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")]
    # ordinary work
    out["true"] = subprocess.run(["/bin/true"]).returncode
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    box = []
    t = threading.Thread(target=lambda: box.append(1)); t.start(); t.join()
    out["thread"] = box
    out["inet"], out["unix"] = sock(socket.AF_INET), sock(socket.AF_UNIX)
    out["netlink"] = sock(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    out["persona_query"] = call(libc.personality, 0xFFFFFFFF)
    a, b = socket.socketpair(); a.close(); b.close()
    out["ls"] = subprocess.run(["ls", "-la", "/"], capture_output=True).returncode
    def int80():  # i386 getpid through int 0x80, in a child: it may be killed
        pid = os.fork()
        if pid == 0:
            m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            m.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")  # mov eax, 20; int 0x80; ret
            fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
            os._exit(0 if fn() == os.getpid() else 3)
        status = os.waitpid(pid, 0)[1]
        if os.WIFSIGNALED(status):
            return signal.Signals(os.WTERMSIG(status)).name
        return "ok" if os.WEXITSTATUS(status) == 0 else "exit %d" % os.WEXITSTATUS(status)
    out["int80"] = int80()
    # attacks
    out["packet"] = sock(17, socket.SOCK_RAW)
    out["vsock"] = sock(40, socket.SOCK_STREAM)
    out["alg"] = sock(38, socket.SOCK_SEQPACKET)
    out["nl_crypto"] = sock(socket.AF_NETLINK, socket.SOCK_RAW, 21)
    out["name_to_handle_at"] = sysc("name_to_handle_at", 2**64 - 100, 0, 0, 0, 0)
    out["newer"] = sysc("newer")
    out["packet_hibits"] = sysc("socket", (1 << 32) | 17, 3, 0)
    fd = os.open("/dev/null", os.O_RDWR)
    ch = ctypes.c_char(b"x")
    out["tiocsti"] = call(libc.ioctl, fd, (1 << 32) | 0x5412, ctypes.byref(ch))
    out["persona_norand"] = call(libc.personality, 0x0040000)
    out["mount"] = call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None)
    out["chroot"] = call(libc.chroot, b"/")
    out["setns"] = sysc("setns", 2**64 - 1, 0)
    out["keyctl"] = sysc("keyctl", 0, 0xFFFFFFFD, 0)
    out["bpf"] = sysc("bpf", 0, 0, 0)
    out["io_uring"] = sysc("io_uring_setup", 1, 0)
    out["userfaultfd"] = sysc("userfaultfd", 0)
    out["perf"] = sysc("perf_event_open", 0, 0, 2**64 - 1, 2**64 - 1, 0)
    out["vm_readv"] = sysc("process_vm_readv", os.getpid(), 0, 0, 0, 0, 0)
    out["clone3"] = sysc("clone3", 0, 0)
    r = sysc("clone", 0x10000000 | 17, 0, 0, 0, 0)
    if r[0] == 0:
        os._exit(0)
    if r[0] > 0:
        os.waitpid(r[0], 0)
    out["clone_newuser"] = r
    out["unshare"] = call(libc.unshare, 0x10000000)
    out["ptrace"] = sysc("ptrace", 0, 0, 0, 0)  # last: TRACEME makes later signals stop us
    print(json.dumps(out))
    """
)


def _run_in_bwrap(with_filter: bool) -> dict[str, object]:
    names = ["socket", "setns", "keyctl", "bpf", "io_uring_setup", "userfaultfd",
             "perf_event_open", "process_vm_readv", "clone3", "clone", "ptrace",
             "name_to_handle_at"]  # fmt: skip
    numbers = {n: int(sc.resolve_syscall(sc.Arch.NATIVE, n)) for n in names}
    numbers["newer"] = max(nr_of(sc.Arch.NATIVE, n) for n in _seccomp._profile_names()) + 1
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
            "--dev", "/dev", "--proc", "/proc"]  # fmt: skip
    fds: tuple[int, ...] = ()
    if with_filter:
        fd = _seccomp.filter_fd()
        argv += ["--seccomp", str(fd)]
        fds = (fd,)
    argv += ["/usr/bin/python3", "-c", SNIPPET, json.dumps(numbers)]
    try:
        proc = subprocess.run(argv, pass_fds=fds, capture_output=True, text=True, timeout=120)
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.namespaces
@x86_64_only
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no /usr/bin/python3")
def test_filter_in_real_bwrap_sandbox() -> None:
    probe = subprocess.run(
        ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "/bin/true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"bwrap cannot create namespaces here: {probe.stderr!r}")

    unfiltered = _run_in_bwrap(with_filter=False)
    # Without the filter the escape primitives work: the test below can fail.
    assert unfiltered["seccomp"] == ["0"]
    assert unfiltered["unshare"] == [0, 0], unfiltered
    assert isinstance(unfiltered["clone_newuser"], list) and unfiltered["clone_newuser"][0] > 0
    assert unfiltered["int80"] == "ok" and unfiltered["alg"] != "EPERM", unfiltered

    out = _run_in_bwrap(with_filter=True)
    assert out["seccomp"] == ["2"], out
    # Ordinary work still succeeds (fork/threads exercise clone and the clone3 fallback).
    assert out["true"] == 0 and out["fork"] == 7 and out["thread"] == [1], out
    assert out["inet"] == "ok" and out["unix"] == "ok" and out["netlink"] == "ok", out
    assert out["persona_query"] == [0, 0] and out["ls"] == 0, out
    # Attacks are refused with EPERM (clone3 and syscalls newer than the profile: ENOSYS).
    for key in ("packet", "vsock", "alg", "nl_crypto"):
        assert out[key] == "EPERM", (key, out)
    eperm = [-1, errno.EPERM]
    for key in ("packet_hibits", "tiocsti", "persona_norand", "mount", "chroot", "setns",
                "keyctl", "bpf", "io_uring", "userfaultfd", "perf", "vm_readv",
                "clone_newuser", "unshare", "ptrace", "name_to_handle_at"):  # fmt: skip
        assert out[key] == eperm, (key, out)
    assert out["clone3"] == [-1, errno.ENOSYS] and out["newer"] == [-1, errno.ENOSYS], out
    # 32-bit syscalls (int 0x80) kill the process: socketcall cannot be filtered.
    assert out["int80"] == "SIGSYS", out
