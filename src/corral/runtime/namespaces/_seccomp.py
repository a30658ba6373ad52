"""Seccomp-BPF filter loaded by bubblewrap (``bwrap --seccomp FD``) into every sandbox.

Policy
------
This first version is a *default-allow denylist*: every syscall is allowed except the
ones below, which fail with ``EPERM`` (never a kill, so well-behaved programs see an
ordinary error and can fall back).  Docker's default profile is an allowlist, which is
stricter against unknown/new syscalls; moving to an allowlist is planned, but the
denylist already closes the attack surface that matters most for a namespace sandbox:

* **Namespace / mount escape** - ``mount``, ``umount2``, ``pivot_root``, ``unshare``,
  ``setns``, the new mount API (``fsopen`` ... ``mount_setattr``) and ``clone`` with any
  ``CLONE_NEW*`` flag.  Nested user namespaces would hand the code a fresh full
  capability set and expose namespace-gated kernel code (the main source of userns
  privilege-escalation CVEs).  ``chroot`` is blocked too although the sandbox holds
  CAP_SYS_CHROOT: nothing legitimate needs it and it is a classic escape ingredient.
  ``clone3`` gets ``ENOSYS`` (its flags live in memory, so seccomp cannot inspect them);
  glibc then falls back to ``clone``, exactly as under Docker.
* **Cross-process introspection** - ``ptrace``, ``process_vm_readv/writev``, ``kcmp``,
  ``pidfd_getfd`` (so debuggers such as gdb/strace do not work inside a sandbox).
* **High-risk kernel attack surface** - ``bpf``, ``perf_event_open``, ``userfaultfd``
  (race-widening exploit primitive), ``io_uring_*`` (bypasses seccomp for the I/O it
  performs and has a long CVE record), the keyring (``keyctl``, ``add_key``,
  ``request_key``; keyrings are not namespaced).
* **Host administration** - kexec, kernel modules, ``reboot``, swap, ``acct``, quotas,
  ``syslog``, clock setting, ``iopl``/``ioperm``, ``vhangup``, ``fanotify_init``,
  file handles (``open_by_handle_at`` - the "shocker" container escape),
  ``move_pages``/``migrate_pages`` (``mbind``/``set_mempolicy`` stay allowed for numpy).
* **Obsolete interfaces** - ``uselib``, ``_sysctl``, ``ustat``, ``sysfs``, ``vm86*``, ...
* **Argument filters** - ``personality`` only with 0, ``PER_LINUX32`` (8) or the
  0xffffffff query (as Docker); ``socket`` refuses AF_PACKET, AF_KEY, AF_BLUETOOTH and
  AF_VSOCK (AF_NETLINK stays: glibc and ``ip`` use it and the netns is empty);
  ``ioctl`` refuses TIOCSTI (tty input injection) and TIOCLINUX.  Integer arguments are
  compared on their low 32 bits so junk in the upper half cannot sneak past.

Architectures: the rules are compiled for the native architecture *and* its 32-bit
compat ABIs (x86_64: i386 and x32; aarch64: arm), because libseccomp resolves names per
architecture and a 32-bit ``int 0x80`` entry would otherwise bypass a native-only
filter.  Any other architecture token is refused with KILL_PROCESS (``ACT_BADARCH``).
On i386, ``socket`` via the multiplexed ``socketcall`` cannot be argument-filtered, so
libseccomp refuses ``socketcall(SYS_SOCKET)`` entirely; the direct ``socket`` syscall is
filtered like on x86_64.  Unknown syscall names are skipped (logged at debug level).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import tempfile
from typing import Any

__all__ = [
    "ALLOWED_PERSONALITIES",
    "BLOCKED_IOCTLS",
    "BLOCKED_SOCKET_FAMILIES",
    "BLOCKED_SYSCALLS",
    "CLONE_NAMESPACE_FLAGS",
    "build_filter_bpf",
    "filter_fd",
]

_log = logging.getLogger(__name__)

_NAMESPACE_ESCAPE = (
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr",
)  # fmt: skip
_INTROSPECTION = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd")
_KERNEL_SURFACE = (
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key",
)  # fmt: skip
_HOST_ADMIN = (
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    "vhangup", "fanotify_init", "open_by_handle_at", "name_to_handle_at",
    "lookup_dcookie", "move_pages", "migrate_pages",
)  # fmt: skip
_OBSOLETE = (
    "uselib", "nfsservctl", "ustat", "sysfs", "_sysctl", "vm86", "vm86old", "modify_ldt",
    "create_module", "get_kernel_syms", "query_module",
)  # fmt: skip

#: Syscalls refused unconditionally with EPERM (see the module docstring for why).
BLOCKED_SYSCALLS: tuple[str, ...] = (
    _NAMESPACE_ESCAPE + _INTROSPECTION + _KERNEL_SURFACE + _HOST_ADMIN + _OBSOLETE
)

#: clone() flags that make the call fail with EPERM (any one of them set).
CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
#: socket() domains refused with EPERM.
BLOCKED_SOCKET_FAMILIES: dict[str, int] = {
    "AF_KEY": 15,
    "AF_PACKET": 17,
    "AF_BLUETOOTH": 31,
    "AF_VSOCK": 40,
}
#: ioctl() requests refused with EPERM.
BLOCKED_IOCTLS: dict[str, int] = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}
#: personality() values that are allowed; anything else gets EPERM.
ALLOWED_PERSONALITIES: tuple[int, ...] = (0x0, 0x8, 0xFFFFFFFF)

_U32 = 0xFFFFFFFF


def _personality_deny_patterns() -> list[tuple[int, int]]:
    """(mask, value) pairs whose union is exactly the 32-bit values NOT in ALLOWED_PERSONALITIES.

    libseccomp cannot put two comparisons on one argument and refuses ALLOW rules in an
    allow-by-default filter, so "not 0, 8 or 0xffffffff" is spelled as masked equalities:
    pattern (k, k+1 mod 32) means "bit k set, bit k+1 clear".  Any other value has a set
    bit other than bit 3 (else it is 0 or 8) and a clear bit (else it is 0xffffffff);
    cyclically, the run of ones holding that set bit ends at some bit k followed by a
    clear bit.  If k == 3 the run also holds bit 2, which (2, 4) catches.  Every pattern
    needs a set bit other than 3 and a clear bit, so no allowed value ever matches.
    """
    pairs = [((1 << k) | (1 << ((k + 1) % 32)), 1 << k) for k in range(32) if k != 3]
    pairs.append(((1 << 2) | (1 << 4), 1 << 2))
    return pairs


def _add(flt: Any, sc: Any, action: int, name: str, *args: Any) -> bool:
    """Add one rule; skip (return False) syscalls libseccomp cannot name on this arch."""
    # -1 (__NR_SCMP_ERROR) = unknown name.  Other negative numbers are libseccomp
    # "pseudo syscalls" (e.g. vm86 on x86_64): a no-op natively, real on i386.
    if int(sc.resolve_syscall(sc.Arch.NATIVE, name)) == -1:
        _log.debug("seccomp: libseccomp does not know syscall %r, not filtering it", name)
        return False
    flt.add_rule(action, name, *args)
    return True


def _compile() -> bytes:
    import pyseccomp as sc  # lazy: needs libseccomp.so at import time

    eperm, nosys = sc.ERRNO(errno.EPERM), sc.ERRNO(errno.ENOSYS)
    flt = sc.SyscallFilter(sc.ALLOW)
    compat = {sc.Arch.X86_64: (sc.Arch.X86, sc.Arch.X32), sc.Arch.AARCH64: (sc.Arch.ARM,)}
    for arch in compat.get(int(sc.system_arch()), ()):
        try:
            flt.add_arch(arch)
        except OSError as exc:  # pragma: no cover - libseccomp built without that arch
            _log.debug("seccomp: cannot add arch %#x: %s", arch, exc)
    try:
        flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    except OSError:  # pragma: no cover - pre-4.14 kernel: fall back to killing the thread
        flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL)

    for name in BLOCKED_SYSCALLS:
        _add(flt, sc, eperm, name)
    _add(flt, sc, nosys, "clone3")
    for flag in CLONE_NAMESPACE_FLAGS.values():
        _add(flt, sc, eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for family in BLOCKED_SOCKET_FAMILIES.values():
        _add(flt, sc, eperm, "socket", sc.Arg(0, sc.MASKED_EQ, _U32, family))
    for request in BLOCKED_IOCTLS.values():
        _add(flt, sc, eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, _U32, request))
    _add(flt, sc, eperm, "personality", sc.Arg(0, sc.GT, _U32))
    for mask, value in _personality_deny_patterns():
        _add(flt, sc, eperm, "personality", sc.Arg(0, sc.MASKED_EQ, mask, value))

    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


@functools.cache
def build_filter_bpf() -> bytes:
    """Compile the sandbox seccomp filter to classic BPF (cached after the first call).

    The result is what libseccomp's ``seccomp_export_bpf`` writes: an array of
    8-byte ``struct sock_filter`` in host byte order, as ``bwrap --seccomp`` expects.
    """
    program = _compile()
    if not program or len(program) % 8:
        raise RuntimeError(f"libseccomp produced a malformed BPF program ({len(program)} bytes)")
    return program


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def filter_fd() -> int:
    """Return a fresh readable fd positioned at 0 holding the BPF program, for bwrap --seccomp.

    A sealed memfd where available (the sandbox cannot alter it), else an unlinked temp
    file.  The fd is close-on-exec; hand it to the child with ``pass_fds``.  Caller closes it.
    """
    data = build_filter_bpf()
    try:
        fd = os.memfd_create("corral-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):
        fd, path = tempfile.mkstemp(prefix="corral-seccomp-")
        os.unlink(path)
    try:
        _write_all(fd, data)
        try:
            seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        except (AttributeError, OSError):
            pass  # temp-file fallback (or old kernel): not sealable, still fine
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
