"""Hostile program: reach the host's and other sandboxes' files from inside a sandbox.

argv[1]: JSON {"paths": host paths to try, "secrets": strings that must never be read}.
Prints JSON: "found" (paths whose content held a secret), "writable" (places outside the
sandbox's own writable layer that took a write), "exe" (targets of /proc/*/exe that opened
for writing),
"devices" (device nodes that opened), "dev" (the /dev listing) and "proc_roots" (paths
reached through another process's /proc/<pid>/root).
"""

import json
import os
import stat
import sys

spec = json.loads(sys.argv[1])
secrets = [s.encode() for s in spec["secrets"]]
found, writable, exe, devices = [], [], [], []
prefixes = ["", "/proc/1/root", "/proc/self/root", "/proc/self/cwd/../../../..",
            "/proc/thread-self/root", "/.corral/../..", "/.corral-run/../.."]


def leaks(path):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 22)
    except OSError:
        return False
    return any(s in data for s in secrets)


for path in spec["paths"]:
    for prefix in prefixes:
        candidate = prefix + path
        if leaks(candidate):
            found.append(candidate)
# Every process's root and cwd: another sandbox's would be a way across.
proc_roots = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for link in ("root", "cwd"):
            for path in spec["paths"] + ["/work/victim-secret.txt"]:
                if leaks(f"/proc/{pid}/{link}{path}"):
                    proc_roots.append(f"/proc/{pid}/{link}{path}")
# Writes outside the writable layer: the agent bundle, the channel folder, /proc, sysfs.
for folder in ("/.corral", "/.corral/bin", "/.corral-run", "/proc", "/proc/sys/kernel",
               "/sys/fs/cgroup", "/sys/kernel"):
    try:
        fd = os.open(os.path.join(folder, "planted"), os.O_WRONLY | os.O_CREAT, 0o755)
        os.close(fd)
        writable.append(folder)
    except OSError:
        pass
# /proc/<pid>/exe opened for writing (CVE-2019-5736 overwrote runc through it).
for pid in ["self"] + [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        fd = os.open(f"/proc/{pid}/exe", os.O_WRONLY)
        os.close(fd)
        exe.append(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        pass
# Device nodes: the host's disks, memory, kernel log, ports.
for path in ("/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/mem", "/dev/kmem", "/dev/port",
             "/dev/kmsg", "/dev/kvm", "/dev/fuse", "/dev/net/tun", "/dev/loop0",
             "/dev/mapper/control", "/dev/vsock", "/dev/vhost-net"):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
        devices.append(path)
    except OSError:
        pass
# A node made for the host's memory (1, 1) and first disk (8, 0), then opened.
for name, kind, major, minor in (("mem", stat.S_IFCHR, 1, 1), ("sda", stat.S_IFBLK, 8, 0)):
    node = f"/work/made-{name}"
    try:
        os.mknod(node, kind | 0o600, os.makedev(major, minor))
    except OSError:
        continue
    try:
        fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if os.read(fd, 64):
                devices.append(node)
        except OSError:
            pass
        os.close(fd)
    except OSError:
        pass
dev = {}
for name in sorted(os.listdir("/dev")):
    st = os.lstat(os.path.join("/dev", name))
    dev[name] = ("blk" if stat.S_ISBLK(st.st_mode) else "chr" if stat.S_ISCHR(st.st_mode)
                 else "other")
print(json.dumps({"found": found, "writable": writable, "exe": exe, "devices": devices,
                  "dev": dev, "proc_roots": proc_roots}))
