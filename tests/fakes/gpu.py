"""A fake NVIDIA driver tree: what :mod:`corral.runtime.gpu` reads, laid out under a folder.

``make_driver_tree(root)`` writes ``proc/driver/nvidia/version``, ``dev/nvidia*`` (plain
files, or real character devices with the driver's major number when ``char_devices``
and the tests run as root: no driver answers them, so opening one fails with ENXIO, past
any devices cgroup that allows it), an ``etc/ld.so.conf`` that includes ``ld.so.conf.d``,
the driver's libraries under its version with their soname links in two folders, other
libraries that must not be picked, ``nvidia-smi`` and the firmware folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from corral.runtime.gpu import NVIDIA_MAJOR, Gpu, GpuHost

DRIVER = "580.159.04"
#: The driver's libraries the tree holds: (folder, file name).
LIBRARIES = (("usr/lib/x86_64-linux-gnu", f"libcuda.so.{DRIVER}"),
             ("usr/lib/x86_64-linux-gnu", f"libnvidia-ml.so.{DRIVER}"),
             ("opt/nvidia/lib", f"libnvidia-ptxjitcompiler.so.{DRIVER}"))
LINKS = (("usr/lib/x86_64-linux-gnu", "libcuda.so.1", f"libcuda.so.{DRIVER}"),
         ("usr/lib/x86_64-linux-gnu", "libcuda.so", "libcuda.so.1"),
         ("usr/lib/x86_64-linux-gnu", "libnvidia-ml.so.1", f"libnvidia-ml.so.{DRIVER}"),
         ("opt/nvidia/lib", "libnvidia-ptxjitcompiler.so.1",
          f"libnvidia-ptxjitcompiler.so.{DRIVER}"))


def make_driver_tree(root: Path, gpus: int = 2, *, char_devices: bool = False) -> GpuHost:
    """Write the tree; returns the :class:`GpuHost` a node of it schedules (H200s)."""
    (root / "proc/driver/nvidia").mkdir(parents=True)
    (root / "proc/driver/nvidia/version").write_text(
        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release Build  "
        "(dvs-builder@U22-I3-AE18-09-3)  Sat Nov  1 00:00:00 UTC 2025\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    (root / "dev").mkdir()
    names = [("nvidiactl", 255), ("nvidia-uvm", 0), *((f"nvidia{i}", i) for i in range(gpus))]
    for name, minor in names:
        path = root / "dev" / name
        if char_devices:
            major = NVIDIA_MAJOR if name.startswith("nvidia") and name != "nvidia-uvm" else 511
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(path, 0o666)
        else:
            path.write_text("")
    (root / "dev/null").write_text("")  # not the driver's: never given
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("# the usual\ninclude /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/nvidia.conf").write_text("/opt/nvidia/lib\n")
    (root / "etc/ld.so.conf.d/loop.conf").write_text("include /etc/ld.so.conf\n")
    for folder, name in LIBRARIES:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text(f"fake {name}\n")
        os.chmod(root / folder / name, 0o644)
    for folder, name, target in LINKS:
        (root / folder / name).symlink_to(target)
    # Not the driver's: another version, another library, a link out of the folder.
    (root / "usr/lib/x86_64-linux-gnu/libcuda.so.535.104.12").write_text("old driver\n")
    (root / "usr/lib/x86_64-linux-gnu/libz.so.1.2.13").write_text("zlib\n")
    (root / "usr/lib/x86_64-linux-gnu/libnvidia-evil.so.1").symlink_to(
        f"/etc/libcuda.so.{DRIVER}")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/nvidia-smi").write_text("#!/bin/sh\necho fake nvidia-smi\n")
    os.chmod(root / "usr/bin/nvidia-smi", 0o755)
    (root / "lib/firmware/nvidia" / DRIVER).mkdir(parents=True)
    (root / "lib/firmware/nvidia" / DRIVER / "gsp_ga10x.bin").write_text("firmware\n")
    return GpuHost(tuple(Gpu(index=i, minor=i, name="NVIDIA H200", uuid=f"GPU-{i:08d}",
                             memory_mib=143771) for i in range(gpus)), DRIVER, "", "test")
