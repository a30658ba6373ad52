"""Image builds: a build step is a hostile program, and what it leaves must harm neither
the host nor another tenant (SECURITY.md, "Image builds").

On each runtime, one ``run`` step (``programs/build_step.py``) leaves in its layer what a
layer must not keep (setuid files, file capabilities, sockets, links to host paths, hard
links, a fifo, attempted devices and ``trusted.*`` attributes), chowns its own ``/``, and
leaves two processes running after its command returns. On the host, the layer must be
neutralised, nothing outside the layer store may change, and no process of the step's
sandbox may survive; a sandbox started from the image must see none of it work. The
builds run on a node of their own whose registries are empty: a ``run`` step then has no
network at all. A second build, whose registries are names under ``.invalid`` that nothing
looks up, shows that ``workdir`` and ``copy`` steps get no network even when a ``run``
step gets one. No step sends a packet anywhere.

Against the server of ``tests/server``: another tenant can neither use nor see an image,
by name or by id, and a copy that follows a link out of its build context is refused
before anything reads through the link.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from corral import Image, NotFoundError, Sandbox
from corral.api.image_spec import ImageSpec
from corral.api.network import NetworkPolicy
from corral.node import Node, NodeSettings
from corral.node import builder as image_builder
from corral.node.layers import LayerStore, Manifest
from corral.node.sandbox import NodeSandbox
from corral.node.sync import SyncNodeSandbox
from corral.runtime.host import cgroup_layout
from tests.conftest import IMAGE_DIR, sandbox_data_dir
from tests.server.conftest import Server, assert_error, server, server_dir  # noqa: F401

from ._checks import PROGRAMS
from .conftest import Canary

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds need root")

#: No registry: a ``run`` step gets no network at all.
EMPTY = image_builder.Registries(apt=(), pip=(), npm=())
#: Registries named by domains that never resolve (``.invalid``, RFC 2606), so that a
#: ``run`` step gets a network; nothing in these tests looks them up.
NAMED = image_builder.Registries(
    apt=("apt.registry.invalid",), pip=("pypi.registry.invalid",),
    npm=("npm.registry.invalid",), pip_index="http://pypi.registry.invalid/simple",
    npm_registry="http://npm.registry.invalid/")

#: What a step's sandbox can reach: its interfaces, routes, and the route to TEST-NET-1 (a
#: UDP connect picks a route and a source address; it sends nothing).
NETWORK = """
import errno, json, socket
try:
    routes = [line.split()[:2] for line in open("/proc/net/route").read().splitlines()[1:]]
except OSError as exc:
    routes = [errno.errorcode[exc.errno]]
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    probe.connect(("192.0.2.1", 9))
    route = probe.getsockname()[0]
except OSError as exc:
    route = errno.errorcode[exc.errno]
print(json.dumps({"interfaces": sorted(n for _, n in socket.if_nameindex()),
                  "routes": routes, "route": route}))
"""
NO_ROUTE = ("ENETUNREACH", "EHOSTUNREACH")

#: What a sandbox of the hostile image sees of what the step left.
IMAGE_FACTS = r"""
import errno, json, os
H = "/hostile"
def attempt(action):
    try:
        return action()
    except OSError as exc:
        return errno.errorcode[exc.errno]
def read(path):
    with open(path) as f:
        return f.read()
print(json.dumps({
    "modes": {n: oct(os.stat(f"{H}/{n}").st_mode & 0o7777)
              for n in ("suid-sh", "sgid-sh", "suid-hard")},
    "links": {n: os.readlink(f"{H}/{n}")
              for n in ("shadow-link", "data-link", "sentinel-link", "sentinel-up")},
    "shadow": attempt(lambda: read(f"{H}/shadow-link")),
    "data": attempt(lambda: sorted(os.listdir(f"{H}/data-link"))),
    "sentinel": attempt(lambda: read(f"{H}/sentinel-link")),
    "sentinel_up": attempt(lambda: read(f"{H}/sentinel-up")),
    "capability": attempt(lambda: os.getxattr(f"{H}/capable", "security.capability").hex()),
}))
"""


@dataclass(frozen=True)
class StepSandbox:
    """A build step's sandbox, as the node started it, and the network it had."""

    policy: NetworkPolicy
    cgroup: str
    directory: Path
    network: dict[str, Any]


