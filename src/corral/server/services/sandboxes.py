"""Sandbox lifecycle for tenants: ownership, the node's sandboxes, and their records.

A tenant only ever learns about its own sandboxes: any id it does not own, running or
not, existing or not, is answered exactly like an id that never existed.

The node stops sandboxes on its own too (lifetime timeout, a limit, the agent's death) and
says so: the service listens to its state changes (``Node.on_state``) and a writer task
writes each change to the store, in order, as it happens; a request touching a sandbox
also writes what it sees.

Restarts: the node adopts the sandboxes its predecessor left running; at start the service
matches them with the records still open. A record whose sandbox the node adopted is live
again; one whose sandbox is gone is closed with the reason the node gives; a sandbox the
node adopted that no record claims (created, then the server died before recording it) is
killed, since no tenant could ever reach it.

Idle timeouts: a sandbox created with ``idle_timeout`` is stopped (``on_idle="kill"``) or
paused (``on_idle="pause"``) once that long has passed with nothing using it
(:mod:`.activity`: a call touching it (a command, a file, a get; listing does not count,
so a dashboard polling the list keeps nothing alive), a command or cell running, a stream,
transfer or port connection open). A sandbox paused longer than its ``paused_ttl`` is
killed. The service keeps each live sandbox's :class:`~.activity.Upkeep`; the reaper
(:mod:`.reaper`) acts on them every second. The end of a sandbox's lifetime is the node's
(``on_timeout="pause"`` is set on the node's sandbox).

Each pause and resume says why in the sandbox's ``state_reason`` (the node keeps it):
``paused: by the API``, ``paused: idle for 300 s``, ``resumed: by a command``, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from corral.api import models
from corral.api.errors import (InvalidArgumentError, NotFoundError, SandboxError,
                               SandboxNotRunningError)
from corral.api.limits import DEFAULT_PAUSED_TTL
from corral.api.network import NetworkPolicy
from corral.node import Node, SandboxState
from corral.node import NodeSandbox
from corral.node.validation import SANDBOX_ID, check_metadata
from corral.node.volumes import VolumeMount

from ..quota import TenantQuota, Underway
from ..store import SandboxRecord, SandboxStore
from ..store.snapshots import SnapshotRecord
from ..store._time import from_epoch
from .activity import Upkeep, ask_to_pause

#: What the volume service gives a create: the node's mounts, and the API's description.
VolumeResolver = Callable[[str, Mapping[str, "str | models.VolumeMountSpec"]],
                          Awaitable[tuple[list[VolumeMount], list[models.VolumeMountInfo]]]]

#: What the snapshot service gives a create from a snapshot: the tenant's live snapshot.
SnapshotResolver = Callable[[str, str], Awaitable[SnapshotRecord]]

log = logging.getLogger(__name__)

#: Seconds before a state write that failed (a locked database, say) is tried again.
RETRY_INTERVAL = 1.0
RESTART_REASON = "gone when the server restarted"
ORPHAN_REASON = "no record of it: the server stopped while creating it"
#: What a sandbox's ``state_reason`` says after the API paused or resumed it.
API_PAUSE_REASON = "paused: by the API"
API_RESUME_REASON = "resumed: by the API"
#: A sandbox's state as the store last got it: state, stop reason, expiry, state reason,
#: paused since (epoch seconds).
_Written = tuple[str, str | None, float, str | None, float | None]


@dataclass(frozen=True)
class PortAccess:
    """Who may reach a live sandbox's ports besides its owner: holders of its token, and
    anyone on its public ports."""

    token: str
    public: frozenset[int]


@dataclass(frozen=True)
class _Keeping:
    """What the server keeps of a new sandbox beside the node's: its idle timeout and what
    it does (``on_idle``), what the end of its lifetime does, its paused TTL, its public
    ports, and its volumes as the API describes them."""

    idle_timeout: float | None
    on_idle: str
    on_timeout: str
    paused_ttl: float
    public_ports: tuple[int, ...]
    volumes: tuple[dict[str, Any], ...]


def new_port_token() -> str:
    """A fresh port token: 256 random bits."""
    return secrets.token_urlsafe(32)


class SandboxService:
    def __init__(self, node: Node, store: SandboxStore, ports_domain: str = "localhost",
                 images: Callable[[str, str], Awaitable[str]] | None = None,
                 volumes: VolumeResolver | None = None,
                 snapshots: SnapshotResolver | None = None,
                 paused_ttl: float = DEFAULT_PAUSED_TTL,
                 quota: TenantQuota | None = None) -> None:
        """``images``: what the node calls a tenant's image reference (the image service's
        ``resolve``); None: references go to the node as they are. ``volumes``: the node's
        mounts for a tenant's ``volumes`` (the volume service's ``mounts``); None: a create
        asking for volumes is refused. ``snapshots``: a tenant's snapshot by id (the
        snapshot service's ``get``); None: a create from a snapshot is refused.
        ``paused_ttl``: the server's (a create's default, and the most it may ask for).
        ``quota``: what one tenant may hold at once (none: no caps of its own)."""
        self._node = node
        self._images = images
        self._volumes = volumes
        self._snapshots = snapshots
        self._store = store
        #: Host-based port URLs are ``{port}-{id}.{ports_domain}``.
        self.ports_domain = ports_domain
        self._live: dict[str, tuple[str, NodeSandbox]] = {}
        self._ports: dict[str, PortAccess] = {}
        self._written: dict[str, _Written] = {}
        self.paused_ttl = paused_ttl
        self.quota = quota or TenantQuota()
        self._underway = Underway()
        self._changed: asyncio.Queue[NodeSandbox] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._upkeep: dict[str, Upkeep] = {}
        #: Called with a sandbox's id once it has stopped (the command registry listens).
        self.on_stopped: list[Callable[[str], None]] = []

    async def start(self) -> None:
        """Take back what a previous run left: live again if the node adopted it, else closed."""
        # Listening first: an adopted sandbox may stop (its lifetime passed) while this runs.
        self._unsubscribe = self._node.on_state(self._on_state)
        self._writer = asyncio.get_running_loop().create_task(self._write_changes())
        adopted = {sandbox.id: sandbox for sandbox in self._node.list()}
        for record in await asyncio.to_thread(self._store.active):
            sandbox = adopted.pop(record.id, None)
            if sandbox is None:
                reason = self._node.lost.get(record.id, RESTART_REASON)
                await asyncio.to_thread(self._store.set_state, record.id, "stopped", reason,
                                        record.expires_at)
                log.warning("sandbox %s of tenant %s is gone: %s", record.id, record.tenant,
                            reason)
                continue
            self._live[record.id] = (record.tenant, sandbox)
            token = record.port_token
            if token is None:  # recorded before ports existed
                token = new_port_token()
                await asyncio.to_thread(self._store.set_ports, record.id, token,
                                        record.public_ports)
            self._ports[record.id] = PortAccess(token, frozenset(record.public_ports))
            self._upkeep[record.id] = Upkeep(
                record.idle_timeout, record.on_idle,
                record.paused_ttl if record.paused_ttl is not None else self.paused_ttl)
            await self._sync(sandbox)
            log.info("sandbox %s of tenant %s re-attached", record.id, record.tenant)
        for sandbox in adopted.values():
            await sandbox.stop(ORPHAN_REASON)
            log.warning("sandbox %s killed: %s", sandbox.id, ORPHAN_REASON)

    async def close(self) -> None:
        """Stop listening; call :meth:`record_all` once the node has stopped its sandboxes."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def record_all(self) -> None:
        """Write every sandbox's state now (after the node closed: stopped, or left running
        for the next server to re-attach)."""
        for _, sandbox in list(self._live.values()):
            await self._sync(sandbox)

    async def create(self, tenant: str, request: models.SandboxCreate) -> models.SandboxInfo:
        paused_ttl = self.paused_ttl if request.paused_ttl is None else request.paused_ttl
        if paused_ttl > self.paused_ttl:
            raise InvalidArgumentError(
                f"paused_ttl {paused_ttl:.15g} s is more than this server allows "
                f"({self.paused_ttl:.15g} s, its CORRAL_PAUSED_TTL); ask for less, or leave it "
                "out for the server's")
        if request.snapshot is not None:
            return await self._from_snapshot(tenant, request, paused_ttl)
        image = (request.image if self._images is None
                 else await self._images(tenant, request.image))
        mounts: list[VolumeMount] = []
        described: list[models.VolumeMountInfo] = []
        if request.volumes:
            if self._volumes is None:
                raise InvalidArgumentError("this server has no volumes")
            mounts, described = await self._volumes(tenant, request.volumes)
        resources = request.resources.to_resources()
        with self._admit(tenant, 1, resources.gpus):
            sandbox = await self._node.create(
                image, runtime=request.runtime, resources=resources,
                env=request.env, timeout=request.timeout, metadata=request.metadata,
                network=models.network_policy(request.network), volumes=mounts)
            await self._register(tenant, sandbox, request.image, _Keeping(
                request.idle_timeout, request.on_idle, request.on_timeout, paused_ttl,
                tuple(request.public_ports), tuple(m.model_dump() for m in described)))
        log.info("sandbox %s created for tenant %s", sandbox.id, tenant)
        return await self.describe(tenant, sandbox.id)

    async def _register(self, tenant: str, sandbox: NodeSandbox, image: str,
                        keeping: _Keeping) -> None:
        """Record a sandbox the node started for ``tenant`` and make it live (``image``:
        the tenant's reference to its image). An end its runtime cannot pause is refused
        here, and the sandbox stopped."""
        try:
            await ask_to_pause(sandbox, keeping.on_idle, keeping.on_timeout)
        except BaseException as exc:
            with contextlib.suppress(SandboxError):
                await asyncio.shield(sandbox.stop(f"refused at creation: {exc}"))
            raise
        info = sandbox.info
        access = PortAccess(new_port_token(), frozenset(keeping.public_ports))
        record = SandboxRecord(
            id=info.id, tenant=tenant, image=image, runtime=info.runtime,
            state=info.state, resources=info.resources.model_dump(), metadata=info.metadata,
            created_at=info.created_at, expires_at=info.expires_at,
            stop_reason=info.stop_reason, idle_timeout=keeping.idle_timeout,
            network=sandbox.network.policy.to_wire(), port_token=access.token,
            public_ports=tuple(sorted(access.public)), volumes=keeping.volumes,
            on_idle=keeping.on_idle, on_timeout=keeping.on_timeout,
            paused_ttl=keeping.paused_ttl)
        written = _state_of(sandbox)
        try:
            await asyncio.to_thread(self._store.add, record)
        except BaseException:
            with contextlib.suppress(SandboxError):
                await asyncio.shield(sandbox.stop("recording it failed"))
            raise
        # Live only once recorded; whatever changed while the record was written, describe()
        # writes (it syncs a live sandbox).
        self._written[sandbox.id] = written
        self._live[sandbox.id] = (tenant, sandbox)
        self._ports[sandbox.id] = access
        self._upkeep[sandbox.id] = Upkeep(keeping.idle_timeout, keeping.on_idle,
                                          keeping.paused_ttl)

    async def _from_snapshot(self, tenant: str, request: models.SandboxCreate,
                             paused_ttl: float) -> models.SandboxInfo:
        """A create from one of the tenant's snapshots: a files-only one is a create on its
        image; a memory one restores the sandbox it kept, which fixes everything but its
        lifetime, labels, idle and lifetime ends, paused TTL and public ports."""
        if self._snapshots is None or request.snapshot is None:
            raise InvalidArgumentError("this server has no snapshots")
        snapshot = await self._snapshots(tenant, request.snapshot)
        given = request.model_fields_set
        if not snapshot.memory:
            if "image" in given:
                raise InvalidArgumentError("a sandbox from a snapshot runs the snapshot's "
                                           "image; leave image out")
            return await self.create(tenant, request.model_copy(
                update={"image": snapshot.image, "snapshot": None}))
        fixed = sorted(given & {"image", "runtime", "resources", "env", "network", "volumes"})
        if fixed:
            raise InvalidArgumentError(
                f"a sandbox from a memory snapshot keeps the snapshot's {', '.join(fixed)}; "
                "leave them out")
        source = await asyncio.to_thread(self._store.get, snapshot.sandbox_id)
        if source is not None and source.tenant != tenant:
            source = None
        # A memory snapshot never holds a GPU: a GPU sandbox cannot be checkpointed.
        with self._admit(tenant, 1, 0):
            sandbox = await self._node.create_from_snapshot(
                snapshot.id, timeout=request.timeout,
                metadata=request.metadata if "metadata" in given else None)
            await self._register(tenant, sandbox, source.image if source else snapshot.image,
                                 _Keeping(request.idle_timeout, request.on_idle,
                                          request.on_timeout, paused_ttl,
                                          tuple(request.public_ports),
                                          tuple(source.volumes) if source else ()))
        log.info("sandbox %s started from snapshot %s for tenant %s", sandbox.id,
                 snapshot.id, tenant)
        return await self.describe(tenant, sandbox.id)

    async def fork(self, tenant: str, sandbox_id: str, request: models.ForkRequest
                   ) -> models.SandboxList:
        """``request.count`` copies of the tenant's running sandbox (a paused one is resumed
        first); each keeps its source's image reference, idle timeout and its end, lifetime
        end, paused TTL, public ports and volumes, with a port token of its own."""
        sandbox = await self.owned(tenant, sandbox_id)
        source = await self._record(tenant, sandbox_id)
        keeping = _Keeping(source.idle_timeout, source.on_idle, source.on_timeout,
                           source.paused_ttl if source.paused_ttl is not None
                           else self.paused_ttl, source.public_ports, source.volumes)
        with self._admit(tenant, request.count, request.count * sandbox.resources.gpus):
            clones = await self._node.fork(sandbox.id, request.count,
                                           timeout=request.timeout, metadata=request.metadata)
            for clone in clones:
                await self._register(tenant, clone, source.image, keeping)
        log.info("sandbox %s of tenant %s forked into %d", sandbox_id, tenant, len(clones))
        return models.SandboxList(sandboxes=[await self.describe(tenant, c.id)
                                             for c in clones])

    async def update_network(self, tenant: str, sandbox_id: str,
                             network: models.NetworkSpec) -> models.NetworkInfo:
        """Replace a running sandbox's network policy (new connections see it at once)."""
        sandbox = await self.owned(tenant, sandbox_id, "a network change")
        info = await sandbox.network.update(network)
        await asyncio.to_thread(self._store.set_network, sandbox_id,
                                sandbox.network.policy.to_wire())
        return info

    async def ports(self, tenant: str, sandbox_id: str) -> models.PortsInfo:
        """How the tenant's running sandbox's ports are reached: its token, its public ports."""
        await self.owned(tenant, sandbox_id, "a ports call")
        access = self._ports[sandbox_id]
        return models.PortsInfo(token=access.token, public=sorted(access.public),
                                domain=self.ports_domain)

    async def set_public_ports(self, tenant: str, sandbox_id: str,
                               public: list[int]) -> models.PortsInfo:
        """Make exactly ``public`` of the sandbox's ports reachable without a credential."""
        await self.owned(tenant, sandbox_id, "a ports call")
        access = PortAccess(self._ports[sandbox_id].token, frozenset(public))
        await asyncio.to_thread(self._store.set_ports, sandbox_id, access.token,
                                tuple(sorted(access.public)))
        self._ports[sandbox_id] = access
        return await self.ports(tenant, sandbox_id)

    def port_access(self, sandbox_id: str) -> tuple[NodeSandbox, PortAccess] | None:
        """A running sandbox and who may reach its ports, whoever asks; None if it is not
        running here (the port proxy checks the credential)."""
        owned = self._live.get(sandbox_id)
        access = self._ports.get(sandbox_id)
        if owned is None or access is None or owned[1].state is not SandboxState.RUNNING:
            return None
        return owned[1], access

    def is_paused(self, sandbox_id: str) -> bool:
        """Whether a live sandbox (anyone's) is paused."""
        owned = self._live.get(sandbox_id)
        return owned is not None and owned[1].is_paused

    def owner(self, sandbox_id: str) -> str | None:
        """The tenant of a live sandbox."""
        owned = self._live.get(sandbox_id)
        return owned[0] if owned is not None else None

    def live_ids(self) -> set[str]:
        """The sandboxes the server holds now (not yet seen stopped), every tenant's."""
        return set(self._live)

    def watched(self, tenant: str, sandbox_id: str) -> NodeSandbox | None:
        """The tenant's running sandbox, to look at without using it (no activity counted,
        nothing resumed); None when it is not running."""
        owned = self._live.get(sandbox_id)
        if owned is None or owned[0] != tenant or owned[1].state is not SandboxState.RUNNING:
            return None
        return owned[1]

    def peek(self, tenant: str, sandbox_id: str) -> NodeSandbox | None:
        """The tenant's live sandbox in whatever state, to look at without using it (no
        activity counted, nothing resumed); None when it is not live or not the tenant's."""
        owned = self._live.get(sandbox_id)
        return owned[1] if owned is not None and owned[0] == tenant else None

    def running(self, tenant: str, sandbox_id: str) -> NodeSandbox:
        """The tenant's running sandbox ``sandbox_id``, for commands and files."""
        owned = self._live.get(sandbox_id)
        if owned is None or owned[0] != tenant:
            # Not live, or not the tenant's: the store says which error to give.
            raise NotFoundError(f"no sandbox {sandbox_id!r:.80}")
        self.touch(sandbox_id)
        sandbox = owned[1]
        if sandbox.state is not SandboxState.RUNNING:
            raise SandboxNotRunningError(f"sandbox {sandbox_id} is {sandbox.state.value}"
                                         + (f": {sandbox.stop_reason}"
                                            if sandbox.stop_reason else ""))
        return sandbox

    async def owned(self, tenant: str, sandbox_id: str, use: str = "an API call"
                    ) -> NodeSandbox:
        """Like :meth:`running`, but a stopped sandbox of the tenant's says why it stopped,
        and a paused one (or one being paused) is resumed first (auto-resume, as E2B does);
        ``use`` names what resumed it in its ``state_reason`` (``resumed: by {use}``)."""
        live = self._live.get(sandbox_id)
        if live is not None and live[0] == tenant and (live[1].is_paused
                                                       or live[1].changing == "pausing"):
            await self._resume(live[1], f"resumed: by {use}")
        try:
            return self.running(tenant, sandbox_id)
        except NotFoundError:
            record = await self._record(tenant, sandbox_id)
            raise SandboxNotRunningError(
                f"sandbox {sandbox_id} is {record.state}"
                + (f": {record.stop_reason}" if record.stop_reason else "")) from None

    async def pause(self, tenant: str, sandbox_id: str) -> models.SandboxInfo:
        """Pause the tenant's running sandbox (a paused one stays so): its memory and files
        are kept (gVisor: on disk, CPU and memory freed; namespaces: frozen in place) and
        its lifetime clock stops. Any later call on it resumes it."""
        live = await self._live_one(tenant, sandbox_id)
        await self._node.pause(sandbox_id, reason=API_PAUSE_REASON)
        await self._sync(live[1])
        return await self.describe(tenant, sandbox_id)

    async def resume(self, tenant: str, sandbox_id: str) -> models.SandboxInfo:
        """Resume the tenant's paused sandbox (a running one stays so)."""
        live = await self._live_one(tenant, sandbox_id)
        await self._resume(live[1], API_RESUME_REASON)
        return await self.describe(tenant, sandbox_id)

    async def _resume(self, sandbox: NodeSandbox, reason: str) -> None:
        live = self._live.get(sandbox.id)
        if sandbox.is_paused and sandbox.resources.gpus and live is not None:
            # A paused sandbox holds no GPU: its resume takes them again, within the quota.
            with self._admit(live[0], 0, sandbox.resources.gpus):
                await self._node.resume(sandbox.id, reason=reason)
        else:
            await self._node.resume(sandbox.id, reason=reason)
        self.touch(sandbox.id)
        await self._sync(sandbox)

    def held(self, tenant: str) -> tuple[int, int]:
        """The tenant's live sandboxes (paused ones included) and the GPUs they hold (paused
        ones hold none), creates under way counted."""
        sandboxes, gpus = self._underway.of(tenant)
        for owner, sandbox in self._live.values():
            if owner != tenant or sandbox.state in (SandboxState.STOPPING,
                                                    SandboxState.STOPPED):
                continue
            sandboxes += 1
            if not sandbox.is_paused:
                gpus += sandbox.resources.gpus
        return sandboxes, gpus

    def _admit(self, tenant: str, sandboxes: int,
               gpus: int) -> contextlib.AbstractContextManager[None]:
        """Count ``sandboxes`` more and ``gpus`` more against the tenant's quota while they
        start (they are live, and counted as such, once registered); refused past it.
        Without a cap that applies, nothing is counted."""
        quota = self.quota
        if not (quota.sandboxes and sandboxes) and not (quota.gpus and gpus):
            return contextlib.nullcontext()
        quota.check(self.held(tenant), (sandboxes, gpus), "server")
        return self._underway.adding(tenant, sandboxes, gpus)

    async def _live_one(self, tenant: str, sandbox_id: str) -> tuple[str, NodeSandbox]:
        """The tenant's live sandbox; not found, or stopped (saying why), otherwise."""
        live = self._live.get(sandbox_id)
        if live is None or live[0] != tenant:
            record = await self._record(tenant, sandbox_id)
            raise SandboxNotRunningError(
                f"sandbox {sandbox_id} is {record.state}"
                + (f": {record.stop_reason}" if record.stop_reason else ""))
        return live

    async def describe(self, tenant: str, sandbox_id: str) -> models.SandboxInfo:
        owned = self._live.get(sandbox_id)
        if owned is not None and owned[0] == tenant:
            self.touch(sandbox_id)
            await self._sync(owned[1])
        return self._wire(await self._record(tenant, sandbox_id))

    async def list(self, tenant: str, metadata: Mapping[str, str] | None = None,
                   state: SandboxState | None = None) -> models.SandboxList:
        wanted = check_metadata(metadata)
        for owner, sandbox in list(self._live.values()):
            if owner == tenant:
                await self._sync(sandbox)
        records = await asyncio.to_thread(self._store.list, tenant, wanted,
                                          state.value if state else None)
        return models.SandboxList(sandboxes=[self._wire(r) for r in records])

    async def set_timeout(self, tenant: str, sandbox_id: str, seconds: float) -> models.SandboxInfo:
        sandbox = await self.owned(tenant, sandbox_id, "a timeout change")
        await sandbox.set_timeout(seconds)
        return await self.describe(tenant, sandbox_id)

    async def kill(self, tenant: str, sandbox_id: str) -> None:
        """Stop the sandbox; killing a stopped one of the tenant's is not an error."""
        owned = self._live.get(sandbox_id)
        if owned is None or owned[0] != tenant:
            await self._record(tenant, sandbox_id)
            return
        await owned[1].kill()
        await self._sync(owned[1])

    def tenanted(self) -> tuple[tuple[str, NodeSandbox], ...]:
        """Every live sandbox with its tenant, to look at without using it (the metrics
        sampler: nothing is touched or resumed)."""
        return tuple(self._live.values())

    async def check_owner(self, tenant: str, sandbox_id: str) -> None:
        """NotFoundError unless ``sandbox_id`` is the tenant's (live or recorded), without
        touching it."""
        owned = self._live.get(sandbox_id)
        if owned is None or owned[0] != tenant:
            await self._record(tenant, sandbox_id)

    def upkept(self) -> tuple[tuple[NodeSandbox, Upkeep], ...]:
        """Every live sandbox (every tenant's) with its use so far (for the reaper)."""
        return tuple((sandbox, upkeep) for _, sandbox in self._live.values()
                     if (upkeep := self._upkeep.get(sandbox.id)) is not None)

    async def record(self, sandbox: NodeSandbox) -> None:
        """Write a live sandbox's state to the store now (after the reaper acted on it)."""
        await self._sync(sandbox)

    def touch(self, sandbox_id: str) -> None:
        """Count activity on the sandbox now (a call, each piece of a long transfer)."""
        upkeep = self._upkeep.get(sandbox_id)
        if upkeep is not None:
            upkeep.touch()

    @contextlib.asynccontextmanager
    async def using(self, tenant: str, sandbox_id: str, use: str = "an API call"
                    ) -> AsyncIterator[NodeSandbox]:
        """:meth:`owned`, held in use (never idle) until the block ends: for a call that
        may take a while (starting a kernel, removing a tree)."""
        sandbox = await self.owned(tenant, sandbox_id, use)
        with self.in_use(sandbox_id):
            yield sandbox

    @contextlib.contextmanager
    def in_use(self, sandbox_id: str) -> Iterator[None]:
        """Hold the sandbox in use while the block runs (a stream, a transfer, a port
        connection): its idle timeout does not run out meanwhile."""
        upkeep = self._upkeep.get(sandbox_id)
        if upkeep is None:
            yield
            return
        with upkeep.opened():
            yield

    async def _record(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        if not SANDBOX_ID.match(sandbox_id):
            raise NotFoundError(f"no sandbox {sandbox_id!r:.80}")
        record = await asyncio.to_thread(self._store.get, sandbox_id)
        if record is None or record.tenant != tenant:
            raise NotFoundError(f"no sandbox {sandbox_id!r}")
        return record

    async def _sync(self, sandbox: NodeSandbox) -> None:
        """Write the sandbox's state to the store if it changed since the last write."""
        now = _state_of(sandbox)
        if self._written.get(sandbox.id) != now:
            await asyncio.to_thread(self._store.set_state, sandbox.id, now[0], now[1],
                                    from_epoch(now[2]), now[3],
                                    None if now[4] is None else from_epoch(now[4]))
            self._written[sandbox.id] = now
        if sandbox.state is SandboxState.STOPPED and sandbox.id in self._live:
            del self._live[sandbox.id]
            self._written.pop(sandbox.id, None)
            self._upkeep.pop(sandbox.id, None)
            self._ports.pop(sandbox.id, None)
            for hook in self.on_stopped:
                hook(sandbox.id)

    def _on_state(self, sandbox: NodeSandbox, state: SandboxState) -> None:
        """The node's listener: queue the change for :meth:`_write_changes` (never blocks)."""
        if sandbox.id in self._live:
            self._changed.put_nowait(sandbox)

    async def _write_changes(self) -> None:
        """Write each state change the node announced to the store, in order."""
        while True:
            sandbox = await self._changed.get()
            try:
                await self._sync(sandbox)
            except Exception:
                log.exception("recording the state of sandbox %s failed; retrying in %g s",
                              sandbox.id, RETRY_INTERVAL)
                asyncio.get_running_loop().call_later(RETRY_INTERVAL, self._changed.put_nowait,
                                                      sandbox)

    def _wire(self, record: SandboxRecord) -> models.SandboxInfo:
        stopped = record.state in ("stopping", "stopped")
        return models.SandboxInfo(
            id=record.id, image=record.image, runtime=record.runtime,
            state=record.state,  # type: ignore[arg-type]
            resources=models.ResourcesSpec.model_validate(record.resources),
            metadata=record.metadata, created_at=record.created_at,
            expires_at=record.expires_at, stop_reason=record.stop_reason,
            state_reason=(record.stop_reason if stopped and record.stop_reason
                          else record.state_reason),
            paused_at=record.paused_at if record.state == "paused" else None,
            idle_timeout=record.idle_timeout,
            on_idle=record.on_idle,  # type: ignore[arg-type]
            on_timeout=record.on_timeout,  # type: ignore[arg-type]
            paused_ttl=(record.paused_ttl if record.paused_ttl is not None
                        else self.paused_ttl),
            network=_network_spec(record.network),
            volumes=[models.VolumeMountInfo.model_validate(v) for v in record.volumes],
            ports=None if record.port_token is None else models.PortsInfo(
                token=record.port_token, public=sorted(record.public_ports),
                domain=self.ports_domain))


def _state_of(sandbox: NodeSandbox) -> _Written:
    return (sandbox.state.value, sandbox.stop_reason, sandbox.expires_at,
            sandbox.state_reason, sandbox.paused_at)


def _network_spec(recorded: object) -> models.NetworkSpec:
    """A stored policy's wire form; one that no longer parses reads as none."""
    try:
        return models.network_spec(NetworkPolicy.parse(recorded))
    except InvalidArgumentError:
        log.error("a stored network policy does not parse: %r", recorded)
        return "none"
