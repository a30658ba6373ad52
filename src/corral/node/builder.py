"""Image builds: each step of an :class:`~corral.api.image_spec.ImageSpec` runs in a
sandbox of its own, never on the host, and leaves a layer.

A step's sandbox starts from the base image with the layers of the steps before it stacked
on top (:class:`~corral.runtime.SandboxSpec` ``layers``), on the runtime the image is for
(gVisor by default), with the build's resource limits, as the image's current user (package
installs run as root). It gets a network only when the step needs one, and then reaches
only the registries that step needs (:class:`Registries`) through the sandbox network
policy: the operator's ceilings (``--net-open``, deny lists) apply as to any sandbox.
When its command ends, with exit status 0, the sandbox runs ``sync``, is frozen, and what
it changed is copied out (less what its start put there: the agent channel's mount point,
and the node's ``/etc/resolv.conf``) and neutralised into a layer (:mod:`.layers`); then it
is killed.
A failing step stops the build with :class:`BuildError`, its output's tail and status.

Each step's layer is keyed by :func:`~corral.api.image_spec.step_keys` (its parent's key,
the step, the digest of the files a copy takes), on the base recipe's own cache key: a
step whose layer exists is not run again (a *cache hit*). ``env`` and ``user`` steps change
only what later steps and the image's sandboxes start with: they make no layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import io
import os
import shlex
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from corral.api.errors import BuildFailedError, InvalidArgumentError
from corral.api.image_spec import (CopyStep, EnvStep, ImageSpec, PackagesStep, RunStep,
                                   UserStep, WorkdirStep, context_digest, context_relative,
                                   step_keys, walk_context)
from corral.api.network import NetworkPolicy
from corral.api.resources import Resources
from corral.runtime.agent_bundle import CHANNEL_MOUNT_POINT, MOUNT_POINT
from corral.runtime.agent_bundle import agent_command
from corral.runtime.host import copy_changes

from .apt_sources import AptSource, install_script, parse_sources, split_sources
from .layers import Manifest, is_image_id

if TYPE_CHECKING:
    from .node import Node
    from .sandbox import NodeSandbox

#: Limits of one build's step sandboxes (the disk holds what one step writes).
BUILD_RESOURCES = Resources(cpus=float(min(2, os.cpu_count() or 1)), memory_mib=4096,
                            disk_mib=8192, pids=4096)
#: Longest one step may run, and a whole build, in seconds.
STEP_TIMEOUT = 1800.0
BUILD_TIMEOUT = 3600.0
#: The lines of a failing step's output its error quotes.
ERROR_TAIL_LINES = 30
#: Longest log line passed on (longer ones are cut).
MAX_LOG_LINE = 4096

EventKind = Literal["step", "log", "done"]


@dataclass(frozen=True)
class BuildEvent:
    """What a build reports as it goes: a step starting (``cached`` when its layer was
    found), a line of a step's output, or the end (``image`` is then the new id)."""

    kind: EventKind
    step: int = 0
    total: int = 0
    text: str = ""
    cached: bool = False
    seconds: float = 0.0
    image: str | None = None


OnEvent = Callable[[BuildEvent], None]


BuildError = BuildFailedError


