"""Image builds on a real node: every step in a sandbox of its own, its changes kept as a
layer, and sandboxes started from the built image's id.

The node's builds reach only the test internet's package index (``pypi.test``, see
corral.bench.testnet) and its apt repository (``apt.test``, the node's only apt source),
through its resolver: no step sends a packet anywhere else. The main
image is built once per runtime and shared by the module's tests; each test that needs a
build of its own keeps it to a step or two.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from corral.api.errors import InvalidArgumentError, NotFoundError
from corral.api.image_spec import ImageSpec, parse_dockerfile, step_keys
from corral.api.network import NetOperator
from corral.bench.testnet import APT_LINE, APT_PACKAGE, APT_SOURCE, PORT, RESOLVER, internet
from corral.node import Node, NodeSettings
from corral.node.builder import BuildError, BuildEvent, Registries
from corral.node.layers import Manifest, PruneResult
from corral.node.sync import SyncNodeSandbox

from ..conftest import IMAGE_DIR, runtime_params, sandbox_data_dir

pytestmark = pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0,
                                reason="needs root and nftables (scripts/install installs it)")

#: The test internet's index and apt repository alone: no other registry, so no step can
#: reach one (an apt step reaches ``apt.test`` through its source line alone).
REGISTRIES = Registries(apt=(), npm=(), pip=(f"pypi.test:{PORT}",),
                        pip_index=f"http://pypi.test:{PORT}/simple",
                        npm_registry=f"http://pypi.test:{PORT}/npm", apt_sources=(APT_SOURCE,))

#: A first step that deletes a file (a whiteout), replaces a folder (an opaque folder) and
#: leaves a setuid binary (which the layer must not keep).
SETUP = ("echo built > /etc/built && rm /etc/hostname"
         " && rm -rf /etc/skel && mkdir /etc/skel && echo only > /etc/skel/only"
         " && cp /bin/true /usr/local/bin/suid && chmod 4755 /usr/local/bin/suid")

#: What a sandbox of the main image sees, as JSON.
FACTS = r"""
import json, os, corral_demo
def owner(path):
    info = os.lstat(path)
    return f"{info.st_uid}:{info.st_gid}"
print(json.dumps({
    "built": open("/etc/built").read(),
    "hostname": os.path.lexists("/etc/hostname"),
    "skel": sorted(os.listdir("/etc/skel")),
    "suid": oct(os.stat("/usr/local/bin/suid").st_mode & 0o7777),
    "demo": corral_demo.VALUE,
    "greeting": os.environ.get("GREETING"),
    "built_with": os.environ.get("BUILT_WITH"),
    "cwd": os.getcwd(),
    "app": sorted(os.path.relpath(os.path.join(d, n), "/app")
                  for d, ds, fs in os.walk("/app") for n in ds + fs),
    "owners": {p: owner(p) for p in ("/app", "/app/main.py", "/app/sub", "/app/sub/keep.txt",
                                     "/data/data.txt", "/home/user/mine", "/var/tmp/by-user")},
    "data": open("/data/data.txt").read(),
    "uid": open("/var/tmp/by-user/uid").read(),
}))
"""


def main_spec(runtime: str, last: str = "echo one") -> ImageSpec:
    """The main image: every kind of step but apt and npm. Its first step names the
    runtime, so that each runtime's build makes layers of its own."""
    return ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "env", "env": {"BUILT_WITH": runtime}},
        {"kind": "run", "command": SETUP},
        {"kind": "pip", "packages": ["corral-demo"]},
        {"kind": "env", "env": {"GREETING": "hello there"}},
        {"kind": "workdir", "path": "/app"},
        {"kind": "copy", "sources": ["app"], "destination": "/app", "ignore": ["*.log"],
         "chown": "user"},
        {"kind": "copy", "sources": ["data.txt"], "destination": "/data/"},
        {"kind": "user", "user": "user"},
        {"kind": "run", "command": "touch /home/user/mine && mkdir /var/tmp/by-user"
                                   " && id -u > /var/tmp/by-user/uid"},
        {"kind": "run", "command": last},
    ]})


