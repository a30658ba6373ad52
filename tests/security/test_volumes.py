"""Volumes: a hostile sandbox shares a filesystem with the host's file API, other sandboxes
and its own future. Links it plants (to /etc/shadow, ``../../..``, ``/``, chains, a loop,
/proc) never lead the host's file API out of the volume, not even a folder it swaps for a
link while the API runs; it cannot reach another volume or the host through its own; setuid
files and device nodes in a volume do nothing (``nosuid,nodev``); a volume is seen only by
the sandboxes given it. Each test also checks the host's canaries and files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError, NotFoundError, SandboxError
from corral.node import SyncNode, SyncNodeSandbox
from corral.node.volumes import VolumeMount
from corral.runtime.host import mounts_under

from ._checks import Victim, run_python
from .conftest import Canary

#: Host files a link in a volume names; each must be unchanged after every attack.
HOST_FILES = (Path("/etc/passwd"), Path("/etc/shadow"), Path("/etc/hostname"))


@dataclass(frozen=True)
class Mounted:
    """An attacker sandbox with a volume of its own at /data (``folder``: its host mount)."""

    sandbox: SyncNodeSandbox
    volume: str
    folder: Path


def digests() -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in HOST_FILES if p.exists()}


@pytest.fixture(scope="module")
def mounted(node: SyncNode, runtime: str) -> Iterator[Mounted]:
    volume = node.volumes.create(32).id
    sb = node.create("python", runtime=runtime, timeout=900, metadata={"role": "attacker"},
                     volumes=[VolumeMount(volume, "/data")])
    try:
        yield Mounted(sb, volume, node.node.volumes.root / volume)
    finally:
        sb.kill()
        node.remove_volume(volume)


@pytest.fixture(scope="module")
def other(node: SyncNode, runtime: str) -> Iterator[tuple[str, str]]:
    """Another volume, mounted by a sandbox of its own, holding a secret file: (its id, the
    secret, which is also the file's name)."""
    volume = node.volumes.create(16).id
    secret = f"other-volume-secret-{uuid.uuid4().hex}"
    node.volumes.write(volume, f"/{secret}", [secret.encode()])
    holder = node.create("python", runtime=runtime, timeout=900,
                         volumes=[VolumeMount(volume, "/held")])
    try:
        yield volume, secret
    finally:
        holder.kill()
        node.remove_volume(volume)


PLANT = """
import os
os.chdir("/data")
os.makedirs("etc", exist_ok=True)
os.makedirs("inner/deep", exist_ok=True)
open("etc/passwd", "w").write("decoy passwd")
open("etc/shadow", "w").write("decoy shadow")
links = {
    "shadow": "/etc/shadow", "etcdir": "/etc", "root": "/", "up": "../../../../../../etc",
    "chain1": "chain2", "chain2": "chain3", "chain3": "../../../../../../../../etc",
    "inner/deep/climb": "../../../../../../../../", "selfroot": "/proc/self/root",
    "hostfd": "/proc/self/fd/0", "loop": "loop", "canary": CANARY, "hostvol": HOSTVOL,
}
for name, target in links.items():
    if os.path.lexists(name):
        os.remove(name)
    os.symlink(target, name)
print("[]")
"""


def test_links_in_a_volume_never_lead_the_file_api_out(node: SyncNode, mounted: Mounted,
                                                       victim: Victim, canary: Canary) -> None:
    before, etc_names = digests(), sorted(os.listdir("/etc"))
    source = (PLANT.replace("CANARY", repr(str(canary.paths[0])))
              .replace("HOSTVOL", repr(str(mounted.folder.parent))))
    run_python(mounted.sandbox, source)
    volumes, vid = node.volumes, mounted.volume
    # The links are real attacks: opened by a plain path through the host's mount, they
    # lead out of the volume, to the host's own files.
    for link in ("shadow", "etcdir/shadow", "up/shadow", "chain1/shadow"):
        with open(mounted.folder / link, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == before[Path("/etc/shadow")], link

    def read(path: str) -> bytes:
        return b"".join(volumes.read_stream(vid, path))

    # Every link resolves as it would inside the sandbox, with the volume's root as /.
    for path in ("/shadow", "/etcdir/shadow", "/root/etc/shadow", "/up/shadow",
                 "/chain1/shadow", "/inner/deep/climb/etc/shadow", "../../shadow",
                 "/inner/../../../root/up/shadow"):
        assert read(path) == b"decoy shadow", path
    for outside in ("/canary", "/hostvol", f"/hostvol/{vid}.img", "/selfroot/etc/shadow",
                    "/hostfd", "/root/proc/1/environ"):
        with pytest.raises(NotFoundError):
            read(outside)
    with pytest.raises(InvalidArgumentError, match="links"):
        read("/loop")
    assert {e.name for e in volumes.list_dir(vid, "/up")} == {"passwd", "shadow"}
    assert {e.name for e in volumes.list_dir(vid, "/root")} == set(os.listdir(mounted.folder))
    climbed = volumes.list_dir(vid, "/inner/deep/climb", depth=3)
    assert "/inner/deep/climb/etc/passwd" in {e.path for e in climbed}
    assert all(not e.path.startswith("/inner/deep/climb/usr") for e in climbed)
    canary_link = volumes.stat(vid, "/canary")  # described, not followed
    assert (canary_link.type, canary_link.target) == ("symlink", str(canary.paths[0]))
    assert volumes.stat(vid, "/up/passwd").size == len("decoy passwd")
    with pytest.raises(NotFoundError):
        volumes.stat(vid, "/hostvol/x")

    # Writes through links land inside; a link written to is replaced, not written through.
    planted = f"planted-{uuid.uuid4().hex}"
    volumes.write(vid, f"/up/{planted}", [b"inside"])
    volumes.write(vid, f"/root/up/{planted}-2", [b"inside"])
    assert volumes.mkdir(vid, f"/etcdir/{planted}-dir") is True
    for name in ("shadow", "canary", "hostfd"):
        volumes.write(vid, f"/{name}", [b"replaced the link"])
        assert volumes.stat(vid, f"/{name}").type == "file"
    with pytest.raises(SandboxError):
        volumes.write(vid, f"/hostvol/{planted}", [b"x"])  # a dangling link's folder
    with pytest.raises(SandboxError):
        volumes.mkdir(vid, f"/hostvol/{planted}")
    listing = run_python(mounted.sandbox, "import os, json; print(json.dumps(sorted("
                         "os.listdir('/data/etc'))))")
    assert set(listing) >= {planted, f"{planted}-2", f"{planted}-dir", "passwd"}
    assert not any(planted in name for name in os.listdir("/etc"))
    assert not any(planted in name for name in os.listdir(mounted.folder.parent))

    # Removal through links removes inside, or the link itself.
    volumes.remove_path(vid, "/up/passwd")
    volumes.remove_path(vid, "/chain1/" + planted)
    volumes.remove_path(vid, "/root", recursive=True)
    volumes.remove_path(vid, "/inner/deep/climb", recursive=True)
    assert volumes.stat(vid, "/etc").type == "dir"
    assert sorted(e.name for e in volumes.list_dir(vid, "/etc")) == sorted(
        [f"{planted}-2", f"{planted}-dir", "shadow"])
    with pytest.raises(SandboxError):
        volumes.remove_path(vid, "/hostvol/" + f"{vid}.img")
    assert (mounted.folder.parent / f"{vid}.img").exists()

    assert digests() == before and sorted(os.listdir("/etc")) == etc_names
    canary.assert_intact()
    victim.assert_unharmed()


SWAP_SETUP = """
import os
os.makedirs("/data/race/real", exist_ok=True)
os.makedirs("/data/etc", exist_ok=True)
open("/data/etc/passwd", "w").write("decoy passwd")
os.symlink("real", "/data/race/d")
print("[]")
"""
SWAPPER = """
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for target in ("/", "../../../../../..", "/proc/self/root", "real"):
        try:
            os.symlink(target, "/data/race/new")
            os.rename("/data/race/new", "/data/race/d")
        except OSError:
            if os.path.lexists("/data/race/new"):
                os.remove("/data/race/new")
"""


def test_a_folder_swapped_for_a_link_while_the_file_api_runs_stays_inside(
        node: SyncNode, mounted: Mounted, victim: Victim, canary: Canary) -> None:
    """Resolution is the kernel's, in one call per path, checked at every step: a link
    flipped as fast as the sandbox can between a folder, / and ``../..`` changes where a
    request lands only within the volume."""
    before = digests()
    run_python(mounted.sandbox, SWAP_SETUP)
    swapper = mounted.sandbox.commands.start(["python3", "-c", SWAPPER, "20"], timeout=60)
    volumes, vid = node.volumes, mounted.volume
    marker = f"escape-{uuid.uuid4().hex}"
    answers: dict[str, int] = {}

    def count(what: str) -> None:
        answers[what] = answers.get(what, 0) + 1

    try:
        for i in range(300):
            actions: tuple[Callable[[], object], ...] = (
                partial(volumes.write, vid, f"/race/d/{marker}-{i % 7}", [b"raced"]),
                partial(volumes.mkdir, vid, f"/race/d/{marker}-dir"),
                lambda: b"".join(volumes.read_stream(vid, "/race/d/etc/passwd")),
                partial(volumes.list_dir, vid, "/race/d", depth=2),
                partial(volumes.stat, vid, "/race/d/etc/passwd"),
                partial(volumes.remove_path, vid, f"/race/d/{marker}-{(i + 3) % 7}"))
            for action in actions:
                try:
                    got = action()
                    if isinstance(got, bytes):
                        assert got == b"decoy passwd", got[:100]
                    if isinstance(got, list):
                        assert all(e.path.startswith("/race/d") for e in got)
                        assert not {"bin", "usr", "proc"} & {e.name for e in got}, got
                    count("ok")
                except SandboxError as exc:
                    count(exc.code)
    finally:
        swapper.kill()
        swapper.wait()
    print(f"\nvolume TOCTOU answers: {answers}")
    assert answers.get("ok", 0) > 100
    for where in (Path("/"), Path("/etc"), Path("/tmp"), mounted.folder.parent,
                  node.node.sandboxes_dir / mounted.sandbox.id / "disk" / "upper"):
        assert not [n for n in os.listdir(where) if n.startswith(marker)], where
    assert digests() == before
    canary.assert_intact()
    victim.assert_unharmed()


ESCAPE = """
import errno, json, os, sys
found, other_id, secret, host_volumes = [], sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
out["dotdot_is_root"] = sorted(os.listdir("/data/..")) == sorted(os.listdir("/"))
out["realpath"] = os.path.realpath("/data/../../../..")
for path in (f"{host_volumes}/{other_id}/{secret}", f"/data/../../{host_volumes}/{other_id}",
             f"/data/../../../{host_volumes}", "/proc/self/root/../../" + host_volumes):
    out[path] = os.path.exists(path)
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev", "/usr")]
    if secret in files or secret in dirs:
        found.append(root)
out["found"] = found
for source, target in (("/etc/passwd", "/data/hard"), ("/.corral/bin/corral-agent", "/data/a")):
    try:
        os.link(source, target)
        out["link " + source] = "linked"
    except OSError as e:
        out["link " + source] = e.errno
mountinfo = open("/proc/self/mountinfo").read()
out["mountinfo names a volume"] = other_id in mountinfo or host_volumes in mountinfo
print(json.dumps(out))
"""


def test_a_sandbox_cannot_reach_another_volume_or_the_host_through_its_own(
        node: SyncNode, mounted: Mounted, other: tuple[str, str], victim: Victim,
        canary: Canary) -> None:
    other_id, secret = other
    host_volumes = str(mounted.folder.parent)
    out = run_python(mounted.sandbox, ESCAPE, other_id, secret, host_volumes, timeout=300)
    assert out.pop("dotdot_is_root") is True and out.pop("realpath") == "/"
    assert out.pop("found") == []
    # Hard links out of the volume: across filesystems, refused (EXDEV); the volume holds
    # no name for a file of anyone else's.
    assert out.pop("link /etc/passwd") == 18 and out.pop("link /.corral/bin/corral-agent") == 18
    assert out.pop("mountinfo names a volume") is False
    assert not any(out.values()), out  # none of the host paths exists inside
    assert b"".join(node.volumes.read_stream(other_id, f"/{secret}")) == secret.encode()
    canary.assert_intact()
    victim.assert_unharmed()


DEVICES = """
import errno, json, os, shutil, sys
out = {}
for name in sys.argv[1:]:
    try:
        with open("/data/" + name, "rb") as f:
            out[name] = "read %d bytes" % len(f.read(16))
    except OSError as e:
        out[name] = e.errno
try:
    os.mknod("/data/made-null", 0o20666, os.makedev(1, 3))
    out["mknod"] = "made"
except OSError as e:
    out["mknod"] = e.errno
shutil.copy("/usr/bin/python3", "/data/suid-python")
os.chown("/data/suid-python", 0, 0)
os.chmod("/data/suid-python", 0o4755)
print(json.dumps(out))
"""


def test_setuid_files_and_devices_in_a_volume_do_nothing(node: SyncNode, runtime: str,
                                                         mounted: Mounted, canary: Canary
                                                         ) -> None:
    # Device nodes a sandbox cannot make (it has no CAP_MKNOD over the host), placed by the
    # host itself: the disk the host boots from, its memory, its kernel log.
    nodes = {"host-disk": (0o60600, os.stat("/").st_dev),
             "host-mem": (0o20600, os.makedev(1, 1)), "host-kmsg": (0o20600, os.makedev(1, 11))}
    for name, (mode, device) in nodes.items():
        os.mknod(mounted.folder / name, mode, device)
    try:
        out = run_python(mounted.sandbox, DEVICES, *nodes)
        for name in nodes:
            assert out[name] in (1, 13), (name, out[name])  # EPERM / EACCES: nodev
        assert out["mknod"] == 1  # EPERM
        uids = run_python(mounted.sandbox, "import os, json; print(json.dumps(os.getresuid()))")
        assert uids == [0, 0, 0]
        r = mounted.sandbox.commands.run(
            ["/data/suid-python", "-c", "import os, json; print(json.dumps(os.getresuid()))"],
            user="user")
        assert r.exit_code == 0 and r.stdout.strip() == "[1000, 1000, 1000]", (r.stdout, r.stderr)
        for name in nodes:  # the host's file API reads regular files only
            with pytest.raises(SandboxError):
                node.volumes.read_stream(mounted.volume, f"/{name}")
        # On the host too the volume is mounted nosuid,nodev, and root's alone.
        (line,) = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                   if ln.split()[4] == str(mounted.folder)]
        assert {"nosuid", "nodev"} <= set(line.split()[5].split(",")), line
        parent = os.stat(mounted.folder.parent)
        assert (parent.st_uid, parent.st_mode & 0o777) == (0, 0o700)
        nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "ls", str(mounted.folder)], capture_output=True, text=True)
        assert nobody.returncode != 0 and "Permission denied" in nobody.stderr
        if runtime == "namespaces":  # gVisor's mountinfo does not print these flags
            (inside,) = [ln for ln in mounted.sandbox.commands.run(
                "cat /proc/self/mountinfo").stdout.splitlines() if ln.split()[4] == "/data"]
            assert {"nosuid", "nodev"} <= set(inside.split()[5].split(",")), inside
    finally:
        for name in (*nodes, "suid-python"):
            (mounted.folder / name).unlink(missing_ok=True)
    canary.assert_intact()


LOOK = """
import json, os, sys
secret = sys.argv[1]
found = []
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev", "/usr")]
    if secret in files:
        found.append(root)
mountinfo = open("/proc/self/mountinfo").read()
print(json.dumps({"found": found, "loop": "/dev/loop" in mountinfo,
                  "ids": [v for v in sys.argv[2:] if v in mountinfo]}))
"""


def test_a_volume_is_seen_only_by_the_sandboxes_given_it(node: SyncNode, runtime: str,
                                                         mounted: Mounted,
                                                         other: tuple[str, str]) -> None:
    other_id, secret = other
    bystander = node.create("python", runtime=runtime, timeout=300)
    try:
        out = run_python(bystander, LOOK, secret, other_id, mounted.volume, timeout=300)
        assert out == {"found": [], "loop": False, "ids": []}
        assert node.volume_users(other_id) != [] and bystander.id not in (
            node.volume_users(other_id) + node.volume_users(mounted.volume))
        # Nothing of a volume is mounted under its folder on the host either.
        assert {p.name for p in mounts_under(node.node.sandboxes_dir / bystander.id)
                } == {"rootfs", "disk", *(["lower"] if runtime == "namespaces" else [])}
    finally:
        bystander.kill()