@dataclass
class Builder:
    """A node of its own (empty registries), driven through a blocking portal; every
    step sandbox it starts is recorded, and probed for its network before the step runs."""

    portal: BlockingPortal
    node: Node
    sentinel: Path
    steps: list[StepSandbox] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.node.settings.data_dir

    def build(self, spec: ImageSpec, runtime: str, *, context: Path | None = None,
              registries: image_builder.Registries = EMPTY) -> Manifest:
        return self.portal.call(functools.partial(
            image_builder.build, self.node, spec, context=context, runtime=runtime,
            registries=registries, resources=self.node.settings.build_resources))

    def start(self, image: str, runtime: str) -> SyncNodeSandbox:
        sandbox = self.portal.call(functools.partial(self.node.create, image,
                                                     runtime=runtime, timeout=300))
        return SyncNodeSandbox(sandbox, self.portal)

    def layer(self, key: str) -> Path:
        return self.node.images.built.layer_path(key)

    def watch_steps(self) -> None:
        start = self.node.start_for_build

        async def started(image: Any, **kwargs: Any) -> NodeSandbox:
            sandbox = await start(image, **kwargs)
            try:
                probed = await sandbox.commands.run(["python3", "-B", "-c", NETWORK],
                                                    user=0, timeout=60)
                assert probed.exit_code == 0, probed.stderr
            except BaseException:
                await sandbox.kill()
                raise
            spec = sandbox.handle.spec
            self.steps.append(StepSandbox(kwargs["policy"], spec.cgroup, spec.directory,
                                          json.loads(probed.stdout)))
            return sandbox

        setattr(self.node, "start_for_build", started)  # noqa: B010 - on this node alone


