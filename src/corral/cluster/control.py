"""The control plane's view of the cluster, kept by every API server (:class:`Cluster`).

Each API server connects to Ray as a driver and, every ``heartbeat`` seconds, asks each
node actor to describe its node (one Ray call each, in parallel). What they say feeds
placement (:mod:`.placement`) and the shared records (:mod:`.directory`):

* a node whose actor died (Ray says so within about a second and a half of its host's
  loss), or that has not answered for ``lost_after`` seconds, is **lost**: its sandboxes
  are marked ``lost`` with the reason, in one statement, and calls on them get a clear
  error (410) instead of hanging;
* a node that answers again **reconciles**: the sandboxes it still runs (adopted by its
  new node server from the same data dir) are live again, and those the control plane
  gave up on (lost longer than ``grace`` seconds) are ended on it;
* a sandbox that ended on its node (its lifetime, a kill) is marked stopped once a
  heartbeat no longer lists it.

With ``autostart`` the control plane starts a node actor on every Ray node that has none
(``corral serve --cluster`` on a Ray cluster whose hosts run nothing else); otherwise hosts
join with ``corral node join``. Several API servers may run this at once: every write says
what it expects, so they agree whatever the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from corral.api.errors import (InvalidArgumentError, NotFoundError, SandboxError,
                               SandboxNotRunningError, UnavailableError, error_from_code)
from corral.api.resources import parse_gpu

from ..node.pools import PoolSpec
from ..server.quota import TenantQuota, Underway
from ..server.store.keys import KeyRef
from . import ray_boot
from .directory import LIVE, LOST, STOPPED, Directory, Placement
from .node_actor import ACTOR_PREFIX, NAMESPACE, actor_class
from .placement import NodeView, Want, place
from .trust import load_secret, node_token

log = logging.getLogger(__name__)
events = logging.getLogger("corral.server.events")

NODE_NAME: Final = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$")
#: Seconds between two rounds of finding actors (new nodes, nodes back) in Ray.
DISCOVER_INTERVAL: Final = 2.0
#: A sandbox a node no longer lists is taken as ended only if created this long before.
SETTLE: Final = 10.0
#: Seconds between two writes of a node's "seen" time when nothing else about it changed
#: (its row says when it last answered to within this; every heartbeat would be a write).
SEEN_EVERY: Final = 10.0
#: Seconds a live sandbox's placement is used without reading it again, and how many are.
PLACEMENT_TTL: Final = 1.0
MAX_PLACEMENTS: Final = 100_000
#: Placements tried for one create before it is refused (other nodes after a failure).
PLACEMENT_TRIES: Final = 3


@dataclass(frozen=True)
class ClusterSettings:
    """How an API server joins its cluster.

    Attributes:
        address: the Ray cluster's GCS address (``HOST:PORT``, or ``ray://HOST:PORT``), or
            ``auto`` to start a Ray head on this machine (:mod:`.ray_boot`).
        secret_file: the cluster secret (:mod:`.trust`), made here with ``auto``.
        host: the address this machine's Ray processes use (``auto``) and the driver
            connects from: a private interface, or loopback for one machine.
        heartbeat: seconds between two descriptions of each node.
        lost_after: seconds without an answer after which a node is lost.
        grace: seconds a lost node's sandboxes are waited for before they are given up.
        autostart: start a node actor on every Ray node that has none.
        node_root: where an autostarted node keeps its data (``<node_root>/<name>``).
        node_env: variables set for autostarted node servers (``CORRAL_IMAGE_DIR``, ...).
        cpu_overcommit: sandboxes' CPU limits a node may hold, per core.
        pools: the cluster's warm pools, each spread over the nodes that take sandboxes
            (:func:`spread_pools`); a node lost, drained or cordoned, its share moves to
            the others.
    """

    address: str
    secret_file: Path
    host: str = ray_boot.DEFAULT_HOST
    heartbeat: float = 1.0
    lost_after: float = 3.0
    grace: float = 300.0
    autostart: bool = True
    node_root: Path = Path("/var/lib/corral/nodes")
    node_env: Mapping[str, str] = field(default_factory=dict)
    cpu_overcommit: float = 4.0
    pools: tuple[PoolSpec, ...] = ()


def spread_pools(pools: Sequence[PoolSpec], nodes: Sequence[str]) -> dict[str, str]:
    """Each node's share of the cluster's pools, in ``CORRAL_POOLS`` syntax: a pool of
    size S over N nodes gives each S // N, and one more to the first S % N (by name)."""
    names = sorted(nodes)
    shares: dict[str, list[str]] = {name: [] for name in names}
    for spec in pools:
        for index, name in enumerate(names):
            size = spec.size // len(names) + (1 if index < spec.size % len(names) else 0)
            if size:
                shares[name].append(replace(spec, size=size).text)
    return {name: ",".join(specs) for name, specs in shares.items()}


