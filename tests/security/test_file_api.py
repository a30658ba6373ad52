"""Category 6, the file API: ``..``, absolute paths, symlink and hardlink escapes, a symlink
swapped between check and use (TOCTOU), tar/zip-slip, zip bombs, NUL bytes, 10 KB names.

The agent resolves every path inside the sandbox's own root, so the worst any of these can
do is reach the sandbox's own files; the host never extracts, follows or opens anything a
sandbox names. Each test also checks the host's canaries and the neighbour."""

from __future__ import annotations

import io
import tarfile
import threading
import uuid
import zipfile
from pathlib import Path

import pytest

from corral import InvalidArgumentError, Resources, SandboxError
from corral.node import SandboxState, SyncNode, SyncNodeSandbox

from ._checks import Victim
from .conftest import Canary


def test_dotdot_and_absolute_paths_stay_inside(node: SyncNode, attacker: SyncNodeSandbox,
                                               victim: Victim, canary: Canary) -> None:
    image_shadow = (node.node.images.get("python").rootfs / "etc/shadow").read_bytes()
    for path in ("/../../../../etc/shadow", "../../../../../../etc/shadow",
                 "/work/../../etc/./shadow", "//etc//shadow"):
        assert attacker.files.read(path) == image_shadow, path
    for path in [str(p) for p in canary.paths] + [f"{victim.host_dir}/rootfs{Victim.PATH}"]:
        assert not attacker.files.exists(path), path
        assert not attacker.files.exists("/../../.." + path), path
    name = f"corral-slip-{uuid.uuid4().hex}"
    attacker.files.write(f"/../../../../tmp/{name}", b"slipped?")
    assert attacker.files.read(f"/tmp/{name}") == b"slipped?"  # its own /tmp
    assert not Path("/tmp", name).exists()
    canary.assert_intact()
    victim.assert_unharmed()


def test_symlinks_and_hardlinks_do_not_escape(node: SyncNode, runtime: str,
                                              attacker: SyncNodeSandbox,
                                              victim: Victim, canary: Canary) -> None:
    r = attacker.commands.run(
        "mkdir -p /work/links && cd /work/links && ln -sfn / root && ln -sfn /etc etc && "
        "ln -sfn /proc/1/fd agentfds && ln -sfn /proc/self/root selfroot && "
        "ln -sfn /.corral agent && ln -sfn /etc/passwd passwd && "
        f"ln -sfn {canary.paths[0]} canary && ln -sfn {victim.host_dir}/rootfs victimroot && "
        "ln /etc/passwd hardpasswd; "
        "ln /.corral/bin/corral-agent hardagent 2>&1; true")
    assert "Invalid cross-device link" in r.stdout or "cross-device" in r.stdout, r.stdout
    image_shadow = (node.node.images.get("python").rootfs / "etc/shadow").read_bytes()
    assert attacker.files.read("/work/links/etc/shadow") == image_shadow
    try:
        assert attacker.files.read("/work/links/root/etc/shadow") == image_shadow
    except InvalidArgumentError as exc:
        # gVisor 2022 resolves a link to "/" followed by more components to "/" itself.
        assert runtime == "gvisor" and "is a directory" in exc.message, exc
    for refused in ("/work/links/agentfds/0", "/work/links/agentfds/3"):
        with pytest.raises(SandboxError):  # /proc and /dev, even through a link: refused
            attacker.files.read(refused)
    # /proc/self/root is the agent's root: the sandbox's own.
    assert attacker.files.read("/work/links/selfroot/etc/shadow") == image_shadow
    with pytest.raises(SandboxError):
        attacker.files.list("/work/links/agentfds")
    with pytest.raises(SandboxError):
        attacker.files.write("/work/links/agent/planted", b"x")  # read-only bundle
    for dangling in ("/work/links/canary", "/work/links/victimroot/work/victim-secret.txt"):
        with pytest.raises(SandboxError):
            attacker.files.read(dangling)
    # Writing to a link replaces the link (a rename into place), never what it points to.
    passwd = attacker.files.read("/etc/passwd")
    attacker.files.write("/work/links/passwd", b"replaced")
    attacker.files.write("/work/links/hardpasswd", b"replaced")
    assert attacker.files.read("/etc/passwd") == passwd
    canary.assert_intact()
    victim.assert_unharmed()


SWAPPER = """
import os, time
os.makedirs("/work/race-dir", exist_ok=True)
for fd in ("0", "3", "4"):
    open(f"/work/race-dir/{fd}", "w").write("inside")
end = time.monotonic() + 12
while time.monotonic() < end:
    for target in ("/work/race-dir", "/proc/1/fd", "/", "/proc/self"):
        try:
            os.symlink(target, "/work/race.new")
            os.rename("/work/race.new", "/work/race")
        except OSError:
            pass
"""


