"""Volumes' filesystems on the host. Privileged: needs root on the host.

A volume is an ext4 filesystem in a sparse file of its quota's size, ``<id>.img``, attached
to a loop device and mounted (``nosuid,nodev``) at a folder of its own. The quota is the
filesystem's size: a full volume answers ENOSPC to whoever writes, a sandbox or the node.
Sandboxes never see the image file or the loop device, only the mounted tree, so the
filesystem image is never hostile input to the host's ext4 driver.

A filesystem must never be live twice (two loop devices on one image, each with its own
superblock, would corrupt it). A mount that the node dropped may live on in a sandbox's
mount namespace (a sandbox released across a node restart, a lazily unmounted volume still
in use), and with it its loop device; so :func:`mount` first looks for a loop device already
backed by the image, and mounts that one (the kernel then hands back the same superblock),
attaching a new device only when there is none. Loop devices are attached with
``LO_FLAGS_AUTOCLEAR``: each goes when its filesystem's last mount does.

``mkfs.ext4`` makes the filesystem (about 30 ms for 1 GiB: lazy inode tables and journal);
the loop ioctls and ``mount(2)`` are called directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from ._mounts import mount_line

_libc = ctypes.CDLL(None, use_errno=True)

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LOOP_GET_STATUS64 = 0x4C05
_LO_FLAGS_AUTOCLEAR = 4
_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2
#: Tries at taking a free loop device another process may take first (EBUSY).
_ATTACH_TRIES = 32
MIB = 1024 * 1024
#: ``mkfs.ext4`` options: no blocks reserved for root (the quota is all the user's), inode
#: tables and journal zeroed lazily (the file is sparse: they read as zeros anyway), no
#: discard pass over a file that was just made.
MKFS_OPTIONS = ("-q", "-F", "-t", "ext4", "-m", "0",
                "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")
MKFS_TIMEOUT = 120.0


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
        ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32),
                ("info", _LoopInfo64), ("reserved", ctypes.c_uint64 * 8)]


def make_filesystem(image: Path, size_mib: int) -> None:
    """Make the sparse file ``image`` (new; it must not exist) of ``size_mib`` and an ext4
    filesystem in it."""
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.ftruncate(fd, size_mib * MIB)
    finally:
        os.close(fd)
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    done = subprocess.run([mkfs, *MKFS_OPTIONS, str(image)], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=MKFS_TIMEOUT,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    if done.returncode != 0:
        raise OSError(errno.EIO, f"mkfs.ext4 {image.name}: "
                      f"{done.stderr.decode(errors='replace').strip()[-500:]}")


def _status(device: int) -> _LoopInfo64 | None:
    info = _LoopInfo64()
    if _libc.ioctl(device, _LOOP_GET_STATUS64, ctypes.byref(info)) < 0:
        return None  # ENXIO: not attached (any more)
    return info


def _backs(info: _LoopInfo64 | None, image: os.stat_result) -> bool:
    return info is not None and (info.lo_inode, info.lo_device) == (image.st_ino, image.st_dev)


def loop_backings() -> dict[str, list[str]]:
    """Attached loop devices by the path of the file backing each (``loop3``, ...)."""
    found: dict[str, list[str]] = {}
    for name in os.listdir("/sys/block"):
        if not name.startswith("loop") or not name[4:].isdigit():
            continue
        try:
            backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().rstrip("\n")
        except OSError:
            continue  # not attached
        found.setdefault(backing, []).append(name)
    return found


def _attached(image: Path, backings: dict[str, list[str]] | None) -> int | None:
    """An open descriptor of a loop device the image already backs, or None.

    Holding the descriptor keeps the device attached (autoclear waits for its last opener).
    ``backings``: :func:`loop_backings` read once for many mounts (a node's start).
    """
    wanted = os.stat(image)
    for name in (backings if backings is not None else loop_backings()).get(str(image), []):
        try:
            device = os.open(f"/dev/{name}", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        if _backs(_status(device), wanted):  # checked again, now that it is held open
            return device
        os.close(device)
    return None


def _attach(image: Path) -> int:
    """Attach ``image`` to a free loop device; an open descriptor of that device."""
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    backing = os.open(image, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for _ in range(_ATTACH_TRIES):
            number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
            device = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
            config = _LoopConfig(fd=backing)
            config.info.lo_flags = _LO_FLAGS_AUTOCLEAR
            if _libc.ioctl(device, _LOOP_CONFIGURE, ctypes.byref(config)) == 0:
                return device
            err = ctypes.get_errno()
            os.close(device)
            if err != errno.EBUSY:  # EBUSY: another process took it first
                raise OSError(err, f"attaching {image.name} to loop{number}: "
                              f"{os.strerror(err)}")
        raise OSError(errno.EBUSY, f"no free loop device for {image.name}")
    finally:
        os.close(backing)
        os.close(control)


def is_mounted(target: Path) -> bool:
    """Whether a volume's filesystem is mounted at ``target`` (on the host)."""
    line = mount_line(target)
    return line is not None and " - ext4 " in line


def mount(image: Path, target: Path, backings: dict[str, list[str]] | None = None) -> None:
    """Mount the filesystem in ``image`` at ``target`` (``nosuid,nodev``); nothing if it is
    mounted there already. ``backings``: see :func:`_attached`."""
    if is_mounted(target):
        return
    device = _attached(image, backings)
    if device is None:
        device = _attach(image)
    try:
        # The device held and checked above: attached to the image while it is held.
        source = os.readlink(f"/proc/self/fd/{device}").encode()
        if _libc.mount(source, bytes(target), b"ext4", _MS_NOSUID | _MS_NODEV, None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mounting {image.name} at {target}: {os.strerror(err)}")
    finally:
        os.close(device)  # the mount holds it now; without one, autoclear detaches it


def prepare_root(target: Path) -> None:
    """A new volume's root: empty (no ``lost+found``), owned by (sandbox) root, mode 01777
    like /tmp: an image's non-root user can write there too, and no user can remove
    another's files."""
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(target / "lost+found")
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o1777)
    finally:
        os.close(fd)


def unmount(target: Path) -> None:
    """Detach the volume mounted at ``target`` (lazily: a sandbox still using it keeps it,
    and its loop device, until it is gone); nothing if none is."""
    while is_mounted(target):
        if _libc.umount2(bytes(target), _MNT_DETACH) < 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise OSError(err, f"unmounting {target}: {os.strerror(err)}")