@dataclasses.dataclass
class Builder:
    """A started node, driven from the test's thread through a blocking portal."""

    portal: BlockingPortal
    node: Node
    context: Path

    def build(self, spec: ImageSpec, *, runtime: str | None = None,
              context: Path | None = None) -> tuple[Manifest, list[BuildEvent]]:
        events: list[BuildEvent] = []
        manifest = self.portal.call(functools.partial(
            self.node.build_image, spec, context=context or self.context, runtime=runtime,
            on_event=events.append))
        return manifest, events

    def start(self, image: str, runtime: str | None = None) -> SyncNodeSandbox:
        sandbox = self.portal.call(functools.partial(self.node.create, image,
                                                     runtime=runtime, timeout=600))
        return SyncNodeSandbox(sandbox, self.portal)

    def prune(self, keep: set[str]) -> PruneResult:
        return self.portal.call(self.node.prune_images, keep)

    def layer(self, key: str) -> Path:
        return self.node.images.built.layer_path(key)

    def layer_dirs(self) -> list[str]:
        return sorted(os.listdir(self.node.images.built.layers_dir))


def cached_flags(events: list[BuildEvent]) -> list[bool]:
    return [event.cached for event in events if event.kind == "step"]


def make_context(root: Path) -> Path:
    (root / "app" / "sub").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hello from app')\n")
    (root / "app" / "notes.log").write_text("ignored\n")
    (root / "app" / "sub" / "keep.txt").write_text("kept\n")
    (root / "app" / "sub" / "skip.log").write_text("ignored too\n")
    (root / "data.txt").write_text("some data\n")
    return root


@contextmanager
def started_builder(prefix: str, context: Path) -> Iterator[Builder]:
    """A node on a data dir of its own, its builds pointed at the test internet (which the
    caller runs)."""
    with sandbox_data_dir(prefix) as data_dir, start_blocking_portal() as portal:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR,
                                network=NetOperator.parse(dns=RESOLVER), registries=REGISTRIES)
        node = Node(settings)
        portal.call(node.start)
        try:
            yield Builder(portal, node, context)
        finally:
            portal.call(node.close)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_context(tmp_path_factory.mktemp("context"))


@pytest.fixture(scope="module")
def builder(python_image: str, context: Path) -> Iterator[Builder]:
    with internet(), started_builder("corral-test-build-", context) as built:
        yield built


@dataclasses.dataclass
class Built:
    runtime: str
    manifest: Manifest
    events: list[BuildEvent]


@pytest.fixture(scope="module", params=runtime_params())
def main_image(request: pytest.FixtureRequest, builder: Builder) -> Built:
    runtime = str(request.param)
    manifest, events = builder.build(main_spec(runtime), runtime=runtime)
    return Built(runtime, manifest, events)


# -- a build, and what its image's sandboxes see --------------------------------------------------

def test_the_first_build_runs_every_step(main_image: Built) -> None:
    events = main_image.events
    steps = [e for e in events if e.kind == "step"]
    assert [(e.step, e.total) for e in steps] == [(n, 10) for n in range(1, 11)]
    # env and user steps make no layer: "cached" from the start; every other step ran.
    assert cached_flags(events) == [True, False, False, True, False, False, False, True,
                                    False, False]
    assert steps[2].text == "PIP install corral-demo"
    logs = [e.text for e in events if e.kind == "log"]
    assert any("corral-demo" in line and "Successfully installed" in line for line in logs)
    assert any(line.startswith("step 3 done in") for line in logs)
    assert events[-1].kind == "done" and events[-1].image == main_image.manifest.id
    assert len(main_image.manifest.layers) == 7  # ten steps less two env and a user