@pytest.fixture(scope="module")
def builder(python_image: str) -> Iterator[Builder]:
    with sandbox_data_dir("corral-sec-build-") as data_dir, start_blocking_portal() as portal:
        sentinel = data_dir.parent / f"corral-sec-build-sentinel-{uuid.uuid4().hex}"
        sentinel.mkdir()
        (sentinel / "file").write_text(f"host-secret-{uuid.uuid4().hex}")
        node = Node(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR, registries=EMPTY))
        portal.call(node.start)
        try:
            made = Builder(portal, node, sentinel)
            made.watch_steps()
            yield made
        finally:
            portal.call(node.close)
            shutil.rmtree(sentinel)


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (but the ``skip`` subtrees): kind, mode, owner, inode,
    times, links, attributes and content; nothing followed."""
    found: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if relative.startswith(skip):
                continue
            info = os.lstat(path)
            content: object = b""
            if stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            found[relative] = (info.st_mode, info.st_uid, info.st_gid, info.st_ino,
                               info.st_mtime_ns, info.st_nlink, content,
                               sorted(os.listxattr(path, follow_symlinks=False)))
    return found


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Hostile:
    """The hostile step's build on one runtime: what it reported, its layer, its sandbox,
    and the host as it was before and after."""

    runtime: str
    marker: str
    manifest: Manifest
    report: dict[str, Any]
    layer: Path
    step: StepSandbox
    host_before: dict[str, object]
    host_after: dict[str, object]


def _host_view(built: Builder, image_passwd: Path) -> dict[str, object]:
    """What the step aims at outside the layer store."""
    # Sandboxes come and go in their folder (which then holds none: see
    # test_no_process_of_the_step_survives); the layer store is the build's to change.
    return {"data dir": snapshot(built.data_dir, skip=("built", "sandboxes")),
            "sandboxes": os.listdir(built.data_dir / "sandboxes"),
            "sentinel": snapshot(built.sentinel),
            "shadow": _sha(Path("/etc/shadow")),
            "image passwd": (_sha(image_passwd), os.lstat(image_passwd).st_nlink,
                             os.lstat(image_passwd).st_ino)}


@pytest.fixture(scope="module")
def hostile(builder: Builder, runtime: str) -> Hostile:
    marker = f"corral-survivor-{uuid.uuid4().hex}"
    argument = json.dumps({"data_dir": str(builder.data_dir), "sentinel": str(builder.sentinel),
                           "marker": marker})
    spec = ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "run", "command": ["python3", "-c", (PROGRAMS / "build_step.py").read_text(),
                                    argument]}]})
    image_passwd = builder.node.images.get("python").rootfs / "etc" / "passwd"
    before = _host_view(builder, image_passwd)
    count = len(builder.steps)
    manifest = builder.build(spec, runtime)
    after = _host_view(builder, image_passwd)
    [step] = builder.steps[count:]
    layer = builder.layer(manifest.layers[0])
    report = json.loads((layer / "hostile" / "report.json").read_text())
    assert report["survivors started"], f"the hostile step itself broke: {report}"
    return Hostile(runtime, marker, manifest, report, layer, step, before, after)


def _walk(tree: Path) -> Iterator[tuple[str, os.stat_result]]:
    yield str(tree), os.lstat(tree)
    for directory, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            yield path, os.lstat(path)


# -- the layer -------------------------------------------------------------------------------


def test_the_layer_keeps_no_privilege_device_or_socket(hostile: Hostile) -> None:
    """No device but whiteouts, no socket, no setuid or setgid file, no file capability, no
    ``trusted.*`` attribute but an opaque folder's, no owner outside the image's range."""
    found = []
    for path, info in _walk(hostile.layer):
        mode = info.st_mode
        if stat.S_ISBLK(mode) or (stat.S_ISCHR(mode) and info.st_rdev != 0):
            found.append(f"device {path}")
        if stat.S_ISSOCK(mode):
            found.append(f"socket {path}")
        if not stat.S_ISDIR(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(f"setuid/setgid {path} {oct(mode)}")
        for attribute in os.listxattr(path, follow_symlinks=False):
            if attribute == "security.capability" or (
                    attribute.startswith("trusted.") and attribute != "trusted.overlay.opaque"):
                found.append(f"{attribute} on {path}")
        if not (0 <= info.st_uid < 65536 and 0 <= info.st_gid < 65536):
            found.append(f"owner {info.st_uid}:{info.st_gid} of {path}")
    assert found == [], found
    # Not vacuous: the step's files are there, the bits and attributes dropped from them.
    hostile_dir = hostile.layer / "hostile"
    for name in ("suid-sh", "sgid-sh", "suid-hard", "capable"):
        assert stat.S_IMODE(os.lstat(hostile_dir / name).st_mode) == 0o755, name
    # (Whether its mknod calls worked or not, no device is kept: checked above.)
    report = hostile.report
    assert report["bind sock"] == "ok", report
    if report["user.corral on capable"] == "ok":  # harmless attributes are kept
        assert os.getxattr(hostile_dir / "capable", "user.corral") == b"kept"


def test_links_stay_links_and_hard_links_stay_inside(hostile: Hostile,
                                                     builder: Builder) -> None:
    """``cp -a`` followed no link: each is still a link naming the host path it named;
    every hard link's names are all in the layer."""
    hostile_dir = hostile.layer / "hostile"
    expected = {"shadow-link": "/etc/shadow", "data-link": str(builder.data_dir),
                "sentinel-link": f"{builder.sentinel}/file",
                "sentinel-up": "../" * 16 + str(builder.sentinel).lstrip("/") + "/file"}
    for name, target in expected.items():
        assert stat.S_ISLNK(os.lstat(hostile_dir / name).st_mode), name
        assert os.readlink(hostile_dir / name) == target, name
    names: dict[tuple[int, int], list[str]] = {}
    for path, info in _walk(hostile.layer):
        if not stat.S_ISDIR(info.st_mode):
            names.setdefault((info.st_dev, info.st_ino), []).append(path)
    for path, info in _walk(hostile.layer):
        if not stat.S_ISDIR(info.st_mode):
            assert info.st_nlink == len(names[(info.st_dev, info.st_ino)]), path
    assert os.lstat(hostile_dir / "suid-hard").st_ino == os.lstat(hostile_dir / "suid-sh").st_ino
    assert hostile.report["hard link to the image"] == "ok"
    assert os.lstat(hostile_dir / "passwd-hard").st_nlink == 2  # with the layer's etc/passwd


