"""Hostile program: an image build's ``run`` step, as root in its sandbox, leaving in its
layer everything a layer must not keep, and processes that outlive the step.

argv[1]: JSON {"data_dir": the node's data dir, "sentinel": a host folder beside it,
"marker": a string only this program's survivors carry in their argv}.

Under ``/hostile`` it leaves: a setuid and a setgid copy of bash (and a hard link to the
first), a file with every capability (``security.capability``), ``trusted.*`` and
``user.*`` attributes, symbolic links to host paths (absolute, and relative with enough
``..``), a hard link to a file of the image, a fifo, a unix socket left bound, devices
(``mknod``, expected to fail), files owned by uids 1000 and 65534; it chowns ``/`` itself
(the overlay's upper folder) to 65534, and writes through its links to the host's paths
(which land in its own tree). Then it starts two survivors in sessions of their own: one
appends a timestamp to ``/var/tmp/bg`` every few milliseconds, one holds a bound socket.

Prints JSON (also written to ``/hostile/report.json``): each attempt's outcome (``ok`` or
the errno's name), the network the step saw, and ``ended_ns``, when it returned.
"""

import errno
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time

spec = json.loads(sys.argv[1])
data_dir, sentinel, marker = spec["data_dir"], spec["sentinel"], spec["marker"]
H = "/hostile"
report = {}


def attempt(name, action):
    try:
        action()
        report[name] = "ok"
    except OSError as exc:
        report[name] = errno.errorcode.get(exc.errno, str(exc.errno))


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


os.mkdir(H)

# Privileges: setuid and setgid shells, a second name for one, every file capability.
for name, mode in (("suid-sh", 0o4755), ("sgid-sh", 0o2755)):
    shutil.copy("/bin/bash", f"{H}/{name}")
    os.chmod(f"{H}/{name}", mode)
os.link(f"{H}/suid-sh", f"{H}/suid-hard")
shutil.copy("/bin/true", f"{H}/capable")
# VFS_CAP_REVISION_2 with the effective bit, every capability permitted.
CAPS = struct.pack("<IIIII", 0x02000001, 0xFFFFFFFF, 0, 0x000001FF, 0)
attempt("security.capability", lambda: os.setxattr(f"{H}/capable", "security.capability", CAPS))

# Attributes overlayfs would obey if a layer kept them, and harmless ones.
ATTRIBUTES = {"trusted.overlay.redirect": b"/etc", "trusted.overlay.metacopy": b"",
              "trusted.overlay.origin": b"\0", "trusted.corral": b"x", "user.corral": b"kept"}
for target in ("capable", "."):
    for attribute, value in ATTRIBUTES.items():
        attempt(f"{attribute} on {target}",
                lambda t=target, a=attribute, v=value: os.setxattr(f"{H}/{t}", a, v))

# Links out: to the host's secrets and data, absolute and relative; then writes through them.
os.symlink("/etc/shadow", f"{H}/shadow-link")
os.symlink(data_dir, f"{H}/data-link")
os.symlink(f"{sentinel}/file", f"{H}/sentinel-link")
os.symlink("../" * 16 + sentinel.lstrip("/") + "/file", f"{H}/sentinel-up")
os.makedirs(sentinel, exist_ok=True)
os.makedirs(data_dir, exist_ok=True)
attempt("write through sentinel-link", lambda: write(f"{H}/sentinel-link", "pwned"))
attempt("write through data-link", lambda: write(f"{H}/data-link/pwned", "pwned"))
attempt("write corral-slip", lambda: write("/tmp/corral-slip-build", "pwned"))
attempt("hard link to the image", lambda: os.link("/etc/passwd", f"{H}/passwd-hard"))

# Special files: a fifo, a socket left bound, devices (expected to fail).
os.mkfifo(f"{H}/fifo")
bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
attempt("bind sock", lambda: bound.bind(f"{H}/sock"))
attempt("mknod char", lambda: os.mknod(f"{H}/mem", stat.S_IFCHR | 0o666, os.makedev(1, 1)))
attempt("mknod block", lambda: os.mknod(f"{H}/disk", stat.S_IFBLK | 0o666, os.makedev(7, 0)))

# Owners a layer must keep as they are, and an upper folder whose owner is not the base.
for uid in (1000, 65534):
    write(f"{H}/owned-{uid}", str(uid))
    os.chown(f"{H}/owned-{uid}", uid, uid)
attempt("chown /", lambda: os.chown("/", 65534, 65534))

# The network the step has (none is expected): interfaces, routes, a route to TEST-NET-1
# (a UDP connect picks a route and sends nothing).
interfaces = sorted(name for _, name in socket.if_nameindex())
try:
    with open("/proc/net/route") as f:
        routes = [line.split()[:2] for line in f.read().splitlines()[1:]]
except OSError as exc:
    routes = [errno.errorcode.get(exc.errno, "?")]
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    probe.connect(("192.0.2.1", 9))
    route = probe.getsockname()[0]
except OSError as exc:
    route = errno.errorcode.get(exc.errno, str(exc.errno))
report["network"] = {"interfaces": interfaces, "routes": routes, "route": route}

# Survivors, in sessions of their own, their output nowhere the step's command waits on.
WRITER = """
import sys, time
with open("/var/tmp/bg", "a") as f:
    while True:
        print(time.time_ns(), file=f, flush=True)
        time.sleep(0.002)
"""
HOLDER = f"""
import socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("{H}/held.sock")
s.listen()
time.sleep(86400)
"""
for source in (WRITER, HOLDER):
    subprocess.Popen(["python3", "-c", source, marker], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with open("/var/tmp/bg") as f:
            started = len(f.read().split()) >= 3
    except OSError:
        started = False
    if started and os.path.lexists(f"{H}/held.sock"):
        break
    time.sleep(0.05)
report["survivors started"] = started and os.path.lexists(f"{H}/held.sock")
report["ended_ns"] = time.time_ns()
write(f"{H}/report.json", json.dumps(report))
print(json.dumps(report))