@dataclass
class _Node:
    view: NodeView
    handle: Any
    last_ok: float
    lost: bool = False
    #: The pools last asked of it (``CORRAL_POOLS`` syntax); None: none asked yet.
    pools: str | None = None
    #: Sandboxes placed here that its last description may not list yet:
    #: id -> (tenant, cpus, memory MiB, when placed), kept for SETTLE seconds at most.
    placed: dict[str, tuple[str, float, int, float]] = field(default_factory=dict)
    #: The pools of its last description, as it gave them.
    pools_seen: list[dict[str, Any]] = field(default_factory=list)

    def hold(self, sandbox_id: str, tenant: str, cpus: float, memory_mib: int) -> None:
        self.placed[sandbox_id] = (tenant, cpus, memory_mib, time.monotonic())
        self.view.sandboxes[sandbox_id] = (tenant, cpus, memory_mib)

    def describe(self, view: NodeView) -> None:
        """Take ``view`` from a heartbeat, with what was placed since it was asked for."""
        now = time.monotonic()
        for sandbox_id, (tenant, cpus, memory, at) in list(self.placed.items()):
            if sandbox_id in view.sandboxes or now - at > SETTLE:
                del self.placed[sandbox_id]
            else:
                view.sandboxes[sandbox_id] = (tenant, cpus, memory)
        self.view = view


