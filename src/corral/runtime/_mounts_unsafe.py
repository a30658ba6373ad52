"""Host mounts and user namespaces for sandboxes. Privileged: needs root on the host.

Each sandbox gets a copy-on-write root: the image directory (never written) as the lower
layer of an overlay whose upper layer lives on a size-limited tmpfs — the sandbox's
writable disk. For the namespaces runtime the lower layer is first bound through an
*idmapped mount*, so the image's root-owned files appear owned by the sandbox's own
unprivileged host uid range, and sandbox root is never host root.

Python 3.11 exposes none of ``mount``, ``open_tree``, ``mount_setattr`` or ``move_mount``;
they are called through libc here, and only here. Reading what is mounted is
:mod:`._mounts`.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import time
from pathlib import Path

from ._mounts import mounts_under

_libc = ctypes.CDLL(None, use_errno=True)

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_SET_FD = 5
_FSCONFIG_CMD_CREATE = 6
_OPEN_TREE_CLONE = 1
_O_CLOEXEC = 0o2000000
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MNT_DETACH = 2
_MS_NOSUID = 2
_MS_NODEV = 4

UID_RANGE = 65536


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, action: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{action}: {os.strerror(err)}")
    return result


def mount_tmpfs(target: Path, size_bytes: int, inodes: int, mode: int = 0o700) -> None:
    opts = f"size={size_bytes},nr_inodes={inodes},mode={mode:o}"
    _check(_libc.mount(b"tmpfs", bytes(target), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                       opts.encode()), f"mounting tmpfs on {target}")


def mount_overlay(lowers: list[Path | int], upper: Path, work: Path, target: Path) -> None:
    """An overlay of ``lowers`` (top first, read-only) under the writable ``upper``.

    Built with the new mount API, one ``lowerdir+`` per layer (Linux 6.8): no layer count or
    path length is limited by ``mount(2)``'s one page of options, and no path is parsed for
    ``:`` or ``,``. nosuid and nodev: the merged tree is also reachable from the host, where
    a setuid file the sandbox wrote must never run with privilege.
    """
    fs = _check(_libc.syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC), "opening overlayfs")
    try:
        for layer in lowers:
            if isinstance(layer, int):  # a detached mount (idmapped_tree): no path at all
                _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_FD, b"lowerdir+", None,
                                     layer), f"overlay layer (descriptor) for {target}")
            else:
                _fsconfig(fs, b"lowerdir+", bytes(layer), target)
        _fsconfig(fs, b"upperdir", bytes(upper), target)
        _fsconfig(fs, b"workdir", bytes(work), target)
        _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0),
               f"creating the overlay for {target}")
        mnt = _check(_libc.syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC,
                                   _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV),
                     f"mounting the overlay for {target}")
        try:
            _check(_libc.syscall(_SYS_MOVE_MOUNT, mnt, b"", _AT_FDCWD, bytes(target),
                                 _MOVE_MOUNT_F_EMPTY_PATH), f"attaching {target}")
        finally:
            os.close(mnt)
    finally:
        os.close(fs)


def _fsconfig(fs: int, key: bytes, value: bytes, target: Path) -> None:
    _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key, value, 0),
           f"overlay option {key.decode()}={value.decode(errors='replace')} for {target}")


def idmapped_tree(source: Path, userns_fd: int) -> int:
    """A detached, read-only, nosuid, nodev clone of ``source`` whose ownership is shifted
    by ``userns_fd``'s id map: a descriptor the caller closes. It is in no mount table, so
    a sandbox's layers add nothing to the host's (which bwrap reads many times a start)."""
    fd = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, bytes(source),
                              _OPEN_TREE_CLONE | _O_CLOEXEC), f"cloning {source}")
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID
                          | _MOUNT_ATTR_NODEV, 0, 0, userns_fd)
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                             ctypes.sizeof(attr)), f"idmapping {source}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def bind_idmapped(source: Path, target: Path, userns_fd: int, *,
                  read_only: bool = True) -> None:
    """Bind ``source`` at ``target``, ownership shifted by ``userns_fd``'s id map.

    Always nosuid and nodev. Read-only unless told otherwise: the image is shared by every
    sandbox, and through a writable bind anyone reaching ``target`` could change it for
    all of them. A volume's tree is bound writable (unless its mount is read-only): files
    the sandbox's uid ``n`` writes through it are uid ``n`` on disk, as the image's are.
    """
    fd = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, bytes(source),
                              _OPEN_TREE_CLONE | _O_CLOEXEC), f"cloning {source}")
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | (_MOUNT_ATTR_RDONLY if read_only else 0)
                          | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, 0, 0, userns_fd)
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                             ctypes.sizeof(attr)), f"idmapping {source}")
        _check(_libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, bytes(target),
                             _MOVE_MOUNT_F_EMPTY_PATH), f"attaching {target}")
    finally:
        os.close(fd)


def unmount_all(directory: Path) -> None:
    """Detach every mount at or below ``directory``."""
    for point in mounts_under(directory):
        result = _libc.umount2(bytes(point), _MNT_DETACH)
        if result < 0 and ctypes.get_errno() not in (22, 2):  # EINVAL: not a mount; ENOENT
            err = ctypes.get_errno()
            raise OSError(err, f"unmounting {point}: {os.strerror(err)}")


class UserNamespace:
    """A user namespace mapping ``0..65535`` inside to ``base..base+65535`` on the host.

    A throwaway ``unshare --user`` process creates it; the host (root) writes its maps,
    and the namespace lives on through the open fd and, later, the sandbox's processes.
    """

    def __init__(self, base: int) -> None:
        self.base = base
        holder = subprocess.Popen(["unshare", "--user", "cat"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            mine = os.stat("/proc/self/ns/user").st_ino
            deadline = time.monotonic() + 5
            ns_path = f"/proc/{holder.pid}/ns/user"
            while os.stat(ns_path).st_ino == mine:
                if holder.poll() is not None or time.monotonic() > deadline:
                    raise OSError(0, "could not create a user namespace: "
                                  + (holder.stderr.read().decode(errors="replace")
                                     if holder.stderr and holder.poll() is not None else "timeout"))
                time.sleep(0.0002)
            mapping = f"0 {base} {UID_RANGE}\n".encode()
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{holder.pid}/{name}", "wb") as f:
                    f.write(mapping)
            self.fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            if holder.stdin:
                holder.stdin.close()
            holder.wait()

    def close(self) -> None:
        os.close(self.fd)


def make_dir(path: Path, mode: int, userns: UserNamespace | None) -> None:
    """Make the folder ``path`` with exactly ``mode``, owned by the sandbox's root.

    Under ``userns`` that is the namespace's host ``base`` uid (the namespaces runtime,
    whose bwrap runs as it); without one, host root keeps it.
    """
    path.mkdir(mode=mode)
    os.chmod(path, mode)  # whatever the umask
    if userns is not None:
        os.chown(path, userns.base, userns.base)


_SETNS = _libc.setns
_CLONE_NEWUSER = 0x10000000


def enter_userns(fd: int) -> None:
    """In a freshly forked child: join the namespace and become its root (host ``base``)."""
    _check(_SETNS(fd, _CLONE_NEWUSER), "joining the sandbox user namespace")
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def give_socket(path: Path) -> None:
    """Make the bound socket at ``path`` the owner's of its folder, mode 0600.

    Connecting takes write permission on the socket: that owner alone (a sandbox's root,
    for a restarted node's channel socket in the sandbox's ``run/`` folder). The folder
    belongs to that uid (namespaces), so the socket is changed through a descriptor of the
    very inode that was checked, never by a path that could have been swapped for a link.
    """
    owner = path.parent.stat()
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not the socket this node bound")
        inode = f"/proc/self/fd/{fd}"
        os.chown(inode, owner.st_uid, owner.st_gid)
        os.chmod(inode, 0o600)
    finally:
        os.close(fd)