def test_a_sandbox_of_the_image_sees_every_step(builder: Builder, main_image: Built) -> None:
    with builder.start(main_image.manifest.id, main_image.runtime) as sb:
        result = sb.commands.run(["python3", "-c", FACTS], timeout=60)
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["built"] == "built\n"
    assert facts["hostname"] is False  # the step's deletion: a whiteout in its layer
    assert facts["skel"] == ["only"]  # a folder replaced: an opaque folder
    assert facts["suid"] == "0o755"  # the setuid bit did not survive into the layer
    assert facts["demo"] == 42
    assert (facts["greeting"], facts["built_with"]) == ("hello there", main_image.runtime)
    assert facts["cwd"] == "/app"
    assert facts["app"] == ["main.py", "sub", "sub/keep.txt"]  # *.log ignored, at any depth
    assert facts["data"] == "some data\n"
    owners = facts["owners"]
    assert owners.pop("/app") == owners.pop("/data/data.txt") == "0:0"
    assert set(owners.values()) == {"1000:1000"}, owners  # --chown user, and `user` steps
    assert facts["uid"] == "1000\n"


def test_layers_hold_the_steps_own_changes(builder: Builder, main_image: Built) -> None:
    """On the host: a namespaces sandbox's ids shifted back into the image's own; no file
    of the sandbox's start (the channel's mount point, the node's resolver)."""
    layers = main_image.manifest.layers
    mine = os.lstat(builder.layer(layers[-2]) / "home" / "user" / "mine")
    assert (mine.st_uid, mine.st_gid) == (1000, 1000)
    setup = builder.layer(layers[0])
    assert os.lstat(setup).st_uid == 0
    assert (setup / "etc" / "built").read_text() == "built\n"
    for key in layers:
        diff = builder.layer(key)
        assert not os.path.lexists(diff / ".corral-run"), key
        assert not os.path.lexists(diff / "etc" / "resolv.conf"), key


def test_the_manifest_records_the_image(main_image: Built) -> None:
    manifest = main_image.manifest
    assert (manifest.base, manifest.workdir, manifest.user) == ("python", "/app", "user")
    env = dict(manifest.env)
    assert env["GREETING"] == "hello there" and env["BUILT_WITH"] == main_image.runtime
    assert "PIP_INDEX_URL" not in env  # a step's own environment stays the step's
    assert manifest.steps[1].startswith("RUN echo built") and len(manifest.steps) == 10
    assert manifest.size_bytes > 0


# -- the cache -------------------------------------------------------------------------------------

def test_a_rebuild_is_all_cached(builder: Builder, main_image: Built) -> None:
    manifest, events = builder.build(main_spec(main_image.runtime), runtime=main_image.runtime)
    assert manifest.id == main_image.manifest.id
    assert cached_flags(events) == [True] * 10
    assert [e for e in events if e.kind == "log"] == []  # no step ran


def test_changing_the_last_step_reruns_it_alone(builder: Builder, main_image: Built) -> None:
    spec = main_spec(main_image.runtime, last="echo two")
    manifest, events = builder.build(spec, runtime=main_image.runtime)
    assert cached_flags(events) == [True] * 9 + [False]
    assert {e.step for e in events if e.kind == "log"} == {10}
    assert manifest.id != main_image.manifest.id
    assert manifest.layers[:-1] == main_image.manifest.layers[:-1]
    assert manifest.layers[-1] != main_image.manifest.layers[-1]


def test_a_build_on_a_built_image(builder: Builder, main_image: Built) -> None:
    spec = ImageSpec.model_validate({"base": main_image.manifest.id, "steps": [
        {"kind": "run", "command": "echo child > /home/user/child && id -un"}]})
    child, events = builder.build(spec, runtime=main_image.runtime)
    assert cached_flags(events) == [False]
    assert child.layers[:-1] == main_image.manifest.layers
    assert (child.user, child.workdir) == ("user", "/app")  # the parent's, inherited
    assert child.env == main_image.manifest.env
    assert "user" in [e.text for e in events if e.kind == "log"]  # it ran as the image's user
    with builder.start(child.id, main_image.runtime) as sb:
        result = sb.commands.run("cat /home/user/child /etc/built; stat -c %u "
                                 "/home/user/child; echo $GREETING", timeout=60)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "child\nbuilt\n1000\nhello there\n"