def test_owners_are_shifted_from_the_sandboxs_root_not_from_its_upper_folder(
        hostile: Hostile) -> None:
    """The step chowned its own ``/`` (its overlay's upper folder): the ids of its files are
    still shifted back from its sandbox's root, so they keep the owners it gave them."""
    assert hostile.report["chown /"] == "ok"
    for uid in (1000, 65534):
        info = os.lstat(hostile.layer / "hostile" / f"owned-{uid}")
        assert (info.st_uid, info.st_gid) == (uid, uid)
    info = os.lstat(hostile.layer / "hostile" / "report.json")
    assert (info.st_uid, info.st_gid) == (0, 0)
    assert os.lstat(hostile.layer).st_uid == 65534


# -- the host --------------------------------------------------------------------------------


def test_nothing_outside_the_layer_store_changed(hostile: Hostile, builder: Builder,
                                                 canary: Canary) -> None:
    """The data dir (but its layer store), a folder beside it, the host's /etc/shadow and
    the image file the step hard-linked are as they were; the writes through links landed
    in the step's own tree."""
    before, after = hostile.host_before, hostile.host_after
    for what in before:
        assert after[what] == before[what], f"{what} changed"
    assert not (builder.data_dir / "pwned").exists()
    assert (builder.sentinel / "file").read_text().startswith("host-secret-")
    assert hostile.report["write through sentinel-link"] == "ok"
    canary.assert_intact()


def test_no_process_of_the_step_survives(hostile: Hostile) -> None:
    """Processes the step left running (one kept writing after its command returned) are
    frozen, then killed with their sandbox: its cgroups, its folder and its processes are
    gone."""
    written = [int(line) for line in
               (hostile.layer / "var" / "tmp" / "bg").read_text().split()]
    assert max(written) > hostile.report["ended_ns"], "the writer did not outlive the step"
    step = hostile.step
    left = [str(base / "corral" / step.cgroup) for base in cgroup_layout().hierarchies
            if (base / "corral" / step.cgroup).exists()]
    assert left == [], f"the step's cgroups are still there: {left}"
    assert not step.directory.exists()
    sandbox_id = step.cgroup.rsplit("/", 1)[-1]
    survivors = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cgroups = (proc / "cgroup").read_text()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state in ("Z", "X"):
            continue  # dead, not yet reaped by its parent (the node, for runsc's)
        if hostile.marker.encode() in cmdline or sandbox_id in cgroups:
            survivors.append(f"{proc.name} ({state}): {cmdline[:200]!r}")
    assert survivors == [], survivors


# -- the network -----------------------------------------------------------------------------


def test_a_run_step_without_registries_has_no_network(hostile: Hostile) -> None:
    for seen in (hostile.report["network"], hostile.step.network):
        assert seen["interfaces"] == ["lo"], seen
        assert seen["routes"] == [] and seen["route"] in NO_ROUTE, seen
    assert not hostile.step.policy.enabled


def test_workdir_and_copy_steps_have_no_network(builder: Builder, runtime: str,
                                                tmp_path: Path) -> None:
    """With registries, the ``run`` step of the same build has a network (the probe sees
    one where there is one); its ``workdir`` and ``copy`` steps have none."""
    (tmp_path / "data.txt").write_text("data\n")
    spec = ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "env", "env": {"BUILT_ON": runtime}},
        {"kind": "run", "command": "true"},
        {"kind": "workdir", "path": "/wd"},
        {"kind": "copy", "sources": ["data.txt"], "destination": "/wd/"}]})
    count = len(builder.steps)
    builder.build(spec, runtime, context=tmp_path, registries=NAMED)
    run, workdir, copy = builder.steps[count:]
    assert run.policy.enabled and set(run.network["interfaces"]) > {"lo"}, run
    assert run.network["routes"] and run.network["route"] not in NO_ROUTE, run
    for step in (workdir, copy):
        assert not step.policy.enabled, step
        assert step.network["interfaces"] == ["lo"], step
        assert step.network["routes"] == [] and step.network["route"] in NO_ROUTE, step


# -- a sandbox of the image ------------------------------------------------------------------