class Cluster:
    """The nodes of a cluster and the calls that reach them (one per API server)."""

    def __init__(self, settings: ClusterSettings, directory: Directory,
                 quota: TenantQuota | None = None) -> None:
        self.settings = settings
        self.directory = directory
        #: What one tenant may hold on the whole cluster (counted from the directory).
        self.quota = quota or TenantQuota()
        #: Creates under way through this API server.
        self._underway = Underway()
        self._nodes: dict[str, _Node] = {}
        self._token = ""
        self._head: ray_boot.Head | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending = 0
        self._ended: set[str] = set()
        #: Ray calls made, by method (``corral bench --cluster`` reads them).
        self.ray_calls: dict[str, int] = {}
        #: Live placements read lately: id -> (placement, when read).
        self._placements: dict[str, tuple[Placement, float]] = {}
        #: When each node's row was last written: (url, labels, monotonic time).
        self._written: dict[str, tuple[str, dict[str, str], float]] = {}

    @property
    def token(self) -> str:
        return self._token

    async def start(self) -> None:
        settings = self.settings
        auto = settings.address == "auto"
        secret = load_secret(settings.secret_file, create=auto)
        ray_boot.use_token(secret, settings.host)
        address = settings.address
        if auto:
            self._head = await asyncio.to_thread(ray_boot.start_head, settings.host,
                                                 settings.secret_file.parent / "ray")
            address = self._head.address
            events.info("Ray head started at %s", address, extra={"event": "cluster.head"})
        # In this thread: Ray's driver wants the main thread, where the server starts it
        # (it blocks the loop for the moment it takes, before any request is served).
        ray_boot.connect(address, settings.host)
        self._token = node_token(secret)
        await self._discover()
        self._task = asyncio.create_task(self._monitor(), name="cluster-monitor")

    async def close(self) -> None:
        """Let go of Ray (the nodes run on: the cluster outlives an API server), and stop
        the head this server started, if it did."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        ray_boot.disconnect()  # in the thread that connected (see start)
        if self._head is not None:
            await asyncio.to_thread(self._head.stop)

    # -- what the API asks -----------------------------------------------------------------

    def views(self) -> list[NodeView]:
        return [node.view for node in self._nodes.values()]

    def pools(self) -> list[dict[str, Any]]:
        """The warm pools of the nodes that answer, summed by image and runtime."""
        summed: dict[tuple[str, str], dict[str, Any]] = {}
        for node in self._nodes.values():
            if node.lost:
                continue
            for pool in node.pools_seen:
                entry = summed.setdefault((str(pool["image"]), str(pool["runtime"])), {
                    "image": pool["image"], "runtime": pool["runtime"], "size": 0,
                    "ready": 0, "hits": 0, "misses": 0})
                for field_name in ("size", "ready", "hits", "misses"):
                    entry[field_name] += int(pool.get(field_name, 0))
        return [summed[k] for k in sorted(summed)]

    def ready_nodes(self) -> list[str]:
        return sorted(name for name, node in self._nodes.items()
                      if not node.lost and node.view.ready)

    def node_url(self, name: str) -> str:
        return self.node_address(name)[0]

    def node_address(self, name: str) -> tuple[str, str]:
        """A node server's URL and the PEM of the CA to trust for it."""
        node = self._nodes.get(name)
        if node is None or node.lost or not node.view.url:
            raise UnavailableError(f"node {name} is not reachable now; try again shortly")
        return node.view.url, node.view.ca

    def locate(self, sandbox_id: str) -> Placement | None:
        """Where a sandbox runs, whoever's it is. A live one is remembered for
        ``PLACEMENT_TTL`` seconds (a node's loss, which this server marks itself, forgets
        its sandboxes at once; another server's marking is seen within that time)."""
        cached = self._placements.get(sandbox_id)
        if cached is not None and time.monotonic() - cached[1] < PLACEMENT_TTL:
            return cached[0]
        found = self.directory.get(sandbox_id)
        if found is not None and found.state == LIVE:
            if len(self._placements) >= MAX_PLACEMENTS:
                self._placements.pop(next(iter(self._placements)))
            self._placements[sandbox_id] = (found, time.monotonic())
        return found

    def placement(self, tenant: str, sandbox_id: str) -> Placement:
        """Where the tenant's sandbox runs: NotFoundError if it is not theirs; a lost one
        is SandboxNotRunningError with the reason."""
        found = self.locate(sandbox_id)
        if found is None or found.tenant != tenant:
            raise NotFoundError(f"no sandbox {sandbox_id!r:.80}")
        if found.state == LOST:
            raise SandboxNotRunningError(
                f"sandbox {sandbox_id} is lost: {found.reason}. Its state is unknown; if "
                f"its node comes back within {self.settings.grace:g} s of the loss it is "
                "adopted again, else it is ended. Create a new sandbox to go on now.")
        return found

    def forget(self, sandbox_id: str) -> None:
        """A sandbox ended (killed through this server): it holds no place any more."""
        self._placements.pop(sandbox_id, None)
        for node in self._nodes.values():
            node.placed.pop(sandbox_id, None)
            node.view.sandboxes.pop(sandbox_id, None)

    async def create(self, key: KeyRef, body: dict[str, Any], *, image: str, cpus: float,
                     memory_mib: int, selector: Mapping[str, str], gpus: int = 0,
                     gpu_model: str | None = None) -> dict[str, Any]:
        """Place a sandbox, start it on its node, and record where it runs."""
        with await self._admit(key.tenant, gpus):
            return await self._create(key, body, image=image, cpus=cpus,
                                      memory_mib=memory_mib, selector=selector, gpus=gpus,
                                      gpu_model=gpu_model)

    async def _admit(self, tenant: str, gpus: int) -> contextlib.AbstractContextManager[None]:
        """Check one more sandbox (with ``gpus``) against the tenant's quota, counting its
        live and lost sandboxes in the directory (every API server's) and the creates under
        way here; the returned context counts this one as under way. Several API servers
        admitting at the same moment can each pass the last free place."""
        quota = self.quota
        if not quota.sandboxes and not (quota.gpus and gpus):
            return contextlib.nullcontext()
        held_sandboxes = held_gpus = 0
        if quota.gpus and gpus:  # the GPUs are in the rows' descriptions
            rows = await asyncio.to_thread(self.directory.of_tenant, tenant, (LIVE, LOST))
            held_sandboxes, held_gpus = len(rows), sum(_gpus_of(row.info) for row in rows)
        else:
            held_sandboxes = await asyncio.to_thread(self.directory.count, tenant)
        underway = self._underway.of(tenant)
        quota.check((held_sandboxes + underway[0], held_gpus + underway[1]), (1, gpus),
                    "cluster")
        return self._underway.adding(tenant, 1, gpus)

    async def _create(self, key: KeyRef, body: dict[str, Any], *, image: str, cpus: float,
                      memory_mib: int, selector: Mapping[str, str], gpus: int,
                      gpu_model: str | None) -> dict[str, Any]:
        want = Want(tenant=key.tenant, image=image, cpus=cpus, memory_mib=memory_mib,
                    selector=selector, gpus=gpus, gpu_model=gpu_model)
        tried: set[str] = set()
        last: SandboxError | None = None
        for _ in range(PLACEMENT_TRIES):
            candidates = [v for v in self.views() if v.name not in tried]
            if not candidates and last is not None:
                raise last
            node = place(candidates, want, cpu_overcommit=self.settings.cpu_overcommit)
            tried.add(node.name)
            self._pending += 1
            slot = f"pending-{self._pending}"
            holder = self._nodes[node.name]
            holder.hold(slot, key.tenant, cpus, memory_mib)
            try:
                status, payload = await self._call(node.name, key, "POST", "/v1/sandboxes",
                                                   body)
            except UnavailableError as unreachable:
                last = unreachable
                continue
            finally:
                holder.placed.pop(slot, None)
                holder.view.sandboxes.pop(slot, None)
            if status == 201:
                info = dict(payload)
                info["node"] = node.name
                holder.hold(info["id"], key.tenant, cpus, memory_mib)
                try:
                    await asyncio.to_thread(self.directory.add, info["id"], key.tenant,
                                            node.name, info)
                except BaseException:
                    # Unrecorded, nobody could reach or end it: end it now, not at its timeout.
                    await self._end_unrecorded(node.name, info["id"], key.tenant)
                    raise
                return info
            refused = _error(status, payload)
            if status not in (429, 503):
                raise refused
            last = refused  # that node is full or busy: another may not be
        assert last is not None
        raise last

    async def _end_unrecorded(self, node: str, sandbox_id: str, tenant: str) -> None:
        self.forget(sandbox_id)
        try:
            await asyncio.shield(self.end(node, [(sandbox_id, tenant)]))
        except Exception as error:  # noqa: BLE001 - the node's own timeout ends it then
            log.warning("sandbox %s on node %s was not recorded and could not be ended "
                        "(%r); it stops at its timeout", sandbox_id, node, error)

    async def call(self, key: KeyRef, node: str, method: str, path: str,
                   body: Any = None, params: Mapping[str, str] | None = None
                   ) -> tuple[int, Any]:
        return await self._call(node, key, method, path, body, params)

    async def _call(self, name: str, key: KeyRef, method: str, path: str, body: Any = None,
                    params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        node = self._nodes.get(name)
        if node is None or node.lost:
            raise UnavailableError(f"node {name} is not reachable now; try again shortly")
        self._count("call")
        try:
            result: tuple[int, Any] = await node.handle.call.remote(
                self._token, key.tenant, key.id, method, path, body,
                dict(params) if params else None)
        except Exception as error:  # the actor died, is unreachable, or its call failed
            log.warning("call to node %s failed: %r", name, error)
            raise UnavailableError(f"node {name} did not answer ({type(error).__name__}); "
                                   "try again shortly") from None
        return result

    async def end(self, name: str, owned: list[tuple[str, str]]) -> list[str]:
        node = self._nodes.get(name)
        if node is None or node.lost:
            raise UnavailableError(f"node {name} is not reachable now")
        self._count("end")
        ended: list[str] = await node.handle.end.remote(self._token, owned)
        return ended

    def _count(self, method: str) -> None:
        self.ray_calls[method] = self.ray_calls.get(method, 0) + 1

    # -- keeping the view ------------------------------------------------------------------

    async def _monitor(self) -> None:
        last_discover = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            try:
                if time.monotonic() - last_discover >= DISCOVER_INTERVAL:
                    last_discover = time.monotonic()
                    await self._discover()
                await asyncio.gather(*(self._beat(name) for name in list(self._nodes)))
                await self._spread_pools()
                for given_up in await asyncio.to_thread(self.directory.give_up,
                                                        self.settings.grace):
                    events.warning("sandbox %s given up: %s", given_up.id, given_up.reason,
                                   extra={"event": "sandbox.given_up"})
            except Exception:
                log.exception("cluster monitor round failed; trying again")

    async def _spread_pools(self) -> None:
        if not self.settings.pools:
            return
        takers = [n for n, node in self._nodes.items() if not node.lost and node.view.ready
                  and not node.view.cordoned and not node.view.draining]
        if not takers:
            return
        for name, share in spread_pools(self.settings.pools, takers).items():
            node = self._nodes[name]
            if node.pools == share:
                continue
            self._count("set_pools")
            try:
                await node.handle.set_pools.remote(self._token, share)
            except Exception as error:
                log.warning("node %s did not take its pools %r: %r", name, share, error)
                continue
            node.pools = share
            events.info("node %s keeps pools %s", name, share or "none",
                        extra={"event": "node.pools"})
        for name, node in self._nodes.items():  # cordoned, draining: their share moved
            if name not in takers and not node.lost and node.pools:
                with contextlib.suppress(Exception):
                    await node.handle.set_pools.remote(self._token, "")
                    node.pools = ""

    async def _discover(self) -> None:
        """Find node actors (and, with autostart, start those missing)."""
        if self.settings.autostart:
            await self._autostart()
        names = await asyncio.to_thread(ray_boot.node_actor_names)
        for name in names:
            known = self._nodes.get(name)
            if known is not None and not known.lost:
                continue
            handle = await asyncio.to_thread(ray_boot.get_actor, ACTOR_PREFIX + name)
            if handle is None:
                continue
            record = await asyncio.to_thread(self.directory.node, name)
            view = NodeView(name=name, url="", ready=False)
            if record is not None:
                view.cordoned, view.draining = record.cordoned, record.draining
            self._nodes[name] = _Node(view=view, handle=handle, last_ok=time.monotonic())  # a
            # node back is a new node server: it holds no pools until asked again
            await self._beat(name)

    async def _autostart(self) -> None:
        ray_nodes = await asyncio.to_thread(ray_boot.alive_nodes)
        running = set(await asyncio.to_thread(ray_boot.node_actor_names))
        starts = []
        for ray_node in ray_nodes:
            name = node_name(ray_node.name)
            if name in running:
                continue
            starts.append(self._start_actor(name, ray_node))
        for outcome in await asyncio.gather(*starts, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("a node actor did not start: %s", outcome)

    async def _start_actor(self, name: str, ray_node: ray_boot.RayNode) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        handle = actor_class().options(
            name=ACTOR_PREFIX + name, namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray_node.id, soft=False),
        ).remote(name, self._token, str(self.settings.node_root / name), ray_node.address,
                 ray_node.labels, dict(self.settings.node_env))
        await handle.ready.remote(self._token)
        events.info("node %s started on %s", name, ray_node.address,
                    extra={"event": "node.started"})

    async def _beat(self, name: str) -> None:
        node = self._nodes[name]
        started = time.time()
        self._count("describe")
        try:
            status = await asyncio.wait_for(node.handle.describe.remote(self._token),
                                            self.settings.lost_after)
        except Exception as error:
            if node.lost:
                return
            died = type(error).__name__ in ("ActorDiedError", "RayActorError")
            quiet = time.monotonic() - node.last_ok
            if died or quiet >= self.settings.lost_after:
                why = (f"its actor died ({type(error).__name__})" if died
                       else f"it did not answer for {quiet:.1f} s")
                await self._lose(name, why)
            return
        node.last_ok = time.monotonic()
        node.lost = False
        record = await asyncio.to_thread(self.directory.node, name)
        view = _view(status, record)
        node.describe(view)
        node.pools_seen = [p for p in status.get("pools", []) if isinstance(p, dict)]
        back = False
        written = self._written.get(name)
        if (written is None or written[:2] != (view.url, view.labels)
                or time.monotonic() - written[2] > SEEN_EVERY or record is None
                or record.state != "ready"):
            back = await asyncio.to_thread(self.directory.node_seen, name, view.url,
                                           view.labels)
            self._written[name] = (view.url, view.labels, time.monotonic())
        await self._reconcile(name, status, started, back)

    async def _lose(self, name: str, why: str) -> None:
        node = self._nodes[name]
        node.lost = True
        node.view.ready = False
        at = datetime.now(UTC).isoformat(timespec="seconds")
        reason = f"node {name} was lost at {at}: {why}"
        marked = await asyncio.to_thread(self.directory.node_lost, name, reason)
        for sandbox_id in [i for i, (p, _) in self._placements.items() if p.node == name]:
            self._placements.pop(sandbox_id, None)
        events.warning("node %s lost (%s): %d sandboxes marked lost", name, why, marked,
                       extra={"event": "node.lost"})

    async def _reconcile(self, name: str, status: dict[str, Any], started: float,
                         back: bool) -> None:
        running = {s["id"]: s for s in status.get("sandboxes", [])}
        rows = await asyncio.to_thread(self.directory.on_node, name, (LIVE, LOST))
        known = {row.id for row in rows}
        adopted = [r.id for r in rows if r.state == LOST and r.id in running]
        gone = [r.id for r in rows if r.state == LOST and r.id not in running]
        ended = [r.id for r in rows if r.state == LIVE and r.id not in running
                 and r.created_at.timestamp() < started - SETTLE]
        if adopted:
            await asyncio.to_thread(self.directory.set_state, adopted, LIVE, None, was=(LOST,))
            events.info("node %s back: %d sandboxes adopted", name, len(adopted),
                        extra={"event": "node.back"})
        if gone:
            await asyncio.to_thread(self.directory.set_state, gone, STOPPED,
                                    f"gone when node {name} came back", was=(LOST,))
        if ended:
            await asyncio.to_thread(self.directory.set_state, ended, STOPPED,
                                    "ended on its node", was=(LIVE,))
        # Given-up sandboxes exist only on a node that was lost: look for them when it is
        # back (on another heartbeat, a stopped row is a kill this description predates).
        strangers = [i for i in running if i not in known and i not in self._ended]
        if not back or not strangers:
            return
        given_up = []
        for sandbox_id in strangers[:1000]:
            row = await asyncio.to_thread(self.directory.get, sandbox_id)
            if row is not None and row.state == STOPPED and row.node == name:
                given_up.append((sandbox_id, row.tenant))
        if given_up:
            done = await self.end(name, given_up)
            self._ended.update(done)
            events.warning("node %s back: %d sandboxes given up on were ended", name,
                           len(done), extra={"event": "node.reconciled"})


def node_name(raw: str) -> str:
    """A Ray node's name as a Corral node name (lowercase; other characters as '-')."""
    name = re.sub(r"[^a-z0-9.-]", "-", raw.lower()).strip("-.")[:64] or "node"
    return name


def _view(status: dict[str, Any], record: Any) -> NodeView:
    capacity = status.get("capacity", {})
    return NodeView(
        name=status["name"], url=status["url"], labels=dict(status.get("labels") or {}),
        ca=str(status.get("ca", "")),
        ready=True, cordoned=bool(record.cordoned) if record else False,
        draining=bool(record.draining) if record else False,
        cpus=float(capacity.get("cpus", 1)), memory_mib=int(capacity.get("memory_mib", 0)),
        max_sandboxes=int(capacity.get("max_sandboxes", 1000)),
        images=frozenset(status.get("images", [])),
        pool_ready={p["image"]: int(p["ready"]) for p in status.get("pools", [])},
        sandboxes={s["id"]: (s["tenant"], float(s["cpus"]), int(s["memory_mib"]))
                   for s in status.get("sandboxes", [])},
        gpus=tuple((str(g["name"]), bool(g["free"])) for g in status.get("gpus", [])))


def _error(status: int, payload: Any) -> SandboxError:
    error = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
    return error_from_code(str(error.get("code", "internal")),
                           str(error.get("message", f"the node answered {status}")))


def env_settings(address: str, data_dir: Path, pools: tuple[PoolSpec, ...] = ()
                 ) -> ClusterSettings:
    """Settings from ``CORRAL_CLUSTER_*`` variables (docs/cluster.md)."""
    def number(name: str, default: float) -> float:
        raw = os.environ.get(name, "").strip()
        return float(raw) if raw else default
    node_env = {k: v for k, v in os.environ.items()
                if k in ("CORRAL_IMAGE_DIR", "CORRAL_GVISOR_PLATFORM", "CORRAL_NET_OPEN",
                         "CORRAL_NET_DNS", "CORRAL_PORTS_DOMAIN")}
    return ClusterSettings(
        address=address,
        secret_file=Path(os.environ.get("CORRAL_CLUSTER_SECRET_FILE",
                                        str(data_dir / "cluster-secret"))),
        host=os.environ.get("CORRAL_CLUSTER_HOST", ray_boot.DEFAULT_HOST),
        heartbeat=number("CORRAL_CLUSTER_HEARTBEAT", 1.0),
        lost_after=number("CORRAL_CLUSTER_LOST_AFTER", 3.0),
        grace=number("CORRAL_CLUSTER_GRACE", 300.0),
        autostart=os.environ.get("CORRAL_CLUSTER_AUTOSTART", "1") not in ("0", "false", "no"),
        node_root=Path(os.environ.get("CORRAL_CLUSTER_NODE_ROOT", str(data_dir / "nodes"))),
        node_env=node_env, pools=pools)


def _gpus_of(info: Mapping[str, Any]) -> int:
    """The GPUs a sandbox's description (as created) says it holds (0 if it says nothing
    readable: the description is the node's, checked when it was made)."""
    resources = info.get("resources")
    gpu = resources.get("gpu") if isinstance(resources, Mapping) else None
    try:
        return parse_gpu(gpu)[0]
    except (InvalidArgumentError, ValueError):
        return 0