def test_an_apt_step_installs_from_the_operators_sources(builder: Builder,
                                                         runtime: str) -> None:
    """The step reads the operator's sources alone (the image's own name deb.debian.org,
    which it cannot reach), and leaves neither them nor the lists in its layer."""
    spec = ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "env", "env": {"BUILT_WITH": runtime}},
        {"kind": "apt", "packages": [APT_PACKAGE]}]})
    manifest, events = builder.build(spec, runtime=runtime)
    assert cached_flags(events) == [True, False]
    logs = [e.text for e in events if e.kind == "log"]
    assert any(f"http://apt.test:{PORT}/apt ./ Packages" in line for line in logs), logs
    assert not [line for line in logs if "debian.org" in line]
    layer = builder.layer(manifest.layers[0])
    assert (layer / "usr" / "bin" / APT_PACKAGE).is_file()
    names = [name for _, dirs, files in os.walk(layer) for name in dirs + files]
    assert not [name for name in names if "corral-apt" in name or "apt.test" in name]
    assert not os.path.lexists(layer / "etc" / "apt")  # the image's sources untouched
    base_sources = builder.node.images.get("python").rootfs / "etc" / "apt" / "sources.list"
    with builder.start(manifest.id, runtime) as sb:
        result = sb.commands.run(f"{APT_PACKAGE}; cat /etc/apt/sources.list;"
                                 " ls -A /etc/apt/sources.list.d /var/tmp", timeout=60)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (f"{APT_LINE}\n{base_sources.read_text()}"
                             "/etc/apt/sources.list.d:\n\n/var/tmp:\n")


# -- what a build refuses -------------------------------------------------------------------------

def test_a_failing_run_stops_the_build(builder: Builder) -> None:
    spec = ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "env", "env": {"A": "1"}},
        {"kind": "run", "command": "echo to-stdout; echo to-stderr >&2; exit 3"},
        {"kind": "run", "command": "echo never"}]})
    before = builder.layer_dirs()
    with pytest.raises(BuildError) as failed:
        builder.build(spec)
    message = failed.value.message
    assert message.startswith("step 2 (RUN echo to-stdout; echo to-stderr >&2; exit 3) "
                              "failed with exit status 3:")
    assert "to-stdout" in message and "to-stderr" in message
    assert builder.layer_dirs() == before  # no layer of a failed step, and none after it


def test_an_unknown_base(builder: Builder) -> None:
    for base in ("no-such-image", "sha256:" + "0" * 64):
        with pytest.raises(NotFoundError):
            builder.build(ImageSpec.model_validate(
                {"base": base, "steps": [{"kind": "run", "command": "true"}]}))


def test_copies_need_their_files(builder: Builder, tmp_path: Path) -> None:
    before = builder.layer_dirs()
    missing = ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "run", "command": "echo first"},
        {"kind": "copy", "sources": ["data.txt", "missing.txt"], "destination": "/x/"}]})
    with pytest.raises(InvalidArgumentError) as failed:
        builder.build(missing)
    assert "missing.txt" in failed.value.message
    with pytest.raises(InvalidArgumentError) as failed:
        builder.build(missing, context=tmp_path)  # an empty context
    assert "data.txt" in failed.value.message
    no_context = ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "copy", "sources": ["data.txt"], "destination": "/x/"}]})
    with pytest.raises(InvalidArgumentError) as failed:
        builder.portal.call(builder.node.build_image, no_context)
    assert "context" in failed.value.message
    assert builder.layer_dirs() == before  # refused before any step ran


# -- Dockerfiles, users, tenants --------------------------------------------------------------

DOCKERFILE = """\
FROM python
RUN echo from-dockerfile > /etc/from-dockerfile
WORKDIR /srv
COPY data.txt ./
ENV MODE=production
USER user
CMD ["python3", "-m", "http.server", "8080"]
"""


