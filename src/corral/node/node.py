"""The node: creates, tracks and destroys the sandboxes of one host (async core).

A sandbox's life: validate the request, let the runtime build the host side and start the
agent, wait for the agent's hello, then serve commands and files until it is killed, times
out, or its agent dies. Every way out ends in :meth:`Node._stop`, which records why and
tears the sandbox down without making the caller wait for slow runtime tools.

Sandboxes can outlive their node: ``close(detach=True)`` lets go of the running ones, and
the next node on the same data dir adopts them when it starts (it reads what the previous
node recorded, :mod:`.records`, and waits for each agent to reconnect on a socket in the
sandbox's run folder). Those it cannot adopt are torn down and listed in :attr:`Node.lost`
with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from corral.api.errors import (
    AgentError,
    AlreadyExistsError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SandboxError,
)
from corral.api.resources import TIMEOUT_RANGE, Resources, check_timeout
from corral.runtime import Runtime, SandboxSpec, get_runtime
from corral.runtime._cgroups_unsafe import favor_dynamic_changes, remove_parent
from corral.runtime._host import channel_socket, sweep
from corral.runtime.agent_bundle import ORPHAN_GRACE, ensure_bundle

from . import records
from .agent_client import AgentClient
from .images import ImageStore
from .models import SandboxState
from .pools import Pool, PoolSpec
from .sandbox import Sandbox
from .validation import SANDBOX_ID, check_env, check_metadata

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
AGENT_START_TIMEOUT = 30.0
#: How long a starting node waits for each surviving sandbox's agent to reconnect.
ADOPT_TIMEOUT = 10.0
#: Lifetime of a sandbox waiting in a warm pool (its real one starts at hand-out).
POOLED_LIFETIME = TIMEOUT_RANGE[1]
#: Longest a pool sandbox's kernel may take to start and import its warm modules.
WARM_TIMEOUT = 180.0
STDERR_TAIL = 16 * 1024


@dataclass(frozen=True)
class NodeSettings:
    """Where a node keeps its state. Read once, at start.

    Attributes:
        data_dir: sandboxes' host state and the agent bundle (``CORRAL_DATA_DIR``,
            default ``/var/lib/corral``).
        image_dir: built images (``CORRAL_IMAGE_DIR``, default ``<data_dir>/images``).
        max_sandboxes: live sandboxes this node accepts before answering "resource exhausted".
        tune_cgroups: remount the cgroup v2 hierarchy with ``favordynmods`` at start
            (``CORRAL_TUNE_CGROUPS=0`` to leave the host alone); see
            :func:`corral.runtime._cgroups_unsafe.favor_dynamic_changes`.
        orphan_grace: seconds a sandbox outlives its node, waiting for a restarted node on
            the same data dir to adopt it (``CORRAL_ORPHAN_GRACE``); 0 ends sandboxes with
            their node.
        pools: warm pools to keep filled (``CORRAL_POOLS=python:gvisor=4,python=2``); see
            :mod:`corral.node.pools`.
        max_starting: sandboxes starting at once; more wait their turn (default: twice the
            CPUs, ``CORRAL_MAX_STARTING``). Starting is CPU-bound: more at once only thrash.
        start_queue: creates that may wait for a turn; one more is refused as "resource
            exhausted" at once instead of queueing without bound (``CORRAL_START_QUEUE``).
    """

    data_dir: Path
    image_dir: Path
    max_sandboxes: int = 1000
    tune_cgroups: bool = True
    orphan_grace: float = ORPHAN_GRACE
    pools: tuple[PoolSpec, ...] = ()
    max_starting: int = field(default_factory=lambda: 2 * (os.cpu_count() or 1))
    start_queue: int = 256

    def __post_init__(self) -> None:
        if self.max_starting < 1 or self.start_queue < 0:
            raise InvalidArgumentError("max_starting must be at least 1 and start_queue >= 0")
        if sum(pool.size for pool in self.pools) > self.max_sandboxes:
            raise InvalidArgumentError("the warm pools hold more sandboxes than max_sandboxes")
        # Resolved: mount points are compared with /proc/self/mountinfo, which has no links.
        object.__setattr__(self, "data_dir", Path(os.path.realpath(self.data_dir)))
        object.__setattr__(self, "image_dir", Path(os.path.realpath(self.image_dir)))

    @classmethod
    def from_env(cls, data_dir: Path | None = None) -> NodeSettings:
        data = data_dir or Path(os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral"))
        images = Path(os.environ.get("CORRAL_IMAGE_DIR", str(data / "images")))
        tune = os.environ.get("CORRAL_TUNE_CGROUPS", "1") != "0"
        grace = os.environ.get("CORRAL_ORPHAN_GRACE", f"{ORPHAN_GRACE:g}")
        try:
            orphan_grace = float(grace)
        except ValueError:
            raise InvalidArgumentError(f"CORRAL_ORPHAN_GRACE={grace!r:.40} is not a number of "
                                       "seconds") from None
        if not 0 <= orphan_grace <= 7 * 24 * 3600:
            raise InvalidArgumentError("CORRAL_ORPHAN_GRACE must be 0 to 604800 seconds")
        pools = PoolSpec.parse_list(os.environ.get("CORRAL_POOLS", ""))
        defaults = cls(data_dir=data, image_dir=images)
        return cls(data_dir=data, image_dir=images, tune_cgroups=tune,
                   orphan_grace=orphan_grace, pools=pools,
                   max_starting=_int_env("CORRAL_MAX_STARTING", defaults.max_starting),
                   start_queue=_int_env("CORRAL_START_QUEUE", defaults.start_queue))

    @property
    def node_key(self) -> str:
        """Names this node's cgroups, so that sweeping never touches another node's."""
        return hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]


class Node:
    """Sandboxes on this host. Use as ``async with Node() as node: ...``."""

    def __init__(self, settings: NodeSettings | None = None, *,
                 runtimes: Mapping[str, Runtime] | None = None) -> None:
        """``runtimes``: the only runtimes this node uses, by name, instead of the host's
        (tests give a fake one); only this constructor takes them, never a setting."""
        self.settings = settings or NodeSettings.from_env()
        self.images = ImageStore(self.settings.image_dir)
        self._sandboxes: dict[str, Sandbox] = {}
        self._given = dict(runtimes) if runtimes is not None else None
        self._runtimes: dict[str | None, Runtime] = {}
        self._bundle: Path | None = None
        self._pending = 0
        self._lock_fd: int | None = None
        #: Sandboxes a previous node left that this one could not adopt: id -> why.
        self.lost: dict[str, str] = {}
        self.pools: list[Pool] = []
        self._pooled: set[str] = set()
        self._start_turns = asyncio.Semaphore(self.settings.max_starting)
        self._waiting = 0

    @property
    def sandboxes_dir(self) -> Path:
        return self.settings.data_dir / "sandboxes"

    async def start(self) -> None:
        """Prepare directories, adopt the sandboxes a previous node released, sweep the rest."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self.sandboxes_dir.mkdir(exist_ok=True)
        os.chmod(self.sandboxes_dir, 0o711)  # sandbox uids traverse it to their root
        self._bundle = await asyncio.to_thread(ensure_bundle, self.settings.data_dir / "agent")
        found = [p for p in self.sandboxes_dir.iterdir()
                 if (p / records.RECORD_NAME).is_file() and not p.is_symlink()]
        await asyncio.gather(*(self._adopt(directory) for directory in found))
        if self._sandboxes:
            log.info("adopted %d running sandboxes", len(self._sandboxes))
        swept = await asyncio.to_thread(sweep, self.sandboxes_dir, self.settings.node_key,
                                        set(self._sandboxes))
        for sandbox_id in swept:
            self.lost.setdefault(sandbox_id, "its node stopped without handing it over")
        if swept:
            log.warning("swept %d sandboxes left by a previous run: %s", len(swept), swept)
        if self.settings.tune_cgroups and os.geteuid() == 0:
            if await asyncio.to_thread(favor_dynamic_changes) is None:
                log.warning("could not enable cgroup favordynmods; sandbox starts will be slower")
        for spec in self.settings.pools:
            try:
                pool = Pool(self, spec, self.runtime(spec.runtime or None).name)
                self.images.get(spec.image)
            except SandboxError as exc:
                log.error("warm pool %s:%s not started: %s", spec.image, spec.runtime,
                          exc.message)
                continue
            self.pools.append(pool)
            pool.start()

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

        With ``detach``, running sandboxes are left running for the next node on this data
        dir to adopt (:meth:`start`); their agents end them if none comes within
        :data:`corral.runtime.agent_bundle.ORPHAN_GRACE` seconds.
        """
        for pool in self.pools:
            for sandbox in await pool.close():
                await self._stop(sandbox, "its warm pool closed")
        if detach and self.settings.orphan_grace > 0:
            running = [sb for sb in self._sandboxes.values()
                       if sb.state is SandboxState.RUNNING and sb.id not in self._pooled]
            await asyncio.gather(*(self._release(sb) for sb in running))
        await asyncio.gather(*(self._stop(sb, "node shutting down")
                               for sb in list(self._sandboxes.values())))
        remove_parent(self.settings.node_key)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def runtime(self, name: str | None) -> Runtime:
        """The named runtime (or the default), probed once per node."""
        if name not in self._runtimes:
            runtime = get_runtime(name, self._given)
            # One instance per runtime, whichever way it was asked for: a runtime holds
            # host-wide state (the namespaces runtime's uid slots).
            self._runtimes[name] = self._runtimes.setdefault(runtime.name, runtime)
        return self._runtimes[name]

    async def create(self, image: str = "python", *, runtime: str | None = None,
                     resources: Resources | None = None, env: Mapping[str, str] | None = None,
                     timeout: float = DEFAULT_TIMEOUT,
                     metadata: Mapping[str, str] | None = None) -> Sandbox:
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
        """
        task = asyncio.get_running_loop().create_task(
            self._create(image, runtime, resources, env, timeout, metadata))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._discard_abandoned)
            raise

    def _discard_abandoned(self, task: asyncio.Task[Sandbox]) -> None:
        if not task.cancelled() and task.exception() is None:
            sandbox = task.result()
            asyncio.get_running_loop().create_task(
                self._stop(sandbox, "the caller gave up while it started"))

    async def _create(self, image: str, runtime: str | None, resources: Resources | None,
                      env: Mapping[str, str] | None, timeout: float,
                      metadata: Mapping[str, str] | None) -> Sandbox:
        if self._bundle is None:
            raise SandboxError("the node is not started; use `async with Node()`")
        resources = resources or Resources()
        self._check_host_fits(resources)
        timeout = check_timeout(timeout)
        env, metadata = check_env(env), check_metadata(metadata)
        built = self.images.get(image)
        chosen = self.runtime(runtime)
        for pool in self.pools:
            if pool.matches(image, chosen.name, resources):
                sandbox = await pool.take()
                if sandbox is not None:
                    return await self._hand_out(sandbox, env, metadata, timeout)
        sandbox = await self._start(image, chosen, resources, {**dict(built.env), **env},
                                    metadata, timeout, pooled=False)
        self._write_record(sandbox)
        return sandbox

    async def _hand_out(self, sandbox: Sandbox, env: dict[str, str], metadata: dict[str, str],
                        timeout: float) -> Sandbox:
        """Bind a pooled sandbox to the request that takes it."""
        if env and sandbox.code.default_ready():
            # The warm kernel started before the request: give it the request's env too.
            # (This cell runs inside the sandbox; the env travels as a JSON string literal.)
            cell = (f"import json as _j, os as _o; _o.environ.update(_j.loads("
                    f"{json.dumps(env)!r})); del _j, _o")
            execution = await sandbox.code.run(cell, timeout=30)
            if execution.error is not None:
                await self._stop(sandbox, "its warm kernel refused the request's env")
                raise InternalError("a warm pool sandbox could not take the request's env; "
                                    "retry")
        sandbox.env, sandbox.metadata = {**sandbox.env, **env}, metadata
        sandbox.created_at = time.time()
        sandbox.expires_at = sandbox.created_at + timeout
        sandbox._arm_timer()
        self._pooled.discard(sandbox.id)
        self._write_record(sandbox)
        log.info("sandbox %s handed out from a warm pool", sandbox.id)
        return sandbox

    async def _start_pooled(self, spec: PoolSpec, runtime: str) -> Sandbox:
        """Start a sandbox for a warm pool (shielded like :meth:`create`)."""
        task = asyncio.get_running_loop().create_task(self._start_warm(spec, runtime))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._discard_abandoned)
            raise

    async def _start_warm(self, spec: PoolSpec, runtime: str) -> Sandbox:
        built = self.images.get(spec.image)
        sandbox = await self._start(spec.image, self.runtime(runtime), spec.resources,
                                    dict(built.env), {}, POOLED_LIFETIME, pooled=True)
        try:
            # The first exec in a sandbox is slower (gVisor: ~19 ms, then ~15 ms): pay it now
            # (an image without `true` just skips this).
            with contextlib.suppress(NotFoundError):
                await sandbox.commands.run(["true"], timeout=WARM_TIMEOUT)
        except BaseException:
            await asyncio.shield(self._stop(sandbox, "its first command failed"))
            raise
        if spec.warm:
            try:
                execution = await sandbox.code.run(f"import {', '.join(spec.warm)}",
                                                   timeout=WARM_TIMEOUT)
                if execution.error is not None:
                    raise InternalError(f"importing {', '.join(spec.warm)} failed: "
                                        f"{execution.error.name}: {execution.error.value}")
            except BaseException:
                await asyncio.shield(self._stop(sandbox, "warming its kernel failed"))
                raise
        return sandbox

    async def _start(self, image: str, chosen: Runtime, resources: Resources,
                     env: dict[str, str], metadata: dict[str, str], timeout: float,
                     pooled: bool) -> Sandbox:
        """Build and start one sandbox, waiting for a start turn (admission control)."""
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
            return await self._start_now(image, chosen, resources, env, metadata, timeout,
                                         pooled)
        finally:
            self._start_turns.release()

    async def _start_now(self, image: str, chosen: Runtime, resources: Resources,
                         env: dict[str, str], metadata: dict[str, str], timeout: float,
                         pooled: bool) -> Sandbox:
        assert self._bundle is not None
        built = self.images.get(image)
        sandbox_id = f"sbx-{secrets.token_hex(8)}"
        spec = SandboxSpec(sandbox_id=sandbox_id, cgroup=f"{self.settings.node_key}/{sandbox_id}",
                           rootfs=built.rootfs, resources=resources, agent_bundle=self._bundle,
                           directory=self.sandboxes_dir / sandbox_id,
                           orphan_grace=self.settings.orphan_grace)
        self._pending += 1
        try:
            handle = await chosen.create(spec)
        finally:
            self._pending -= 1
        sandbox = Sandbox(self, sandbox_id, image, chosen, handle, resources, env,
                          built.workdir, metadata, timeout)
        if pooled:
            self._pooled.add(sandbox_id)
        self._sandboxes[sandbox_id] = sandbox
        try:
            process = await chosen.start(handle)
            assert process.stdout is not None and process.stdin is not None
            if process.stderr is not None:
                asyncio.get_running_loop().create_task(self._drain_stderr(sandbox, process.stderr))
            agent = AgentClient(process.stdout, process.stdin, f"sandbox {sandbox_id}")
            sandbox.agent = agent
            await agent.handshake(AGENT_START_TIMEOUT)
        except BaseException as exc:
            detail = bytes(sandbox.stderr_tail[-2000:]).decode(errors="replace").strip()
            await asyncio.shield(self._stop(sandbox, f"failed to start: {exc}"))
            if isinstance(exc, SandboxError) and detail:
                raise type(exc)(f"{exc.message} (runtime said: {detail})") from exc
            raise
        agent.on_close = lambda reason: self._agent_closed(sandbox, reason)
        sandbox.state = SandboxState.RUNNING
        sandbox._arm_timer()
        log.info("sandbox %s started (%s, image %s%s)", sandbox_id, chosen.name, image,
                 ", warm pool" if pooled else "")
        return sandbox

    def _write_record(self, sandbox: Sandbox) -> None:
        """Write down what the next node needs to adopt ``sandbox``."""
        try:
            records.write(sandbox.handle.spec.directory, records.SandboxRecord(
                id=sandbox.id, image=sandbox.image, runtime=sandbox.runtime.name,
                resources=sandbox.resources, env=sandbox.env, workdir=sandbox.workdir,
                metadata=sandbox.metadata, created_at=sandbox.created_at,
                expires_at=sandbox.expires_at, extra=dict(sandbox.handle.extra)))
        except OSError as exc:
            # The sandbox runs; it just will not survive a restart of this node.
            log.warning("sandbox %s: cannot record it for a restart: %s", sandbox.id, exc)

    async def _adopt(self, directory: Path) -> None:
        """Take over a sandbox a previous node released; on failure note why in ``lost``."""
        sandbox_id = directory.name
        try:
            record = await asyncio.to_thread(records.read, directory)
            chosen = self.runtime(record.runtime)
            built = self.images.get(record.image)
            assert self._bundle is not None
            spec = SandboxSpec(sandbox_id=sandbox_id, rootfs=built.rootfs,
                               cgroup=f"{self.settings.node_key}/{sandbox_id}",
                               resources=record.resources, agent_bundle=self._bundle,
                               directory=directory)
            handle = await chosen.adopt(spec, record.extra)
        except (ValueError, OSError, SandboxError) as exc:
            self.lost[sandbox_id] = f"lost while its node was down: {_message(exc)}"
            log.warning("sandbox %s: %s", sandbox_id, self.lost[sandbox_id])
            return  # the sweep that follows removes what is left of it
        sandbox = Sandbox(self, sandbox_id, record.image, chosen, handle, record.resources,
                          record.env, record.workdir, record.metadata, DEFAULT_TIMEOUT)
        sandbox.created_at, sandbox.expires_at = record.created_at, record.expires_at
        self._sandboxes[sandbox_id] = sandbox
        try:
            agent = await self._reconnect(spec, f"sandbox {sandbox_id}")
        except (OSError, SandboxError) as exc:
            self.lost[sandbox_id] = f"lost while its node was down: {_message(exc)}"
            log.warning("sandbox %s: %s", sandbox_id, self.lost[sandbox_id])
            await self._stop(sandbox, self.lost[sandbox_id])
            return
        sandbox.agent = agent
        agent.on_close = lambda reason: self._agent_closed(sandbox, reason)
        sandbox.state = SandboxState.RUNNING
        sandbox._arm_timer()  # already past its lifetime: stopped at once
        log.info("sandbox %s adopted (%s, image %s)", sandbox_id, chosen.name, record.image)

    async def _reconnect(self, spec: SandboxSpec, label: str) -> AgentClient:
        """Listen on the sandbox's channel socket until its agent reconnects and says hello."""
        path = channel_socket(spec)
        path.unlink(missing_ok=True)
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future())

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if connected.done():
                writer.close()  # one agent per sandbox: later callers are turned away
            else:
                connected.set_result((reader, writer))

        server = await asyncio.start_unix_server(on_connect, path=str(path))
        try:
            _give_socket(path)
            try:
                reader, writer = await asyncio.wait_for(connected, ADOPT_TIMEOUT)
            except TimeoutError:
                raise AgentError(f"its agent did not reconnect within {ADOPT_TIMEOUT:g} s"
                                 ) from None
        finally:
            server.close()
            path.unlink(missing_ok=True)
        agent = AgentClient(reader, writer, label)
        await agent.handshake(ADOPT_TIMEOUT)
        return agent

    async def _release(self, sandbox: Sandbox) -> None:
        """Let go of a running sandbox without stopping it (see :meth:`close`)."""
        if sandbox._timer is not None:
            sandbox._timer.cancel()
        if sandbox.agent is not None:
            sandbox.agent.on_close = None
            await sandbox.agent.close()  # the agent sees its channel end and waits
        try:
            await sandbox.runtime.release(sandbox.handle)
        except SandboxError as exc:
            log.warning("sandbox %s cannot outlive this node (%s); stopping it", sandbox.id,
                        exc.message)
            return  # close() stops it with the others
        self._sandboxes.pop(sandbox.id, None)
        log.info("sandbox %s released, still running", sandbox.id)

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

    async def _drain_stderr(self, sandbox: Sandbox, stream: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while chunk := await stream.read(4096):
                sandbox.stderr_tail += chunk
                del sandbox.stderr_tail[:-STDERR_TAIL]

    def _agent_closed(self, sandbox: Sandbox, reason: str) -> None:
        if sandbox.state is SandboxState.RUNNING:
            why = sandbox._limit_hit((0, 0)) or f"the sandbox's agent exited ({reason})"
            # Recorded now, before any waiter wakes: their errors then carry the real reason.
            sandbox.stop_reason = why
            if sandbox.agent is not None:
                sandbox.agent.close_reason = why
            asyncio.get_running_loop().create_task(self._stop(sandbox, why))

    def get(self, sandbox_id: str) -> Sandbox:
        """The sandbox with this id, running or recently stopped."""
        if not isinstance(sandbox_id, str) or not SANDBOX_ID.match(sandbox_id):
            raise NotFoundError(f"no sandbox {sandbox_id!r:.80}")
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox_id in self._pooled:
            raise NotFoundError(f"no sandbox {sandbox_id!r}")
        return sandbox

    def list(self, metadata: Mapping[str, str] | None = None,
             state: SandboxState | None = None) -> list[Sandbox]:
        """Sandboxes of this node, optionally those whose metadata includes ``metadata``."""
        wanted = dict(metadata or {})
        return [sb for sb in self._sandboxes.values() if sb.id not in self._pooled
                and all(sb.metadata.get(k) == v for k, v in wanted.items())
                and (state is None or sb.state is state)]

    async def destroy(self, sandbox_id: str) -> None:
        """Kill a sandbox and remove everything it left on the host."""
        await self._stop(self.get(sandbox_id), "killed by request")

    async def _stop(self, sandbox: Sandbox, reason: str) -> None:
        """Stop a sandbox; callers that arrive while it is stopping wait for the same end."""
        if sandbox._stopped is None:
            sandbox._stopped = asyncio.get_running_loop().create_task(
                self._teardown(sandbox, reason))
        await asyncio.shield(sandbox._stopped)

    async def _teardown(self, sandbox: Sandbox, reason: str) -> None:
        sandbox.state = SandboxState.STOPPING
        if sandbox.stop_reason is None:
            sandbox.stop_reason = reason
        if sandbox._timer is not None:
            sandbox._timer.cancel()
        if sandbox.agent is not None:
            sandbox.agent.on_close = None
            await sandbox.agent.close()
        try:
            await sandbox.runtime.destroy(sandbox.handle)
        finally:
            sandbox.state = SandboxState.STOPPED
            self._sandboxes.pop(sandbox.id, None)
            self._pooled.discard(sandbox.id)
            log.info("sandbox %s stopped: %s", sandbox.id, sandbox.stop_reason)


def _give_socket(path: Path) -> None:
    """Make the bound socket at ``path`` the run folder owner's, mode 0600.

    Connecting takes write permission on the socket: the sandbox's root only. The folder
    belongs to that uid (namespaces), so the socket is changed through a descriptor of the
    very inode that was checked, never by a path that could have been swapped for a link.
    """
    owner = path.parent.stat()
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise InternalError(f"{path} is not the socket this node bound")
        inode = f"/proc/self/fd/{fd}"
        os.chown(inode, owner.st_uid, owner.st_gid)
        os.chmod(inode, 0o600)
    finally:
        os.close(fd)


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SandboxError) else str(exc)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise InvalidArgumentError(f"{name}={raw!r:.40} is not a whole number") from None
