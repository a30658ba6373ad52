"""The node: creates, tracks and destroys the sandboxes of one host (async core).

A sandbox's life: validate the request, let the runtime build the host side and start the
agent, wait for the agent's hello, then serve commands and files until it is killed, times
out, or its agent dies. Its states and every way out belong to the node's
:class:`~corral.node.lifecycle.Lifecycle`, which records why a sandbox stopped, persists
each transition, and tells listeners (:meth:`Node.on_state`).

Sandboxes can outlive their node: ``close(detach=True)`` lets go of the running and paused
ones, and the next node on the same data dir adopts them when it starts (:mod:`.adoption`).
Those it cannot adopt are torn down and listed in :attr:`Node.lost` with the reason.

A sandbox can be paused and resumed (:meth:`Node.pause`, :meth:`Node.resume`,
:mod:`.pausing`, docs/pause.md), and its memory kept to start copies of it from
(:meth:`Node.snapshot`, :meth:`Node.create_from_snapshot`, :meth:`Node.fork`,
:mod:`.checkpoints`, docs/snapshots.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from corral.api.errors import (
    AlreadyExistsError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SandboxError,
    UnavailableError,
)
from corral.api.limits import DEFAULT_LIFETIME
from corral.api.contract import NetworkArg
from corral.api.image_spec import ImageSpec
from corral.api.limits import TIMEOUT_RANGE
from corral.api.network import NetworkPolicy
from corral.api.resources import Resources, check_timeout
from corral.runtime import GvisorOptions, Runtime, SandboxSpec, VolumeBind, get_runtime
from corral.runtime.agent_bundle import ensure_bundle
from corral.runtime.gpu import DriverFiles, GpuHost, discover, sandbox_env
from corral.runtime.host import (SandboxNet, destroy_net, favor_dynamic_changes,
                                 remove_node_cgroups, sweep, sweep_networks)

from . import builder, checkpoints, oci, pausing, records, snapshots
from .adoption import AdoptionError, adopt, release
from .agent_client import AgentClient
from .builder import BuildEvent
from .checkpoints import MemorySnapshot, SnapshotStore
from .gpus import EXTRA_KEY as gpu_extra
from .gpus import GpuScheduler
from .gpus import recorded as recorded_gpus
from .images import Image, ImageStore
from .layers import Manifest, PruneResult
from .lifecycle import Lifecycle, SandboxState, StateListener
from .network import EXTRA_KEY as net_extra
from .network import NodeNetwork, policy_of, recorded_policy
from .network import record as net_record
from .pools import Pool, PoolSpec
from .sandbox import NodeSandbox
from .settings import NodeSettings
from .validation import SANDBOX_ID, check_env, check_metadata
from .volumes import VolumeMount, VolumeStore, check_id, check_mounts

log = logging.getLogger(__name__)

AGENT_START_TIMEOUT = 30.0
#: Lifetime of a sandbox waiting in a warm pool (its real one starts at hand-out).
POOLED_LIFETIME = TIMEOUT_RANGE[1]
#: Where a networked sandbox is told its resolver (its gateway, see corral.node.egress).
RESOLV_CONF = "/etc/resolv.conf"
STDERR_TAIL = 16 * 1024
#: The ``state_reason`` of a sandbox paused because its lifetime ran out.
TIMEOUT_PAUSE_REASON = "paused: lifetime ran out (on_timeout=pause)"


class Node:
    """Sandboxes on this host. Use as ``async with Node() as node: ...``."""

    def __init__(self, settings: NodeSettings | None = None, *,
                 runtimes: Mapping[str, Runtime] | None = None,
                 gpus: GpuHost | None = None, gpu_root: Path = Path("/")) -> None:
        """``runtimes``: the only runtimes this node uses, by name, instead of the host's
        (tests give a fake one); ``gpus`` and ``gpu_root``: the GPUs this node schedules
        and the root folder their driver's files are read under, instead of the host's
        (tests give a fake driver tree). Only this constructor takes them, never a setting."""
        self.settings = settings or NodeSettings.from_env()
        self.images = ImageStore(self.settings.image_dir, built=self.settings.built_dir)
        self.lifecycle = Lifecycle(self._persist)
        self.lifecycle.on_state(self._forget_stopped)
        #: This node's GPUs and who holds them (:mod:`corral.node.gpus`).
        self.gpus = GpuScheduler(gpus if gpus is not None else discover(), gpu_root)
        self.lifecycle.on_state(self._gpu_state)
        self.lifecycle.pause_expired = self._pause_expired
        self._sandboxes: dict[str, NodeSandbox] = {}
        self._given = dict(runtimes) if runtimes is not None else None
        self._runtimes: dict[str | None, Runtime] = {}
        self._bundle: Path | None = None
        self._pending = 0
        self._lock_fd: int | None = None
        #: Sandboxes a previous node left that this one could not adopt: id -> why.
        self.lost: dict[str, str] = {}
        self.pools: list[Pool] = []
        self._start_turns = asyncio.Semaphore(self.settings.max_starting)
        self._waiting = 0
        #: Starts under way (each in a task of its own): close() lets them end first.
        self._starts: set[asyncio.Task[NodeSandbox]] = set()
        self._closing = False
        self._runtime_lock = threading.Lock()
        self.network = NodeNetwork(self.settings.network, self.settings.node_key)
        self.lifecycle.on_state(self.network.on_state)
        #: This node's volumes (:mod:`corral.node.volumes`), and their files.
        self.volumes = VolumeStore(self.settings.data_dir / "volumes")
        #: Volumes named by starts under way (in no list yet), and those being removed.
        self._volume_starts: Counter[str] = Counter()
        self._removing_volumes: set[str] = set()
        #: This node's memory snapshots (:mod:`corral.node.checkpoints`), and how many
        #: restores from each are under way (a snapshot is not removed under them).
        self.snapshots = SnapshotStore(self.settings.data_dir / "snapshots")
        self._restoring: Counter[str] = Counter()

    @property
    def sandboxes_dir(self) -> Path:
        return self.settings.data_dir / "sandboxes"

    @property
    def agent_bundle(self) -> Path:
        """The host directory every sandbox of this node sees, read-only, at ``/.corral``."""
        if self._bundle is None:
            raise SandboxError("the node is not started; use `async with Node()`")
        return self._bundle

    def on_state(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(sandbox, state)`` after every state change of every sandbox of
        this node (pooled ones included: check ``sandbox.pooled``); returns the function
        that unsubscribes. The listener runs on the node's event loop and must not block."""
        return self.lifecycle.on_state(listener)

    async def start(self) -> None:
        """Prepare directories, adopt the sandboxes a previous node released, sweep the rest."""
        options = self.settings.gvisor or GvisorOptions.from_env()
        if options.platform is not None and self._given is None:
            await self._runtime("gvisor")  # a forced platform that fails: refused at start
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self.sandboxes_dir.mkdir(exist_ok=True)
        os.chmod(self.sandboxes_dir, 0o711)  # sandbox uids traverse it to their root
        self._bundle = await asyncio.to_thread(ensure_bundle, self.settings.data_dir / "agent")
        if os.geteuid() == 0:  # mounting them needs root; without it, every use says so
            await asyncio.to_thread(self.volumes.open)
        if os.geteuid() == 0:
            await asyncio.to_thread(self.snapshots.sweep)  # what a crash cut short
        found = [p for p in self.sandboxes_dir.iterdir()
                 if (p / records.RECORD_NAME).is_file() and not p.is_symlink()]
        await asyncio.gather(*(self._adopt(directory) for directory in found))
        if self._sandboxes:
            log.info("adopted %d sandboxes", len(self._sandboxes))
        swept = await asyncio.to_thread(sweep, self.sandboxes_dir, self.settings.node_key,
                                        set(self._sandboxes))
        kept = {recorded["index"] for s in self._sandboxes.values()
                if isinstance(recorded := s.handle.extra.get(net_extra), dict)
                and isinstance(recorded.get("index"), int)}
        if os.geteuid() == 0:
            await asyncio.to_thread(sweep_networks, self.settings.node_key, kept)
        for sandbox_id in swept:
            self.lost.setdefault(sandbox_id, "its node stopped without handing it over")
        if swept:
            log.warning("swept %d sandboxes left by a previous run: %s", len(swept), swept)
        if self.settings.tune_cgroups and os.geteuid() == 0:
            if await asyncio.to_thread(favor_dynamic_changes) is None:
                log.warning("could not enable cgroup favordynmods; sandbox starts will be slower")
        for spec in self.settings.pools:
            try:
                await self._add_pool(spec)
            except SandboxError as exc:
                log.error("warm pool %s:%s not started: %s", spec.image, spec.runtime,
                          exc.message)

    async def _add_pool(self, spec: PoolSpec) -> None:
        chosen = await self._runtime(spec.runtime or None)
        pool = Pool(spec, chosen.name, self._start_pooled, self.lifecycle)
        if not spec.tenant_image:  # a tenant's image: named by retarget_pool
            self.images.get(spec.image)
        self.pools.append(pool)
        pool.start()

    async def set_pools(self, specs: Sequence[PoolSpec]) -> None:
        """Keep exactly these warm pools from now on (a cluster's control plane spreads
        its pools over its nodes this way): pools no longer wanted, or of another size,
        are closed and their ready sandboxes stopped; new ones start filling. A spec this
        node cannot serve (an unknown image or runtime) is refused before anything
        changes."""
        if sum(spec.size for spec in specs) > self.settings.max_sandboxes:
            raise InvalidArgumentError("the warm pools would hold more sandboxes than this "
                                       "node's max_sandboxes")
        for spec in specs:
            await self._runtime(spec.runtime or None)
            if not spec.tenant_image:
                self.images.get(spec.image)
        wanted = set(specs)
        for pool in [p for p in self.pools if p.spec not in wanted]:
            self.pools.remove(pool)
            for sandbox in await pool.close():
                await sandbox.stop("its warm pool was resized or removed")
        held = {pool.spec for pool in self.pools}
        for spec in specs:
            if spec not in held and spec.size > 0:
                await self._add_pool(spec)

    def _lock_data_dir(self) -> None:
        """Own the data dir: a second node on it would sweep this one's sandboxes."""
        path = self.settings.data_dir / "node.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyExistsError(
                f"another Corral node is using {self.settings.data_dir}; stop it or give this "
                "one another data dir (--data-dir / CORRAL_DATA_DIR)") from None
        self._lock_fd = fd

    async def close(self, *, detach: bool = False) -> None:
        """Stop every sandbox this node holds, then release the data dir.

        With ``detach``, running sandboxes are left running, and paused ones paused, for the
        next node on this data dir to adopt (:meth:`start`); running ones' agents end them if
        none comes within :data:`corral.runtime.agent_bundle.ORPHAN_GRACE` seconds (paused
        ones wait for ever). Without it, paused sandboxes are stopped too (their saved state
        deleted).
        """
        self._closing = True  # no new start from now on
        for pool in self.pools:
            for sandbox in await pool.close():
                await sandbox.stop("its warm pool closed")
        # A start under way ends first (it cannot be cut in half); what it made, it holds in
        # _sandboxes by then, and is stopped or released below with the rest.
        await asyncio.gather(*list(self._starts), return_exceptions=True)
        if detach and self.settings.orphan_grace > 0:
            running = [sb for sb in self._sandboxes.values() if not sb.pooled
                       and sb.state in (SandboxState.RUNNING, SandboxState.PAUSED)]
            released = await asyncio.gather(*(release(sb, self.lifecycle) for sb in running))
            for sandbox, gone in zip(running, released, strict=True):
                if gone:
                    self._sandboxes.pop(sandbox.id, None)
        await asyncio.gather(*(sb.stop("node shutting down")
                               for sb in list(self._sandboxes.values())))
        await self.network.close()  # released sandboxes' resolvers: the next node's now
        if os.geteuid() == 0:  # released sandboxes keep their volumes' mounts
            await asyncio.to_thread(self.volumes.close)
        remove_node_cgroups(self.settings.node_key)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def runtime(self, name: str | None) -> Runtime:
        """The named runtime (or the default), probed once per node.

        Probing runs host tools (``runsc do``): the node calls this from a worker thread
        (:meth:`_runtime`), never on its event loop; the lock keeps one instance per runtime.
        """
        with self._runtime_lock:
            if name not in self._runtimes:
                runtime = get_runtime(name, self._given, self.settings.gvisor)
                # One instance per runtime, whichever way it was asked for: a runtime holds
                # host-wide state (the namespaces runtime's uid slots).
                self._runtimes[name] = self._runtimes.setdefault(runtime.name, runtime)
            return self._runtimes[name]

    async def _runtime(self, name: str | None) -> Runtime:
        return await asyncio.to_thread(self.runtime, name)

    async def create(self, image: str = "python", *, runtime: str | None = None,
                     resources: Resources | None = None, env: Mapping[str, str] | None = None,
                     timeout: float = DEFAULT_LIFETIME,
                     metadata: Mapping[str, str] | None = None,
                     network: NetworkArg | NetworkPolicy | None = None,
                     volumes: Sequence[VolumeMount] = ()) -> NodeSandbox:
        """Start a sandbox and return it once its agent answers.

        Cancelling the call does not cut a start in half (that would strand mounts and a
        subprocess): the start runs to its end in a task of its own, and what it made is
        stopped at once.

        Args:
            image: a built image name (``corral image build NAME`` builds one).
            runtime: ``"gvisor"`` or ``"namespaces"``; default: the strongest that works.
            resources: limits (:class:`corral.api.resources.Resources`).
            env: environment variables for every command in the sandbox.
            timeout: maximum lifetime in seconds; the sandbox is killed after it.
            metadata: string labels to find the sandbox by.
            network: what it may reach (:class:`corral.api.network.NetworkPolicy`, or
                ``"none"``, ``"all"``, ``{"allow": [...], "deny": [...]}``); default
                ``"none"``: loopback only.
            volumes: volumes of this node to mount (:class:`corral.node.volumes.VolumeMount`;
                at most 16); checked, and each volume's existence too, before anything
                starts. A warm pool never serves a create with volumes.
        """
        policy = self.network.check(policy_of(network))
        mounts = check_mounts(volumes)
        for mount in mounts:
            if mount.volume in self._removing_volumes or not self.volumes.exists(mount.volume):
                raise NotFoundError(f"no volume {mount.volume}")
        return await self._shielded(self._create(image, runtime, resources, env, timeout,
                                                 metadata, policy, mounts))

    async def _shielded(self, start: Coroutine[None, None, NodeSandbox]) -> NodeSandbox:
        """Run a start to its end in a task of its own: a caller that gives up meanwhile
        does not cut it in half, and what it made is stopped once it is made."""
        if self._closing:
            start.close()
            raise UnavailableError("the node is shutting down; retry on its successor")
        task = asyncio.get_running_loop().create_task(start)
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_stop_abandoned)
            raise

    async def _create(self, image: str, runtime: str | None, resources: Resources | None,
                      env: Mapping[str, str] | None, timeout: float,
                      metadata: Mapping[str, str] | None,
                      policy: NetworkPolicy, mounts: tuple[VolumeMount, ...] = ()
                      ) -> NodeSandbox:
        # Its volumes count as used from here (no await before) until the sandbox is listed
        # or its start failed: remove_volume either sees this start, or this start sees
        # the removal under way.
        used = [m.volume for m in mounts]
        self._volume_starts.update(used)
        try:
            for volume_id in used:
                if volume_id in self._removing_volumes:
                    raise NotFoundError(f"no volume {volume_id} (it is being removed)")
            return await self._create_now(image, runtime, resources, env, timeout, metadata,
                                          policy, mounts)
        finally:
            self._volume_starts.subtract(used)
            self._volume_starts += Counter()  # drops the zeros

    async def _create_now(self, image: str, runtime: str | None,
                          resources: Resources | None, env: Mapping[str, str] | None,
                          timeout: float, metadata: Mapping[str, str] | None,
                          policy: NetworkPolicy, mounts: tuple[VolumeMount, ...]
                          ) -> NodeSandbox:
        if self._bundle is None:
            raise SandboxError("the node is not started; use `async with Node()`")
        resources = resources or Resources()
        self._check_host_fits(resources)
        timeout = check_timeout(timeout)
        env, metadata = check_env(env), check_metadata(metadata)
        built = self.images.get(image)
        chosen = await self._runtime(runtime)
        for pool in self.pools if not policy.enabled and not mounts else ():
            if pool.matches(image, chosen.name, resources):
                sandbox = await pool.take()
                handed = (None if sandbox is None
                          else await pool.hand_out(sandbox, env, metadata, timeout))
                if handed is not None:
                    return handed
        return await self._start(image, chosen, resources, {**dict(built.env), **env},
                                 metadata, timeout, pooled=False, policy=policy,
                                 mounts=mounts)

    async def retarget_pool(self, name: str, image: str | None) -> bool:
        """Point the warm pool of the tenant image ``name`` (``TENANT/NAME:TAG``, as the
        operator configured it) at ``image`` (a built image's id; None: empty it); False if
        no pool has that name. The control plane calls this at start and whenever the name
        is built again, imported or removed."""
        found = False
        for pool in self.pools:
            if pool.spec.image == name:
                found = True
                await pool.retarget(image)
        return found

    async def _start_pooled(self, image: str, spec: PoolSpec, runtime: str) -> NodeSandbox:
        """Start a sandbox of ``image`` for a warm pool, cold (shielded like :meth:`create`)."""
        built = self.images.get(image)
        chosen = await self._runtime(runtime)
        return await self._shielded(self._start(image, chosen,
                                                spec.resources, dict(built.env), {},
                                                POOLED_LIFETIME, pooled=True))

    async def _start(self, image: str, chosen: Runtime, resources: Resources,
                     env: dict[str, str], metadata: dict[str, str], timeout: float,
                     pooled: bool, policy: NetworkPolicy | None = None,
                     built: Image | None = None,
                     mounts: tuple[VolumeMount, ...] = ()) -> NodeSandbox:
        """Build and start one sandbox, waiting for a start turn (admission control)."""
        async with self._start_turn():
            return await self._start_now(image, chosen, resources, env, metadata, timeout,
                                         pooled, policy or NetworkPolicy(), built, mounts)

    @contextlib.asynccontextmanager
    async def _start_turn(self) -> AsyncIterator[None]:
        """Admission control: one of ``max_starting`` turns, or a refusal when the node is
        full or too many starts wait already."""
        if len(self._sandboxes) + self._pending >= self.settings.max_sandboxes:
            raise ResourceExhaustedError(
                f"this node already runs {self.settings.max_sandboxes} sandboxes; kill some first")
        if self._start_turns.locked() and self._waiting >= self.settings.start_queue:
            raise ResourceExhaustedError(
                f"{self.settings.start_queue} sandboxes are already waiting to start on this "
                "node; retry in a moment")
        self._waiting += 1
        try:
            await self._start_turns.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._start_turns.release()

    async def _start_now(self, image: str, chosen: Runtime, resources: Resources,
                         env: dict[str, str], metadata: dict[str, str], timeout: float,
                         pooled: bool, policy: NetworkPolicy,
                         built: Image | None = None,
                         mounts: tuple[VolumeMount, ...] = ()) -> NodeSandbox:
        if self._bundle is None:
            raise SandboxError("the node is not started; use `async with Node()`")
        built = built or self.images.get(image)
        sandbox_id = f"sbx-{secrets.token_hex(8)}"
        # Counted as pending, and in no list, until it runs: nothing can reach (or stop) a
        # sandbox while it starts, and Node.close() waits for its start instead.
        self._pending += 1
        try:
            binds = await asyncio.to_thread(self._volume_binds, mounts)
            gpu = await asyncio.to_thread(self.gpus.acquire, sandbox_id, resources, chosen)
            if gpu is not None:
                env = sandbox_env(env)
            try:
                net = await self.network.attach(policy) if policy.enabled else None
            except BaseException:
                self.gpus.release(sandbox_id)
                raise
            spec = self._spec(sandbox_id, built, resources, binds, net,
                              gpu[1] if gpu is not None else None)
            try:
                handle = await chosen.create(spec)
            except BaseException:
                self.gpus.release(sandbox_id)
                if net is not None:
                    await asyncio.shield(asyncio.to_thread(destroy_net, net))
                raise
            if net is not None:
                handle.extra[net_extra] = net_record(net, policy)
            if gpu is not None:
                handle.extra[gpu_extra] = list(gpu[0])
            sandbox = NodeSandbox(self.lifecycle, sandbox_id, image, chosen, handle, resources,
                                  env, built.workdir, metadata, timeout, self.network,
                                  pooled=pooled, user=default_user(built.user),
                                  volumes=mounts)
            try:
                process = await chosen.start(handle)
                if process.stdout is None or process.stdin is None:
                    raise InternalError(f"runtime {chosen.name} started no agent channel")
                if process.stderr is not None:
                    asyncio.get_running_loop().create_task(
                        self._drain_stderr(sandbox, process.stderr))
                agent = AgentClient(process.stdout, process.stdin, f"sandbox {sandbox_id}")
                sandbox.agent = agent
                await agent.handshake(AGENT_START_TIMEOUT)
            except BaseException as exc:
                await _start_failed(sandbox, exc)
            self._sandboxes[sandbox_id] = sandbox
        finally:
            self._pending -= 1
        await self._go_live(sandbox, agent, net)
        log.info("sandbox %s started (%s, image %s%s)", sandbox_id, chosen.name, image,
                 ", warm pool" if pooled else "")
        return sandbox

    def _spec(self, sandbox_id: str, built: Image, resources: Resources,
              binds: tuple[VolumeBind, ...], net: SandboxNet | None,
              gpu: DriverFiles | None = None) -> SandboxSpec:
        """What the runtime needs to build sandbox ``sandbox_id`` of this node."""
        return SandboxSpec(sandbox_id=sandbox_id, cgroup=f"{self.settings.node_key}/{sandbox_id}",
                           rootfs=built.rootfs, resources=resources,
                           agent_bundle=self.agent_bundle,
                           directory=self.sandboxes_dir / sandbox_id,
                           orphan_grace=self.settings.orphan_grace,
                           netns=net.netns_path if net is not None else None,
                           layers=built.layers, volumes=binds, gpu=gpu)

    async def _go_live(self, sandbox: NodeSandbox, agent: AgentClient,
                       net: SandboxNet | None) -> None:
        """A started sandbox runs: its channel watched, its state RUNNING, and (networked)
        its names looked up through its gateway, its resolver. Stopped if that fails."""
        agent.on_close = functools.partial(self._agent_closed, sandbox)
        self.lifecycle.move(sandbox, SandboxState.RUNNING)
        if net is not None:
            try:
                await sandbox.files.write(RESOLV_CONF, f"nameserver {net.gateway}\n")
            except BaseException as exc:
                await asyncio.shield(sandbox.stop(f"failed to start: {exc}"))
                raise

    def _volume_binds(self, mounts: tuple[VolumeMount, ...]) -> tuple[VolumeBind, ...]:
        """Each volume's host folder (mounted now if it was not) bound at its mount point."""
        return tuple(VolumeBind(source=self.volumes.mounted(m.volume), target=m.path,
                                read_only=m.read_only) for m in mounts)

    def volume_users(self, volume_id: str) -> list[str]:
        """The ids of this node's live sandboxes (running, or stopping) that mount the
        volume, sorted; starts under way are not listed (see :meth:`remove_volume`)."""
        return sorted(sb.id for sb in self._sandboxes.values()
                      if sb.state is not SandboxState.STOPPED
                      and any(m.volume == volume_id for m in sb.volumes))

    async def remove_volume(self, volume_id: str) -> None:
        """Delete a volume and its files; refused (InvalidArgumentError) while a sandbox
        mounts it or is starting with it. NotFoundError if there is none."""
        check_id(volume_id)
        users = self.volume_users(volume_id)
        starting = self._volume_starts.get(volume_id, 0)
        if users or starting:
            count = len(users) + starting
            named = f" ({', '.join(users[:8])}{', ...' if len(users) > 8 else ''})" if users else ""
            raise InvalidArgumentError(
                f"volume {volume_id} is in use by {count} sandbox{'es' if count > 1 else ''}"
                f"{named}; kill them (or wait for them to stop) first")
        if volume_id in self._removing_volumes:
            raise NotFoundError(f"no volume {volume_id} (it is being removed)")
        self._removing_volumes.add(volume_id)
        try:
            await asyncio.shield(asyncio.to_thread(self.volumes.remove, volume_id))
        finally:
            self._removing_volumes.discard(volume_id)

    def _persist(self, sandbox: NodeSandbox) -> None:
        """Write down what the next node needs to adopt ``sandbox`` (the lifecycle calls
        this on each transition). Pooled sandboxes are nobody's yet: never recorded."""
        if sandbox.pooled:
            return
        records.write(sandbox.handle.spec.directory, _record(sandbox))

    async def _adopt(self, directory: Path) -> None:
        """Take over a sandbox a previous node released; on failure note why in ``lost``."""
        if self._bundle is None:
            raise SandboxError("the node is not started")
        try:
            adopted = await adopt(directory, runtime=self.runtime, images=self.images,
                                  bundle=self._bundle, node_key=self.settings.node_key)
        except AdoptionError as exc:
            self.lost[directory.name] = f"lost while its node was down: {exc.message}"
            log.warning("sandbox %s: %s", directory.name, self.lost[directory.name])
            return  # the sweep that follows removes what is left of it
        record = adopted.record
        sandbox = NodeSandbox(self.lifecycle, record.id, record.image, adopted.runtime,
                          adopted.handle, record.resources, record.env, record.workdir,
                          record.metadata, DEFAULT_LIFETIME, self.network, user=record.user,
                          volumes=record.volumes)
        sandbox.created_at, sandbox.expires_at = record.created_at, record.expires_at
        sandbox.timeout = (record.timeout if record.timeout is not None  # else: older
                           else max(1.0, record.expires_at - record.created_at))
        sandbox.on_timeout, sandbox.state_reason = record.on_timeout, record.state_reason
        self._sandboxes[sandbox.id] = sandbox
        if adopted.agent is not None:
            try:  # it runs on its GPUs: none of them is anyone else's
                self.gpus.adopt(sandbox.id, recorded_gpus(adopted.handle.extra))
            except SandboxError as exc:
                log.error("sandbox %s: %s", sandbox.id, exc.message)
            sandbox.agent = adopted.agent
            adopted.agent.on_close = functools.partial(self._agent_closed, sandbox)
        if adopted.agent is None:  # paused: nothing of it runs until a resume
            sandbox.lifetime_left = record.lifetime_left
            if record.state == SandboxState.RUNNING.value:  # its node died pausing it
                sandbox.lifetime_left = max(0.0, record.expires_at - time.time())
                sandbox.state_reason = "paused: its pause was finished by the next node"
            try:  # its slot, made again if a reboot took it (before any create can take it)
                await self.network.reinstate(sandbox)
            except SandboxError as exc:
                log.warning("sandbox %s: adopted paused, but its network is not ready; its "
                            "resume tries again: %s", sandbox.id, exc.message)
            sandbox.paused_at = record.paused_at  # None (an older record): paused from now
            self.lifecycle.move(sandbox, SandboxState.PAUSED)
            await asyncio.to_thread(records.unmark_pausing, directory)  # recorded paused
            log.info("sandbox %s adopted paused (%s, image %s)", sandbox.id,
                     adopted.runtime.name, record.image)
            return
        net = self.network.slot(adopted.handle.extra)
        if net is not None:
            await self.network.serve_names(net, sandbox.network.policy)
        self.lifecycle.move(sandbox, SandboxState.RUNNING)  # past its lifetime: stops at once
        await asyncio.to_thread(records.unmark_pausing, directory)  # a pause never begun
        log.info("sandbox %s adopted (%s, image %s)", sandbox.id, adopted.runtime.name,
                 record.image)

    async def pause(self, sandbox_id: str, *, reason: str = "paused: by request") -> None:
        """Pause a running sandbox: it stops where it is, and its lifetime clock with it.

        gVisor: its memory and files go to disk (a checkpoint); nothing of it runs or holds
        memory, and it survives a restart of the node and a reboot. namespaces: its
        processes are frozen (the cgroup freezer); it keeps its memory, and survives a
        restart of the node but not a reboot. While paused, its commands, files and code
        answer SandboxNotRunningError saying it is paused (check ``sandbox.is_paused``);
        a command running when it paused runs on after the resume, but its output stream
        ends now. Pausing a paused sandbox does nothing. A networked sandbox keeps its
        network slot (address, rules, resolver) while paused; its open connections are
        dropped (gVisor). ``reason``: its ``state_reason`` from now (who or what paused it).
        See docs/pause.md.
        """
        sandbox = self.get(sandbox_id)
        await pausing.pause(sandbox, self.lifecycle, self._agent_closed, reason)

    async def resume(self, sandbox_id: str, *, reason: str = "resumed: by request") -> None:
        """Let a paused sandbox run on from where it stopped, with the lifetime it had left
        (its whole ``timeout`` again if the end of its lifetime paused it).

        Returns once its agent answers; its code contexts keep their state (on the node
        that paused it). Resuming a running sandbox does nothing. If the runtime cannot
        resume it, it stays paused and the error says why. ``reason``: its
        ``state_reason`` from now.
        """
        sandbox = self.get(sandbox_id)
        try:
            await pausing.resume(sandbox, self.lifecycle, self._agent_closed,
                                 self._read_stderr, self.network, reason,
                                 take=self._take_gpus)
        finally:
            if sandbox.state is not SandboxState.RUNNING:
                self.gpus.release(sandbox.id)  # still paused (or gone): not holding them

    def _take_gpus(self, sandbox: NodeSandbox) -> None:
        """A resume's first step: the GPUs the sandbox had, again (their device nodes are
        bound into it: the same ones or none), or ResourceExhaustedError naming the holder."""
        gpus = recorded_gpus(sandbox.handle.extra)
        if gpus:
            self.gpus.take_back(sandbox.id, gpus)

    def _gpu_state(self, sandbox: NodeSandbox, state: SandboxState) -> None:
        """Lifecycle listener: a sandbox that stops or pauses gives its GPUs back."""
        if state in (SandboxState.STOPPED, SandboxState.PAUSED):
            given = self.gpus.release(sandbox.id)
            if given:
                log.info("sandbox %s gave back GPUs %s (%s)", sandbox.id, list(given),
                         state.value)

    async def _pause_expired(self, sandbox: NodeSandbox) -> None:
        """The lifecycle's handler of a lifetime that ran out with ``on_timeout="pause"``:
        pause the sandbox so that its resume gives it its whole ``timeout`` again (as E2B's
        auto-pause does); if it cannot be paused, stop it, saying so."""
        try:
            await pausing.pause(sandbox, self.lifecycle, self._agent_closed,
                                TIMEOUT_PAUSE_REASON, lifetime=sandbox.timeout)
        except SandboxError as exc:
            await sandbox.stop(f"timeout: sandbox lifetime reached, and pausing it instead "
                               f"(on_timeout=pause) failed: {exc.message}")

    # -- memory snapshots and forks (corral.node.checkpoints) ------------------------------

    async def snapshot(self, sandbox_id: str) -> MemorySnapshot:
        """Keep a running sandbox's memory, processes (its code contexts' kernels too) and
        files as a snapshot, and let it run on; returns the snapshot.

        The sandbox stands still while it is taken (~0.1-0.5 s; its calls meanwhile answer
        SandboxNotRunningError, "snapshotting"). gVisor only: the namespaces runtime raises
        RuntimeUnavailableError (nothing changed). A copy of a networked sandbox gets a
        network of its own under the same policy. The snapshot stays until
        :meth:`remove_snapshot`; a sandbox started from it gets its memory, so whatever
        secret the sandbox held (docs/snapshots.md).
        """
        sandbox = self.get(sandbox_id)
        return await self._snapshot(sandbox)

    async def _snapshot(self, sandbox: NodeSandbox) -> MemorySnapshot:
        snapshot_id, folder = await asyncio.to_thread(self.snapshots.new_dir)
        try:
            kernels = await pausing.keep_memory(sandbox, self.lifecycle, self._agent_closed,
                                                folder)
            spec = sandbox.handle.spec
            taken = MemorySnapshot(snapshot_id, _record(sandbox), str(spec.rootfs),
                                   tuple(str(layer) for layer in spec.layers), kernels,
                                   time.time())
            return await asyncio.to_thread(self.snapshots.save, taken)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(checkpoints.discard, folder))
            raise

    def list_snapshots(self) -> list[MemorySnapshot]:
        """This node's memory snapshots, oldest first."""
        return self.snapshots.all()

    async def remove_snapshot(self, snapshot_id: str) -> None:
        """Delete a memory snapshot; sandboxes started from it run on. NotFoundError if there
        is none; refused (UnavailableError) while a sandbox is being started from it."""
        self.snapshots.path(snapshot_id)  # a malformed id: not found
        if self._restoring[snapshot_id]:
            raise UnavailableError(f"a sandbox is being started from snapshot {snapshot_id}; "
                                   "retry in a moment")
        await asyncio.to_thread(self.snapshots.remove, snapshot_id)

    async def create_from_snapshot(self, snapshot_id: str, *,
                                   timeout: float = DEFAULT_LIFETIME,
                                   metadata: Mapping[str, str] | None = None) -> NodeSandbox:
        """Start a new sandbox where :meth:`snapshot` kept one: its memory, processes, code
        contexts (their variables too) and files, with the same image, resources, env,
        working directory, user and volumes; its own id, channel and writable layer.

        Args:
            snapshot_id: a snapshot of this node (NotFoundError if there is none).
            timeout: its lifetime in seconds, from now.
            metadata: its labels; default: those of the sandbox the snapshot kept.
        """
        timeout = check_timeout(timeout)
        snapshot = await asyncio.to_thread(self.snapshots.get, snapshot_id)
        labels = check_metadata(metadata) if metadata is not None else dict(
            snapshot.sandbox.metadata)
        return await self._restore_from(snapshot, timeout, labels)

    async def fork(self, sandbox_id: str, count: int, *, timeout: float | None = None,
                   metadata: Mapping[str, str] | None = None) -> list[NodeSandbox]:
        """``count`` new sandboxes (1 to :data:`~corral.node.checkpoints.MAX_FORK`), each
        a copy of a running sandbox as it is now: its memory (a kernel's variables too),
        processes and files, each with its own id, channel and writable layer. The sandbox
        runs on. Taken as :meth:`snapshot` (gVisor only), then restored ``count`` times;
        the snapshot is not kept.

        ``timeout``: each copy's lifetime from now (default: what the sandbox has left);
        ``metadata``: their labels (default: the sandbox's). If a copy fails to start, those
        that started are stopped and the error raised.
        """
        if (not isinstance(count, int) or isinstance(count, bool)
                or not 1 <= count <= checkpoints.MAX_FORK):
            raise InvalidArgumentError(f"a fork makes 1 to {checkpoints.MAX_FORK} copies")
        sandbox = self.get(sandbox_id)
        if timeout is None:
            timeout = max(TIMEOUT_RANGE[0], min(sandbox.expires_at - time.time(),
                                                TIMEOUT_RANGE[1]))
        timeout = check_timeout(timeout)
        labels = check_metadata(metadata) if metadata is not None else dict(sandbox.metadata)
        room = self.settings.max_sandboxes - len(self._sandboxes) - self._pending
        if count > room:
            raise ResourceExhaustedError(f"this node has room for {max(room, 0)} more "
                                         f"sandboxes, not {count}; kill some first")
        snapshot = await self._snapshot(sandbox)
        self._restoring[snapshot.id] += 1  # not removable by anyone while copies start
        try:
            started = await asyncio.gather(
                *(self._restore_from(snapshot, timeout, labels) for _ in range(count)),
                return_exceptions=True)
        finally:
            self._restoring[snapshot.id] -= 1
            self._restoring += Counter()
            await asyncio.shield(asyncio.to_thread(
                checkpoints.discard, self.snapshots.path(snapshot.id)))
        clones = [c for c in started if isinstance(c, NodeSandbox)]
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            await asyncio.gather(*(c.stop("its fork failed") for c in clones),
                                 return_exceptions=True)
            raise failed[0]
        log.info("sandbox %s forked into %s", sandbox.id, ", ".join(c.id for c in clones))
        return clones

    async def _restore_from(self, snapshot: MemorySnapshot, timeout: float,
                            metadata: dict[str, str]) -> NodeSandbox:
        record = snapshot.sandbox
        mounts = record.volumes
        for mount in mounts:
            if mount.volume in self._removing_volumes or not self.volumes.exists(mount.volume):
                raise NotFoundError(f"no volume {mount.volume} (snapshot {snapshot.id} "
                                    "mounts it)")
        self._restoring[snapshot.id] += 1
        try:
            return await self._shielded(self._restore_now(snapshot, timeout, metadata))
        finally:
            self._restoring[snapshot.id] -= 1
            self._restoring += Counter()

    async def _restore_now(self, snapshot: MemorySnapshot, timeout: float,
                           metadata: dict[str, str]) -> NodeSandbox:
        if self._bundle is None:
            raise SandboxError("the node is not started; use `async with Node()`")
        record = snapshot.sandbox
        chosen = await self._runtime(record.runtime)
        try:
            built = self.images.get(record.image)
        except NotFoundError:
            raise NotFoundError(f"snapshot {snapshot.id}: its image {record.image} is gone"
                                ) from None
        if (str(built.rootfs), tuple(str(layer) for layer in built.layers)) != (
                snapshot.rootfs, snapshot.layers):
            raise InvalidArgumentError(f"snapshot {snapshot.id}: its image {record.image} was "
                                       "built again since; it can no longer be restored")
        self._check_host_fits(record.resources)
        used = [m.volume for m in record.volumes]
        self._volume_starts.update(used)
        try:
            async with self._start_turn():
                return await self._restore_started(snapshot, chosen, built, timeout, metadata)
        finally:
            self._volume_starts.subtract(used)
            self._volume_starts += Counter()

    async def _restore_started(self, snapshot: MemorySnapshot, chosen: Runtime, built: Image,
                               timeout: float, metadata: dict[str, str]) -> NodeSandbox:
        record = snapshot.sandbox
        sandbox_id = f"sbx-{secrets.token_hex(8)}"
        # A networked source's copy gets a slot of its own (its own address, rules, resolver
        # and proxy) under the source's policy, as the operator's rules allow it today.
        policy = self.network.check(recorded_policy(record.extra))
        self._pending += 1  # in no list until it runs, as in _start_now
        try:
            binds = await asyncio.to_thread(self._volume_binds, record.volumes)
            net = await self.network.attach(policy) if policy.enabled else None
            spec = self._spec(sandbox_id, built, record.resources, binds, net)
            try:
                handle = await chosen.restore(spec, self.snapshots.path(snapshot.id))
            except BaseException:
                if net is not None:
                    await asyncio.shield(asyncio.to_thread(destroy_net, net))
                raise
            if net is not None:
                handle.extra[net_extra] = net_record(net, policy)
            sandbox = NodeSandbox(self.lifecycle, sandbox_id, record.image, chosen, handle,
                                  record.resources, dict(record.env), record.workdir,
                                  metadata, timeout, self.network, user=record.user,
                                  volumes=record.volumes)
            try:
                agent = await pausing.restored_session(sandbox, self._read_stderr)
            except BaseException as exc:
                await _start_failed(sandbox, exc)
            self._sandboxes[sandbox_id] = sandbox
        finally:
            self._pending -= 1
        await self._go_live(sandbox, agent, net)  # its own gateway, not its source's one
        if snapshot.kernels is not None:
            try:
                await sandbox.code.inherit(snapshot.kernels)
            except SandboxError as exc:  # its contexts say so on their next cell
                log.warning("sandbox %s: the code contexts of snapshot %s are out of reach: "
                            "%s", sandbox_id, snapshot.id, exc.message)
        log.info("sandbox %s started from snapshot %s (of %s)", sandbox_id, snapshot.id,
                 record.id)
        return sandbox

    def _read_stderr(self, sandbox: NodeSandbox, stream: asyncio.StreamReader) -> None:
        asyncio.get_running_loop().create_task(self._drain_stderr(sandbox, stream))

    async def build_image(self, spec: ImageSpec, *, context: Path | None = None,
                          runtime: str | None = None,
                          on_event: Callable[[BuildEvent], None] | None = None) -> Manifest:
        """Build an image from ``spec``, each step in a sandbox of ``runtime`` (default: the
        strongest), and return its manifest; see :mod:`corral.node.builder`.

        ``context``: the folder copy steps take files from. ``on_event``: each step, log
        line and the end, as they happen. Steps whose layer exists are not run again.
        """
        if self._bundle is None:
            raise SandboxError("the node is not started; use `async with Node()`")
        return await builder.build(self, spec, context=context, runtime=runtime,
                                   registries=self.settings.registries,
                                   resources=self.settings.build_resources,
                                   on_event=on_event)

    async def import_image(self, archive: Path, *, tag: str | None = None) -> Manifest:
        """Import the image in an OCI archive (``docker save`` or an OCI layout tar) and
        return its manifest; see :mod:`corral.node.oci`."""
        return await asyncio.to_thread(oci.import_archive, self.images.built, archive,
                                       tag=tag)

    async def snapshot_filesystem(self, sandbox_id: str) -> Manifest:
        """Keep a running sandbox's filesystem as a new image (its image's layers and one
        more) and return its manifest; the sandbox runs on. See :mod:`corral.node.snapshots`."""
        return await snapshots.snapshot_filesystem(self, self.get(sandbox_id))

    async def start_for_build(self, image: Image, *, runtime: str | None,
                              resources: Resources, env: dict[str, str],
                              policy: NetworkPolicy, timeout: float) -> NodeSandbox:
        """A sandbox for one build step: started from ``image`` (a base and the layers of
        the steps before), neither listed nor recorded, like a warm pool's."""
        self._check_host_fits(resources)
        policy = self.network.check(policy)
        chosen = await self._runtime(runtime)
        return await self._shielded(self._start(image.name, chosen, resources, env, {},
                                                timeout, pooled=True, policy=policy,
                                                built=image))

    async def prune_images(self, keep: set[str]) -> PruneResult:
        """Delete the built images not in ``keep`` (ids) and not used by a live sandbox or a
        memory snapshot, and every layer no remaining image uses. Waits for builds under way
        to end."""
        used = {sandbox.image for sandbox in self._sandboxes.values()}
        used |= {snap.sandbox.image for snap in await asyncio.to_thread(self.snapshots.all)}
        return await asyncio.to_thread(self.images.built.prune, keep | used)

    def _check_host_fits(self, resources: Resources) -> None:
        total_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
        cpus = os.cpu_count() or 1
        if resources.memory_mib > total_mib:
            raise InvalidArgumentError(
                f"memory {resources.memory_mib} MiB exceeds this host's {total_mib} MiB")
        if resources.disk_mib > total_mib:
            raise InvalidArgumentError(
                f"disk {resources.disk_mib} MiB exceeds this host's memory ({total_mib} MiB), "
                "which backs the writable layer")
        if resources.cpus > cpus:
            raise InvalidArgumentError(f"cpus {resources.cpus:g} exceeds this host's {cpus}")

    async def _drain_stderr(self, sandbox: NodeSandbox, stream: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while chunk := await stream.read(4096):
                sandbox.stderr_tail += chunk
                del sandbox.stderr_tail[:-STDERR_TAIL]

    def _agent_closed(self, sandbox: NodeSandbox, reason: str) -> None:
        if sandbox.state is SandboxState.RUNNING:
            why = sandbox.limit_hit((0, 0)) or f"the sandbox's agent exited ({reason})"
            # Recorded now, before any waiter wakes: their errors then carry the real reason.
            if sandbox.agent is not None:
                sandbox.agent.close_reason = why
            self.lifecycle.begin_stop(sandbox, why)

    def _forget_stopped(self, sandbox: NodeSandbox, state: SandboxState) -> None:
        if state is SandboxState.STOPPED:
            self._sandboxes.pop(sandbox.id, None)

    def get(self, sandbox_id: str) -> NodeSandbox:
        """The sandbox with this id, running or recently stopped."""
        if not isinstance(sandbox_id, str) or not SANDBOX_ID.match(sandbox_id):
            raise NotFoundError(f"no sandbox {sandbox_id!r:.80}")
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.pooled:
            raise NotFoundError(f"no sandbox {sandbox_id!r}")
        return sandbox

    def list(self, metadata: Mapping[str, str] | None = None,
             state: SandboxState | None = None) -> list[NodeSandbox]:
        """Sandboxes of this node, optionally those whose metadata includes ``metadata``."""
        wanted = dict(metadata or {})
        return [sb for sb in self._sandboxes.values() if not sb.pooled
                and all(sb.metadata.get(k) == v for k, v in wanted.items())
                and (state is None or sb.state is state)]

    async def destroy(self, sandbox_id: str) -> None:
        """Kill a sandbox and remove everything it left on the host."""
        await self.get(sandbox_id).kill()


async def _start_failed(sandbox: NodeSandbox, exc: BaseException) -> NoReturn:
    """Stop a sandbox whose start failed and raise ``exc``, with what its runtime said."""
    detail = bytes(sandbox.stderr_tail[-2000:]).decode(errors="replace").strip()
    await asyncio.shield(sandbox.stop(f"failed to start: {exc}"))
    if isinstance(exc, SandboxError) and detail:
        raise type(exc)(f"{exc.message} (runtime said: {detail})") from exc
    raise exc


def _record(sandbox: NodeSandbox) -> records.SandboxRecord:
    return records.SandboxRecord(
        id=sandbox.id, image=sandbox.image, runtime=sandbox.runtime.name,
        resources=sandbox.resources, env=sandbox.env, workdir=sandbox.workdir,
        user=sandbox.user, volumes=sandbox.volumes, metadata=sandbox.metadata,
        created_at=sandbox.created_at, expires_at=sandbox.expires_at,
        extra=dict(sandbox.handle.extra), state=sandbox.state.value,
        lifetime_left=sandbox.lifetime_left, timeout=sandbox.timeout,
        on_timeout=sandbox.on_timeout, state_reason=sandbox.state_reason,
        paused_at=sandbox.paused_at)


def default_user(image_user: str) -> str | None:
    """The user a sandbox's commands run as by default: its image's (``USER``; a group
    given there is left to the user's own), or None for root."""
    name = image_user.split(":", 1)[0]
    return None if name in ("", "root", "0") else name


def _stop_abandoned(task: asyncio.Task[NodeSandbox]) -> None:
    if not task.cancelled() and task.exception() is None:
        asyncio.get_running_loop().create_task(
            task.result().stop("the caller gave up while it started"))