def test_a_sandbox_of_the_image_gets_nothing_from_the_layer(hostile: Hostile,
                                                            builder: Builder) -> None:
    """No setuid bit, no capability; links resolve in the sandbox's own tree; a fifo the
    layer keeps is no channel between two sandboxes of the image."""
    image_shadow = (builder.node.images.get("python").rootfs / "etc" / "shadow").read_text()
    with builder.start(hostile.manifest.id, hostile.runtime) as one, \
            builder.start(hostile.manifest.id, hostile.runtime) as other:
        result = one.commands.run(["python3", "-c", IMAGE_FACTS], user="root", timeout=60)
        assert result.exit_code == 0, result.stderr
        facts = json.loads(result.stdout)
        assert set(facts["modes"].values()) == {"0o755"}, facts["modes"]
        assert facts["links"]["data-link"] == str(builder.data_dir)
        assert facts["shadow"] == image_shadow  # the image's, never the host's
        # The step's own copy of the data dir's path (or none), not the host's data dir.
        assert facts["data"] in ("ENOENT", ["pwned"]), facts["data"]
        assert facts["sentinel"] in ("ENOENT", "pwned"), facts["sentinel"]
        assert facts["sentinel_up"] == facts["sentinel"]
        assert facts["capability"] in ("ENODATA", "EOPNOTSUPP"), facts["capability"]
        for shell in ("suid-sh", "sgid-sh", "suid-hard"):
            ids = one.commands.run([f"/hostile/{shell}", "-p", "-c", "id -u; id -g"],
                                   user="user", timeout=60)
            assert ids.stdout == "1000\n1000\n", (shell, ids.stdout, ids.stderr)
        fifo = hostile.layer / "hostile" / "fifo"
        if os.path.lexists(fifo) and stat.S_ISFIFO(os.lstat(fifo).st_mode):
            _fifo_is_no_channel(one, other)  # (gVisor's fifos live in its Sentry alone)


FIFO_WRITE = """
import os, subprocess, sys
subprocess.Popen(["python3", "-c", "import os, time\\n"
                  "fd = os.open('/hostile/fifo', os.O_RDWR)\\n"
                  "os.write(fd, b'from-one')\\n"
                  "open('/tmp/fifo-written', 'w').close()\\n"
                  "time.sleep(120)"], start_new_session=True, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""
FIFO_READ = """
import errno, os, time
deadline = time.monotonic() + 30
while not os.path.exists("/tmp/fifo-written") and time.monotonic() < deadline:
    time.sleep(0.05)
fd = os.open("/hostile/fifo", os.O_RDONLY | os.O_NONBLOCK)
try:
    print(os.read(fd, 100).decode() or "EOF")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


def _fifo_is_no_channel(one: SyncNodeSandbox, other: SyncNodeSandbox) -> None:
    assert one.commands.run(["python3", "-c", FIFO_WRITE], timeout=60).exit_code == 0
    other.files.write("/tmp/fifo-written", b"")  # the other has no writer: no wait there
    heard = other.commands.run(["python3", "-c", FIFO_READ], timeout=60).stdout.strip()
    assert heard in ("EOF", "EAGAIN"), heard
    own = one.commands.run(["python3", "-c", FIFO_READ], timeout=60).stdout.strip()
    assert own == "from-one", own  # the write went through, in its own sandbox alone


# -- tenants, over the API ---------------------------------------------------------------


def test_another_tenant_can_neither_use_nor_see_an_image(
        server: Server) -> None:  # noqa: F811 - the imported fixture
    alpha = server.sdk()
    beta = {"url": server.url, "api_key": server.other_key}
    mine = Image.base("python").workdir("/alpha-only").build(name="sec-private:1", **alpha)
    unknown = f"sec-none-{uuid.uuid4().hex[:8]}:1"
    with server.http(server.other_key) as http:
        for ref in ("sec-private:1", mine.id):
            with pytest.raises(NotFoundError):
                Sandbox.create(ref, **beta)
            with pytest.raises(NotFoundError):
                Image.base(ref).workdir("/beta").build(**beta)
            assert_error(http.get(f"/v1/images/{ref}"), 404, "not_found")
            assert_error(http.delete(f"/v1/images/{ref}"), 404, "not_found")
            built = http.post("/v1/images", json={"spec": {"base": ref, "steps": []}})
            # Said as of a name that never existed: nothing tells beta alpha's exists.
            assert (assert_error(built, 404, "not_found")
                    == assert_error(http.post("/v1/images", json={"spec": {
                        "base": unknown, "steps": []}}), 404, "not_found")
                    .replace(unknown, ref))
        listing = http.get("/v1/images")
        assert listing.status_code == 200
        assert mine.id not in listing.text and "sec-private" not in listing.text
        # Beta's own image of that name is beta's; alpha's name still names alpha's.
        theirs = Image.base("python").workdir("/beta-only").build(name="sec-private:1",
                                                                   **beta)
        assert theirs.id != mine.id
        assert http.get("/v1/images/sec-private:1").json()["id"] == theirs.id
        assert http.delete("/v1/images/sec-private:1").status_code == 204
    with server.http(server.key) as http:
        assert http.get("/v1/images/sec-private:1").json()["id"] == mine.id
        assert http.get(f"/v1/images/{mine.id}").status_code == 200