@dataclass(frozen=True)
class Registries:
    """The package registries build steps may reach, and where each installer looks.

    ``apt``, ``pip``, ``npm``: network entries (``host`` or ``host:port``) a step of that
    kind may reach; a ``run`` step may reach all of them. ``pip_index`` and
    ``npm_registry``: the URLs the installers are pointed at (for ``pip``/``npm`` steps,
    and as ``PIP_INDEX_URL``/``NPM_CONFIG_REGISTRY`` for ``run`` steps); a ``pip`` step's
    own ``index_url`` adds its host for that step. ``apt_sources``: sources.list lines
    (``deb [trusted=yes] http://mirror.example/debian bookworm main``, checked by
    :func:`.apt_sources.parse_source`) that ``apt`` steps install from instead of the
    image's own sources; their hosts join the ``apt`` entries. Empty: the image's own.
    A ``run`` step still reads the image's sources (it may reach these hosts).
    """

    apt: tuple[str, ...] = ("deb.debian.org",)
    pip: tuple[str, ...] = ("pypi.org", "files.pythonhosted.org")
    npm: tuple[str, ...] = ("registry.npmjs.org",)
    pip_index: str = "https://pypi.org/simple"
    npm_registry: str = "https://registry.npmjs.org"
    apt_sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.sources()  # every line checked when made

    @classmethod
    def from_env(cls) -> Registries:
        """``CORRAL_BUILD_APT``, ``CORRAL_BUILD_PIP``, ``CORRAL_BUILD_NPM`` (entries,
        comma- or space-separated), ``CORRAL_BUILD_PIP_INDEX``, ``CORRAL_BUILD_NPM_REGISTRY``,
        ``CORRAL_BUILD_APT_SOURCES`` (lines separated by ``;`` or newlines); unset: the
        public registries, and the images' own apt sources."""
        default = cls()

        def entries(name: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
            raw = os.environ.get(name)
            return fallback if raw is None else tuple(raw.replace(",", " ").split())

        registries = cls(apt=entries("CORRAL_BUILD_APT", default.apt),
                         pip=entries("CORRAL_BUILD_PIP", default.pip),
                         npm=entries("CORRAL_BUILD_NPM", default.npm),
                         pip_index=os.environ.get("CORRAL_BUILD_PIP_INDEX", default.pip_index),
                         npm_registry=os.environ.get("CORRAL_BUILD_NPM_REGISTRY",
                                                     default.npm_registry),
                         apt_sources=split_sources(
                             os.environ.get("CORRAL_BUILD_APT_SOURCES", "")))
        registries.policy(("apt", "pip", "npm"))  # every entry checked at start
        return registries

    def sources(self) -> tuple[AptSource, ...]:
        """``apt_sources``, checked (InvalidArgumentError for a bad line)."""
        return parse_sources(self.apt_sources)

    def policy(self, kinds: tuple[str, ...], extra: tuple[str, ...] = ()) -> NetworkPolicy:
        allow = [*extra]
        for kind in kinds:
            allow.extend(getattr(self, kind))
            if kind == "apt":
                allow.extend(source.host for source in self.sources())
        if not allow:
            return NetworkPolicy()
        return NetworkPolicy.parse({"allow": list(dict.fromkeys(allow))})


@dataclass
class _State:
    """What the next step starts from."""

    layers: list[str]
    env: dict[str, str]
    workdir: str
    user: str
    summaries: list[str] = field(default_factory=list)


async def build(node: Node, spec: ImageSpec, *, context: Path | None = None,
                runtime: str | None = None, registries: Registries | None = None,
                resources: Resources = BUILD_RESOURCES, step_timeout: float = STEP_TIMEOUT,
                on_event: OnEvent | None = None) -> Manifest:
    """Build ``spec`` on ``node`` and return the new image's manifest (saved).

    ``spec.base``: a recipe's name or a built image's id. ``context``: the folder copy
    steps take files from. Raises InvalidArgumentError for a bad spec or context (before
    anything runs), NotFoundError for an unknown base, BuildError for a failing step.
    """
    emit = on_event or (lambda event: None)
    registries = registries or Registries()
    store = node.images
    spec = with_digests(spec, context)
    total = len(spec.steps)
    started = time.monotonic()
    # Held from before the base is looked up: a prune waits, and cannot take a base image's
    # layers between their lookup and the step sandboxes that stack them.
    async with building(store.built.root):
        if is_image_id(spec.base):
            parent = store.built.manifest(spec.base)
            store.from_manifest(parent)  # its base and layers are all there
            state = _State(list(parent.layers), dict(parent.env), parent.workdir, parent.user)
            base_id, base_name, base_key = spec.base, parent.base, parent.base_key
            entrypoint, cmd = parent.entrypoint, parent.cmd
            labels = dict(parent.labels)
        else:
            base = store.get(spec.base)
            state = _State([], dict(base.env), base.workdir, base.user)
            base_id, base_name, base_key = f"{base.name}@{base.key}", base.name, base.key
            entrypoint = cmd = None
            labels = {}
        keys = step_keys(spec, base_id)
        for number, (step, key) in enumerate(zip(spec.steps, keys, strict=True), 1):
            label = describe(step)
            state.summaries.append(label)
            if isinstance(step, EnvStep):
                state.env.update(step.env)
                emit(BuildEvent("step", number, total, label, cached=True))
                continue
            if isinstance(step, UserStep):
                state.user = step.user
                emit(BuildEvent("step", number, total, label, cached=True))
                continue
            cached = store.built.has_layer(key)
            emit(BuildEvent("step", number, total, label, cached=cached))
            if not cached:
                began = time.monotonic()
                await _run_step(node, base_name, base_key, state, step, number, key,
                                context, runtime,
                                registries, resources, step_timeout,
                                functools.partial(_log, emit, number, total))
                emit(BuildEvent("log", number, total,
                                f"step {number} done in {time.monotonic() - began:.1f} s"))
            state.layers.append(key)
            if isinstance(step, WorkdirStep):
                state.workdir = step.path
        manifest = store.built.save(Manifest(
            base=base_name, base_key=base_key, layers=tuple(state.layers),
            env=tuple(state.env.items()), workdir=state.workdir, user=state.user,
            entrypoint=tuple(spec.entrypoint) if spec.entrypoint is not None else entrypoint,
            cmd=tuple(spec.cmd) if spec.cmd is not None else cmd,
            labels=tuple({**labels, **spec.labels}.items()), steps=tuple(state.summaries)))
    emit(BuildEvent("done", total, total, f"built {manifest.id}",
                    seconds=time.monotonic() - started, image=manifest.id))
    return manifest


def _log(emit: OnEvent, step: int, total: int, line: str) -> None:
    emit(BuildEvent("log", step, total, line))


def with_digests(spec: ImageSpec, context: Path | None) -> ImageSpec:
    """``spec`` with every copy step's digest of the files it takes from ``context``;
    InvalidArgumentError if a copy has no context, or a digest it carries is not what the
    context holds."""
    steps = []
    for number, step in enumerate(spec.steps, 1):
        if isinstance(step, CopyStep):
            if context is None:
                raise InvalidArgumentError(f"step {number} (copy) needs a build context")
            digest = context_digest(context, step.sources, step.ignore)
            if step.digest is not None and step.digest != digest:
                raise InvalidArgumentError(f"step {number} (copy): the build context's files "
                                           "do not match the step's digest")
            step = step.model_copy(update={"digest": digest})
        steps.append(step)
    return spec.model_copy(update={"steps": steps})


def describe(step: object) -> str:
    """One line naming a step, as ``corral image build`` and ``inspect`` show it."""
    if isinstance(step, RunStep):
        text = step.command if isinstance(step.command, str) else shlex.join(step.command)
        return f"RUN {text[:200]}"
    if isinstance(step, PackagesStep):
        return f"{step.kind.upper()} install {' '.join(step.packages)[:200]}"
    if isinstance(step, EnvStep):
        return "ENV " + " ".join(f"{k}=..." for k in step.env)[:200]
    if isinstance(step, WorkdirStep):
        return f"WORKDIR {step.path}"
    if isinstance(step, UserStep):
        return f"USER {step.user}"
    if isinstance(step, CopyStep):
        return f"COPY {' '.join(step.sources)[:160]} {step.destination}"
    return type(step).__name__


@contextlib.asynccontextmanager
async def building(root: Path) -> AsyncIterator[None]:
    """Hold the layer store's build lock (shared) without blocking the event loop."""
    root.mkdir(mode=0o755, parents=True, exist_ok=True)

    def take() -> int:
        fd = os.open(root / "layers.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    fd = await asyncio.to_thread(take)
    try:
        yield
    finally:
        os.close(fd)


async def _run_step(node: Node, base_name: str, base_key: str, state: _State,
                    step: object, number: int, key: str, context: Path | None,
                    runtime: str | None,
                    registries: Registries, resources: Resources, step_timeout: float,
                    log: Callable[[str], None]) -> None:
    store = node.images.built
    image = node.images.from_manifest(Manifest(
        base=base_name, base_key=base_key, layers=tuple(state.layers),
        env=tuple(state.env.items()), workdir=state.workdir, user=state.user))
    argv, user, policy, env = _command(step, state, registries)
    sandbox = await node.start_for_build(image, runtime=runtime, resources=resources,
                                         env={**state.env, **env}, policy=policy,
                                         timeout=step_timeout + 120)
    try:
        if isinstance(step, CopyStep):
            assert context is not None
            argv = await _send_copy(sandbox, step, context, state)
        lines = _Lines(log)
        # root by uid: an imported image may have no /etc/passwd.
        result = await sandbox.commands.run(argv, user=0 if user == "root" else user,
                                            timeout=step_timeout,
                                            on_stdout=lines.feed, on_stderr=lines.feed)
        lines.flush()
        if result.exit_code != 0:
            tail = "\n".join(lines.tail[-ERROR_TAIL_LINES:])
            raise BuildError(f"step {number} ({describe(step)}) failed with exit status "
                             f"{result.exit_code}:\n{tail}")
        # The agent's own sync(2): the image may have no sync of its own.
        synced = await sandbox.commands.run([*agent_command(), "--sync"], user=0,
                                            timeout=300)
        if synced.exit_code != 0:
            raise BuildError(f"step {number}: sync failed in its sandbox: {synced.stderr}")
        meta = {"step": describe(step), "base": f"{base_name}@{base_key}",
                "parent": state.layers[-1] if state.layers else None}
        # The host uid of the sandbox's root: its directory's owner, which the step cannot
        # change (the upper folder is its own `/`, which it may chown).
        uid_base = sandbox.handle.spec.directory.stat().st_uid
        with store.new_layer(key, meta, uid_base) as where:
            await asyncio.to_thread(copy_changes, sandbox.handle.spec, where())
            await asyncio.to_thread(drop_start_files, where(), policy.enabled)
    finally:
        await asyncio.shield(sandbox.kill())


def _command(step: object, state: _State, registries: Registries
             ) -> tuple[list[str], str, NetworkPolicy, dict[str, str]]:
    """A step's argv, user, network policy and extra environment."""
    pip_env = {"PIP_INDEX_URL": registries.pip_index, "PIP_NO_CACHE_DIR": "1",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if urlsplit(registries.pip_index).scheme == "http":
        pip_env["PIP_TRUSTED_HOST"] = _host_port(registries.pip_index)
    npm_env = {"NPM_CONFIG_REGISTRY": registries.npm_registry, "NPM_CONFIG_FUND": "false",
               "NPM_CONFIG_AUDIT": "false", "NPM_CONFIG_UPDATE_NOTIFIER": "false"}
    apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
    if isinstance(step, RunStep):
        argv = ["/bin/sh", "-c", step.command] if isinstance(step.command, str) else step.command
        argv, user = as_user(argv, state.user)
        return (argv, user, registries.policy(("apt", "pip", "npm")),
                {**apt_env, **pip_env, **npm_env})
    if isinstance(step, PackagesStep):
        packages = list(step.packages)
        if step.kind == "apt":
            script = install_script(packages, registries.sources())
            return ["/bin/sh", "-c", script], "root", registries.policy(("apt",)), apt_env
        if step.kind == "pip":
            index = step.index_url or registries.pip_index
            extra = (_host_port(index),) if step.index_url else ()
            env = {**pip_env, "PIP_INDEX_URL": index}
            env.pop("PIP_TRUSTED_HOST", None)
            if urlsplit(index).scheme == "http":
                env["PIP_TRUSTED_HOST"] = _host_port(index)
            argv = ["python3", "-m", "pip", "install", "--root-user-action=ignore", *packages]
            return argv, "root", registries.policy(("pip",), extra), env
        argv = ["npm", "install", "--global", *packages]
        return argv, "root", registries.policy(("npm",)), npm_env
    if isinstance(step, WorkdirStep):
        return ["mkdir", "-p", "--", step.path], "root", NetworkPolicy(), {}
    if isinstance(step, CopyStep):
        return [], "root", NetworkPolicy(), {}  # the argv comes once the files are in
    raise InvalidArgumentError(f"unknown step {step!r:.80}")


#: Runs ``argv`` (after its two first arguments, a user and a group, names or ids) as that
#: user and group, with no supplementary group and the user's home as ``HOME``. The agent
#: takes a user alone (its groups are those /etc/group gives it); it starts this as root.
_SETPRIV = ('home=$(getent passwd "$1" | cut -d: -f6); export HOME="${home:-/}"; '
            'user=$1 group=$2; shift 2; '
            'exec setpriv --reuid="$user" --regid="$group" --clear-groups -- "$@"')


def as_user(argv: list[str], user: str) -> tuple[list[str], str]:
    """The argv, and the user the agent starts it as, that run ``argv`` as a ``user`` step
    names it: ``name`` or ``uid`` as it is; ``name:group`` (Docker's ``USER u:g``) through
    ``setpriv``, started as root."""
    name, sep, group = user.partition(":")
    if not sep:
        return argv, user
    return ["/bin/sh", "-c", _SETPRIV, "sh", name, group, *argv], "root"


def drop_start_files(tree: Path, networked: bool) -> None:
    """Remove from a step's copied changes what the sandbox's start put there, not the
    step: the runtime's mount points for the agent (empty folders), and the resolver the node
    writes for a sandbox with a network (a step's own changes to it are lost, as in
    Docker). ``tree`` is hostile: nothing in it is followed."""
    for mount_point in (MOUNT_POINT, CHANNEL_MOUNT_POINT):  # a base without them (an archive)
        with contextlib.suppress(OSError):  # kept if it is not an empty folder
            if stat.S_ISDIR(os.lstat(tree / mount_point.lstrip("/")).st_mode):
                os.rmdir(tree / mount_point.lstrip("/"))
    if not networked:
        return
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.lstat(tree / "etc").st_mode):
            return  # /etc replaced by a link or a file: not followed
        resolv = tree / "etc" / "resolv.conf"
        if stat.S_ISDIR(os.lstat(resolv).st_mode):
            shutil.rmtree(resolv)
        else:
            os.unlink(resolv)


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        raise InvalidArgumentError(f"{url[:80]!r} names no host")
    return parts.hostname + (f":{parts.port}" if parts.port else "")


_COPY_TAR = "/tmp/.corral-copy.tar"
_COPY_LIST = "tmp/.corral-copy.list"


async def _send_copy(sandbox: NodeSandbox, step: CopyStep, context: Path, state: _State
                     ) -> list[str]:
    """Put a copy step's files in a tar inside the sandbox; return the argv that unpacks
    them there (as root: paths resolve in the image as a sandbox program sees them, its
    links included) and hands them to ``chown`` when the step names an owner."""
    entries = list(copy_entries(context, step, state.workdir))
    with tempfile.TemporaryFile() as archive:
        await asyncio.to_thread(_write_tar, archive, entries)
        archive.seek(0)

        async def chunks() -> AsyncIterator[bytes]:
            while block := await asyncio.to_thread(archive.read, 1 << 20):
                yield block

        await sandbox.files.write(_COPY_TAR, chunks(), mode=0o600)
    script = f"tar -xpf {_COPY_TAR} -C / --no-overwrite-dir && rm -f {_COPY_TAR}"
    if step.chown is not None:
        owner = step.chown
        if ":" not in owner:  # Docker's rule: a uid alone is also the gid; a name, its group
            owner = f"{owner}:{owner}" if owner.isdigit() else f"{owner}:"
        script += (f" && xargs -0 -r chown -h -- {shlex.quote(owner)} < /{_COPY_LIST}"
                   f" && rm -f /{_COPY_LIST}")
    else:
        script += f" && rm -f /{_COPY_LIST}"
    return ["/bin/sh", "-c", script]


def copy_entries(context: Path, step: CopyStep, workdir: str) -> Iterator[tuple[Path, str]]:
    """(host path, path in the image without its leading ``/``) for each file, folder
    and link a copy step takes, as Docker's COPY places them: a folder's contents go into
    the destination; a file goes to the destination, or into it when it ends with ``/``
    or the step has several sources."""
    root = context.resolve()
    destination = step.destination
    into = destination.endswith("/") or len(step.sources) > 1
    destination = destination.rstrip("/") or "/"
    for source in step.sources:
        relative = context_relative(source)
        start = root / relative
        for path in walk_context(root, relative, step.ignore):
            if path == start and path.is_dir() and not path.is_symlink():
                continue
            inner = path.relative_to(start).as_posix() if path != start else ""
            if path == start:  # a file or link named as a source
                target = f"{destination}/{path.name}" if into else destination
            else:
                target = f"{destination}/{inner}"
            yield path, target.lstrip("/")


def _write_tar(archive: IO[bytes], entries: list[tuple[Path, str]]) -> None:
    """The copy's files, owned by root, no setuid/setgid bit, then the list of their
    paths (NUL-separated) at :data:`_COPY_LIST`."""
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in entries:
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode &= 0o1777
            if info.isfile():
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
        listing = b"".join(f"/{name}".encode("utf-8", "surrogateescape") + b"\0"
                           for _, name in entries)
        info = tarfile.TarInfo(_COPY_LIST)
        info.size, info.mode = len(listing), 0o600
        tar.addfile(info, io.BytesIO(listing))


class _Lines:
    """Output chunks as lines (the build log), the last ones kept for an error."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._partial = ""
        self.tail: list[str] = []

    def feed(self, text: str) -> None:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._line(line)
        if len(self._partial) > MAX_LOG_LINE:
            self._line(self._partial)
            self._partial = ""

    def flush(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def _line(self, line: str) -> None:
        line = line.rstrip("\r")[:MAX_LOG_LINE]
        self._emit(line)
        self.tail.append(line)
        if len(self.tail) > 4 * ERROR_TAIL_LINES:
            del self.tail[:-ERROR_TAIL_LINES]