def test_a_dockerfile_builds(builder: Builder) -> None:
    manifest, events = builder.build(parse_dockerfile(DOCKERFILE))
    assert cached_flags(events) == [False, False, False, True, True]
    assert manifest.cmd == ("python3", "-m", "http.server", "8080")
    assert manifest.entrypoint is None
    assert dict(manifest.env)["MODE"] == "production"
    assert (manifest.workdir, manifest.user) == ("/srv", "user")
    assert manifest.steps == ("RUN echo from-dockerfile > /etc/from-dockerfile",
                              "WORKDIR /srv", "COPY data.txt /srv/", "ENV MODE=...",
                              "USER user")
    copied = builder.layer(manifest.layers[-1]) / "srv" / "data.txt"
    assert copied.read_text() == "some data\n"
    assert builder.node.images.built.manifest(manifest.id) == manifest


def test_a_user_with_a_group(builder: Builder) -> None:
    """Docker's ``USER name:group`` (the agent takes a user alone); copies after a ``user``
    step are still made as root."""
    spec = ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "user", "user": "user:users"},
        {"kind": "run", "command": "id -u > /var/tmp/ids; id -g >> /var/tmp/ids;"
                                   " id -G >> /var/tmp/ids; echo $HOME >> /var/tmp/ids"},
        {"kind": "copy", "sources": ["data.txt"], "destination": "/srv/"}]})
    manifest, _ = builder.build(spec)
    ids = builder.layer(manifest.layers[0]) / "var" / "tmp" / "ids"
    assert ids.read_text() == "1000\n100\n100\n/home/user\n"
    assert (os.lstat(ids).st_uid, os.lstat(ids).st_gid) == (1000, 100)
    copied = os.lstat(builder.layer(manifest.layers[1]) / "srv" / "data.txt")
    assert (copied.st_uid, copied.st_gid) == (0, 0)
    assert manifest.user == "user:users"


def test_two_tenants_share_a_layer(builder: Builder) -> None:
    """Two builds of the same steps at once (as two tenants would): both run the step, one
    layer is published, under the step's key, and both name it."""
    spec = ImageSpec.model_validate({"base": "python", "steps": [
        {"kind": "run", "command": "echo shared > /shared"}]})
    first: list[BuildEvent] = []
    second: list[BuildEvent] = []

    async def both() -> tuple[Manifest, Manifest]:
        return await asyncio.gather(
            builder.node.build_image(spec, on_event=first.append),
            builder.node.build_image(spec, on_event=second.append))

    one, other = builder.portal.call(both)
    assert cached_flags(first) == cached_flags(second) == [False]  # both ran the step
    assert one == other
    key = step_keys(spec, f"python@{builder.node.images.get('python').key}")[0]
    assert one.layers == (key,)
    dirs = builder.layer_dirs()
    assert dirs.count(key) == 1
    assert not [name for name in dirs if name.startswith(".new-")]
    assert (builder.layer(key) / "shared").read_text() == "shared\n"


# -- prune ------------------------------------------------------------------------------------

def test_prune(builder: Builder, context: Path) -> None:
    """On a node of its own: a prune removes every image but those kept and those a live
    sandbox runs, and every layer no remaining image names."""
    with started_builder("corral-test-prune-", context) as node:
        def one_step(text: str) -> Manifest:
            return node.build(ImageSpec.model_validate({"base": "python", "steps": [
                {"kind": "run", "command": f"echo {text} > /{text}"}]}))[0]

        running, dropped, kept = one_step("running"), one_step("dropped"), one_step("kept")
        store = node.node.images.built
        with node.start(running.id) as sb:
            result = node.prune({kept.id})
            assert (result.images, result.layers) == (1, 1) and result.bytes_freed > 0
            assert node.layer_dirs() == sorted([*running.layers, *kept.layers])
            with pytest.raises(NotFoundError):
                store.manifest(dropped.id)
            assert store.manifest(kept.id) == kept
            result = node.prune(set())
            assert (result.images, result.layers) == (1, 1)
            assert [m.id for m in store.manifests()] == [running.id]
            assert node.layer_dirs() == list(running.layers)
            assert sb.commands.run("cat /running", timeout=30).stdout == "running\n"
        assert node.prune(set()) == PruneResult(images=1, layers=1,
                                                bytes_freed=running.size_bytes)
        assert node.layer_dirs() == [] and store.manifests() == []