class _Opens:
    """Whether anything opens or reads the watched paths (inotify, on the host)."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, *paths: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        for path in paths:
            watch = libc.inotify_add_watch(self.fd, bytes(path), self.IN_OPEN | self.IN_ACCESS)
            assert watch >= 0, os.strerror(ctypes.get_errno())

    def events(self) -> bytes:
        try:
            return os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.fd)


def _context_tar(sentinel: Path) -> bytes:
    def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "",
               data: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data)
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        return info, data

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in (
                member("data.txt", data=b"in the context\n"),
                member("inside", tarfile.SYMTYPE, "data.txt"),
                member("leak", tarfile.SYMTYPE, "/etc/shadow"),
                member("chain", tarfile.SYMTYPE, "leak"),
                member("out", tarfile.SYMTYPE, str(sentinel)),
                member("up", tarfile.SYMTYPE, "../" * 16 + f"{sentinel}/file".lstrip("/")),
                member("app", tarfile.DIRTYPE),
                member("app/ok.txt", data=b"ok\n"),
                member("app/leak", tarfile.SYMTYPE, f"{sentinel}/file")):
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def test_a_copy_through_a_link_out_of_the_context_is_refused(
        server: Server, server_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """The context holds links out of it (to /etc/shadow, to a host folder, up with
    ``..``, a link to such a link, one inside a copied folder): each copy is refused when
    the build starts, naming the link, before anything is read through it or any step
    runs; a link that stays inside is copied as a link."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_text(secret := f"context-secret-{uuid.uuid4().hex}")
    layers = server_dir / "built" / "layers"
    with server.http(server.key) as http:
        uploaded = http.post("/v1/images/contexts", content=_context_tar(sentinel),
                             headers={"Content-Type": "application/x-tar"})
        assert uploaded.status_code == 201, uploaded.text
        context = uploaded.json()["id"]

        def copy(*sources: str) -> httpx.Response:
            return http.post("/v1/images", json={"context": context, "spec": {
                "base": "python", "steps": [{"kind": "copy", "sources": list(sources),
                                             "destination": "/srv/"}]}})

        before = sorted(os.listdir(layers)) if layers.is_dir() else []
        opens = _Opens(sentinel, sentinel / "file")
        try:
            for source, named in (("out/file", "out/file"), ("up", "up"), ("leak", "leak"),
                                  ("chain", "chain"), ("app", "app/leak"),
                                  ("data.txt", "leak")):  # ...and one good source beside it
                sources = (source, "leak") if source == "data.txt" else (source,)
                answer = copy(*sources)
                assert opens.events() == b"", f"copying {source!r} read through its link"
                message = assert_error(answer, 400, "invalid_argument")
                assert f"{named!r} leads out of the build context" in message, message
                assert secret not in message
        finally:
            opens.close()
        assert (sorted(os.listdir(layers)) if layers.is_dir() else []) == before
        with server.http(server.other_key) as other:  # a context is its tenant's alone
            theirs = other.post("/v1/images", json={"context": context, "spec": {
                "base": "python", "steps": [{"kind": "copy", "sources": ["data.txt"],
                                             "destination": "/srv/"}]}})
            assert_error(theirs, 404, "not_found")
        events = [json.loads(line) for line in copy("data.txt", "inside").iter_lines()
                  if line]
        assert events[-1]["type"] == "done", events[-1]
    manifest = LayerStore(server_dir / "built").manifest(events[-1]["image"]["id"])
    copied = LayerStore(server_dir / "built").layer_path(manifest.layers[-1]) / "srv"
    assert (copied / "data.txt").read_text() == "in the context\n"
    assert os.readlink(copied / "inside") == "data.txt"