def test_a_symlink_swapped_between_check_and_use(attacker: SyncNodeSandbox, victim: Victim,
                                                 canary: Canary) -> None:
    """A link flipped between a sandbox folder, /proc/1/fd (the agent's channel) and / as
    fast as the sandbox can: every answer is the sandbox's own file or a refusal, and the
    agent's channel survives."""
    swapper = attacker.commands.start(["python3", "-c", SWAPPER], timeout=60)
    answers: dict[str, int] = {}
    try:
        for i in range(150):
            path = f"/work/race/{'034'[i % 3]}"
            try:
                data = attacker.files.read(path)
                assert data in (b"inside", b"raced", b""), data[:100]
                answers["read"] = answers.get("read", 0) + 1
            except SandboxError as exc:
                answers[exc.code] = answers.get(exc.code, 0) + 1
            try:
                attacker.files.write(path, b"raced")
            except SandboxError as exc:
                answers[exc.code] = answers.get(exc.code, 0) + 1
    finally:
        swapper.kill()
        swapper.wait()
    assert attacker.state is SandboxState.RUNNING
    assert attacker.commands.run("echo channel intact").stdout == "channel intact\n"
    print(f"\nTOCTOU answers: {answers}")
    canary.assert_intact()
    victim.assert_unharmed()


def _slip_tar(name: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for member in (f"../../../../../../tmp/{name}-dotdot", f"/tmp/{name}-absolute"):
            info = tarfile.TarInfo(member)
            info.size = 7
            tar.addfile(info, io.BytesIO(b"slipped"))
        link = tarfile.TarInfo("hostlink")
        link.type, link.linkname = tarfile.SYMTYPE, "/tmp"
        tar.addfile(link)
        through = tarfile.TarInfo(f"hostlink/{name}-through-link")
        through.size = 7
        tar.addfile(through, io.BytesIO(b"slipped"))
    return out.getvalue()


def _slip_zip(name: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(f"../../../../../../tmp/{name}-zip", b"slipped")
        z.writestr(f"/tmp/{name}-zipabs", b"slipped")
    return out.getvalue()


def test_tar_and_zip_slip_land_in_the_sandbox_at_worst(attacker: SyncNodeSandbox, victim: Victim,
                                                       canary: Canary) -> None:
    """Corral never extracts archives on the host: an upload is bytes. Extracted inside,
    by the image's tar or Python's (unsafe by default) tarfile, a slip reaches the
    sandbox's own /tmp at worst."""
    name = f"corral-slip-{uuid.uuid4().hex}"
    attacker.files.write("/work/slip.tar", _slip_tar(name))
    attacker.files.write("/work/slip.zip", _slip_zip(name))
    attacker.commands.run("mkdir -p /work/x1 /work/x2 /work/x3 && "
                          "tar -C /work/x1 -xf /work/slip.tar; "
                          "python3 -c \"import tarfile; tarfile.open('/work/slip.tar')"
                          ".extractall('/work/x2')\"; "
                          "python3 -c \"import zipfile; zipfile.ZipFile('/work/slip.zip')"
                          ".extractall('/work/x3')\"; true", timeout=60)
    inside = attacker.commands.run(["python3", "-c", "import os; print(sum(n.startswith("
                                    f"'{name}') for n in os.listdir('/tmp')))"]).stdout.strip()
    print(f"\nslipped files inside the sandbox's own /tmp: {inside}")
    assert not list(Path("/tmp").glob(f"{name}*"))
    canary.assert_intact()
    victim.assert_unharmed()


def test_a_zip_bomb_fills_only_its_own_disk(node: SyncNode, runtime: str,
                                            victim: Victim) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("zeros", "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(256):
                member.write(block)
    bomb = out.getvalue()
    assert len(bomb) < 2 << 20  # 256 MiB of zeros in well under 2 MiB
    sb = node.create("python", runtime=runtime, resources=Resources(disk_mib=64), timeout=300)
    try:
        sb.files.write("/work/bomb.zip", bomb)
        r = sb.commands.run("python3 -c \"import zipfile; zipfile.ZipFile('/work/bomb.zip')"
                            ".extractall('/work/out')\"", timeout=120)
        assert r.exit_code != 0 and "No space left on device" in r.stderr, r.stderr[-500:]
        assert sb.commands.run("echo alive").stdout == "alive\n"
    finally:
        sb.kill()
    victim.assert_unharmed()


@pytest.mark.parametrize("path", ["/work/a\0b", "/work/" + "n" * 10_000, "/" + "d/" * 3000,
                                  "/work/" + "x" * 256, "", "\0"])
def test_nul_bytes_and_huge_names_are_refused(attacker: SyncNodeSandbox, path: str) -> None:
    calls = [lambda: attacker.files.read(path), lambda: attacker.files.write(path, b"x"),
             lambda: attacker.files.list(path), lambda: attacker.files.stat(path),
             lambda: attacker.files.exists(path), lambda: attacker.files.mkdir(path),
             lambda: attacker.files.remove(path),
             lambda: attacker.files.rename("/work/victim-none", path)]
    for call in calls:
        with pytest.raises(InvalidArgumentError):
            call()
    assert attacker.commands.run("echo alive").stdout == "alive\n"


def test_many_concurrent_file_requests_leave_the_agent_serving(attacker: SyncNodeSandbox) -> None:
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            for i in range(20):
                attacker.files.write(f"/work/conc-{n}-{i}", b"x" * 1000)
                assert attacker.files.read(f"/work/conc-{n}-{i}") == b"x" * 1000
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    count = ["python3", "-c", "import os; print(sum(n.startswith('conc-') for n in "
             "os.listdir('/work')))"]  # not ls: gVisor 2022 refuses coreutils' statx
    assert attacker.commands.run(count).stdout == "160\n"
