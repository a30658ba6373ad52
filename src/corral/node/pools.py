"""Warm pools: sandboxes started ahead of demand, handed out by :meth:`Node.create`.

A pool is a number of ready sandboxes of one (image, runtime, resources). A create request
that matches a pool takes one of its sandboxes instead of starting one: the request's env,
metadata and lifetime are bound to it at hand-out, so pooled sandboxes are interchangeable
until then.

Pre-warmed interpreters: a pool's sandboxes can also have their default code context's
Jupyter kernel running, with heavy modules already imported (``warm``; by default numpy,
pandas and matplotlib), so a first ``run_code`` that imports pandas costs a round trip, not
seconds. Measured against the alternatives (docs/benchmarks.md, ARCHITECTURE.md): a warm
kernel per pooled sandbox answers in milliseconds, where restoring a checkpointed warm
process with runsc takes hundreds. The request's env reaches that kernel at hand-out.
Each pooled sandbox also runs one command before it counts as ready, so the first
command of its user does not pay for warming the exec path.

Only a sandbox whose agent answers a ping (and whose warm kernel is alive) is handed out;
anything else falls back to a cold start, so a pool can only make a create faster, never
make it fail. Each pool refills itself in the background, one sandbox at a time, backing
off when starts fail.

Pooled sandboxes are the node's alone: they are not listed, cannot be fetched by id, are
never handed to a restarted node (they carry no record) and count toward ``max_sandboxes``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corral.api import agent_protocol as proto
from corral.api.errors import InternalError, InvalidArgumentError, NotFoundError, SandboxError
from corral.api.resources import Resources

from .lifecycle import Lifecycle, SandboxState

if TYPE_CHECKING:
    from .sandbox import NodeSandbox

log = logging.getLogger(__name__)

#: A pooled sandbox must answer this fast to be handed out.
HEALTH_TIMEOUT = 2.0
#: Longest a pool sandbox's kernel may take to start and import its warm modules.
WARM_TIMEOUT = 180.0
MAX_POOL_SIZE = 1000
_BACKOFF = (1.0, 60.0)
DEFAULT_WARM = ("numpy", "pandas", "matplotlib")
_SPEC = re.compile(r"^(?P<image>[a-z0-9][a-z0-9._-]{0,63})(?::(?P<runtime>[a-z0-9-]{1,32}))?"
                   r"=(?P<size>\d{1,4})(?:/(?P<warm>[A-Za-z0-9_.+]*))?$")
#: A tenant's image: ``TENANT/NAME[:TAG][@RUNTIME]=SIZE[/MODULES]``.
_TENANT_SPEC = re.compile(
    r"^(?P<image>[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[a-z0-9][a-z0-9._-]{0,63}"
    r"(?::[a-z0-9][a-z0-9._-]{0,63})?)(?:@(?P<runtime>[a-z0-9-]{1,32}))?"
    r"=(?P<size>\d{1,4})(?:/(?P<warm>[A-Za-z0-9_.+]*))?$")
#: A pool's GPUs, after its spec: ``;gpu=1``, ``;gpu=H200`` or ``;gpu=H200:2``.
_GPU_SUFFIX = re.compile(r"^(?P<spec>.*);gpu=(?P<gpu>[A-Za-z0-9 ._:-]{1,72})$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class PoolSpec:
    """What one pool holds ready.

    Attributes:
        image: the image of its sandboxes.
        runtime: their runtime; empty means the node's default.
        size: how many it keeps ready.
        resources: their limits; a request matches only with exactly these.
        warm: modules the default code context imports ahead; None: start no kernel.
    """

    image: str
    size: int
    runtime: str = ""
    resources: Resources = field(default_factory=Resources)
    warm: tuple[str, ...] | None = DEFAULT_WARM

    def __post_init__(self) -> None:
        if not 0 <= self.size <= MAX_POOL_SIZE:
            raise InvalidArgumentError(f"pool size {self.size} is outside 0..{MAX_POOL_SIZE}")
        for module in self.warm or ():
            if not _MODULE.match(module) or len(module) > 200:
                raise InvalidArgumentError(f"{module!r:.80} is not a module name")

    @property
    def tenant_image(self) -> bool:
        """Whether the pool is of a tenant's image (``TENANT/NAME:TAG``), which the control
        plane resolves and hands the node (:meth:`Pool.retarget`)."""
        return "/" in self.image

    @property
    def text(self) -> str:
        """The spec as :meth:`parse` reads it (``python:gvisor=4/numpy``)."""
        runtime = (f"@{self.runtime}" if self.tenant_image else f":{self.runtime}"
                   ) if self.runtime else ""
        warm = ("" if self.warm == DEFAULT_WARM else "/" if self.warm is None
                else "/" + "+".join(self.warm))
        return f"{self.image}{runtime}={self.size}{warm}"

    @classmethod
    def parse(cls, text: str) -> PoolSpec:
        """``IMAGE[:RUNTIME]=SIZE[/MODULE+MODULE...]``, or for a tenant's image
        ``TENANT/NAME[:TAG][@RUNTIME]=SIZE[/MODULES]``.

        ``python:gvisor=4`` keeps 4 sandboxes with a kernel that imported numpy, pandas
        and matplotlib; ``python=2/numpy`` imports numpy only; ``python=2/`` starts no
        kernel; ``acme/my-env:1@gvisor=4/`` keeps 4 of tenant acme's ``my-env:1``,
        refilled with the new image whenever that name is rebuilt. A trailing
        ``;gpu=COUNT|MODEL[:COUNT]`` gives each of them GPUs (``python:namespaces=1/;gpu=1``),
        which they hold while they wait; only creates asking for the same ``gpu`` (and
        the default limits) take from it.
        """
        text = text.strip()
        gpu: str | int | None = None
        if (suffix := _GPU_SUFFIX.match(text)) is not None:
            text, gpu = suffix["spec"], suffix["gpu"]
            gpu = int(gpu) if gpu.isdigit() else gpu
        match = _SPEC.match(text) or _TENANT_SPEC.match(text)
        if match is None:
            raise InvalidArgumentError(
                f"pool {text!r:.80} is not IMAGE[:RUNTIME]=SIZE[/MODULES] or "
                "TENANT/NAME[:TAG][@RUNTIME]=SIZE[/MODULES], e.g. python:gvisor=4, "
                "python=2/numpy+pandas or acme/my-env:1@gvisor=2/")
        warm: tuple[str, ...] | None = DEFAULT_WARM
        if match["warm"] is not None:
            warm = tuple(m for m in match["warm"].split("+") if m) or None
        image = match["image"]
        if "/" in image and ":" not in image.split("/", 1)[1]:
            image += ":latest"
        return cls(image=image, runtime=match["runtime"] or "", size=int(match["size"]),
                   warm=warm, resources=Resources.parse(gpu=gpu))

    @classmethod
    def parse_list(cls, text: str) -> tuple[PoolSpec, ...]:
        """Comma-separated :meth:`parse` specs (``CORRAL_POOLS``)."""
        return tuple(cls.parse(part) for part in text.split(",") if part.strip())


@dataclass
class PoolStats:
    """Counters of one pool since the node started."""

    ready: int = 0
    starting: int = 0
    hits: int = 0
    misses: int = 0
    unhealthy: int = 0
    failed_starts: int = 0


class Pool:
    """Ready sandboxes of one :class:`PoolSpec`, and the task that refills them."""

    def __init__(self, spec: PoolSpec, runtime: str,
                 start: Callable[[str, PoolSpec, str], Awaitable[NodeSandbox]],
                 lifecycle: Lifecycle) -> None:
        """``start`` starts one sandbox of an image for this pool, cold (the node's,
        shielded from cancellation); the pool warms it, and stops those it gives up on
        itself. A pool of a tenant's image holds nothing until :meth:`retarget` names the
        image."""
        self._start = start
        self._lifecycle = lifecycle
        self.spec = spec
        self.runtime = runtime
        #: What its sandboxes start from (the node's reference); None: nothing yet.
        self.image: str | None = None if spec.tenant_image else spec.image
        self._ready: collections.deque[NodeSandbox] = collections.deque()
        self._starting = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = PoolStats()

    def matches(self, image: str, runtime: str, resources: Resources) -> bool:
        return self.image is not None and (image, runtime, resources) == (
            self.image, self.runtime, self.spec.resources)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._fill())

    async def retarget(self, image: str | None) -> None:
        """Hold sandboxes of ``image`` from now on (None: none); the ready ones of the
        image before are stopped, and the pool refills."""
        if image == self.image:
            return
        self.image = image
        stale, self._ready = list(self._ready), collections.deque()
        self.stats.ready = 0
        for sandbox in stale:
            await sandbox.stop("its warm pool's image was rebuilt")
        self._wake.set()

    async def take(self) -> NodeSandbox | None:
        """A healthy ready sandbox, or None (the caller starts one cold)."""
        try:
            while self._ready:
                sandbox = self._ready.popleft()
                self._wake.set()
                if await self._healthy(sandbox):
                    self.stats.hits += 1
                    return sandbox
                self.stats.unhealthy += 1
                await sandbox.stop("unhealthy in its warm pool")
            self.stats.misses += 1
            return None
        finally:
            self.stats.ready = len(self._ready)

    async def hand_out(self, sandbox: NodeSandbox, env: dict[str, str],
                       metadata: dict[str, str], timeout: float) -> NodeSandbox | None:
        """Bind a sandbox :meth:`take` returned to the request that takes it: the request's
        env (its warm kernel's too), metadata and lifetime, from now. None if it stopped
        meanwhile (the caller starts one cold)."""
        if env and sandbox.code.default_ready():
            # The warm kernel started before the request: give it the request's env too.
            # (This cell runs inside the sandbox; the env travels as a JSON string literal.)
            cell = (f"import json as _j, os as _o; _o.environ.update(_j.loads("
                    f"{json.dumps(env)!r})); del _j, _o")
            execution = await sandbox.code.run(cell, timeout=30)
            if execution.error is not None:
                await sandbox.stop("its warm kernel refused the request's env")
                raise InternalError("a warm pool sandbox could not take the request's env; "
                                    "retry")
        if sandbox.state is not SandboxState.RUNNING:
            return None  # it died while it took the env
        sandbox.env, sandbox.metadata = {**sandbox.env, **env}, metadata
        sandbox.pooled = False
        sandbox.created_at, sandbox.timeout = time.time(), timeout
        self._lifecycle.set_expiry(sandbox, sandbox.created_at + timeout)  # and records it
        log.info("sandbox %s handed out from a warm pool", sandbox.id)
        return sandbox

    async def _warmed(self, image: str) -> NodeSandbox:
        """Start a sandbox and warm it: its first command run, its kernel's modules imported."""
        sandbox = await self._start(image, self.spec, self.runtime)
        try:
            # The first exec in a sandbox is slower (gVisor: ~19 ms, then ~15 ms): pay it now
            # (an image without `true` just skips this).
            with contextlib.suppress(NotFoundError):
                await sandbox.commands.run(["true"], timeout=WARM_TIMEOUT)
            if self.spec.warm:
                modules = ", ".join(self.spec.warm)
                execution = await sandbox.code.run(f"import {modules}", timeout=WARM_TIMEOUT)
                if execution.error is not None:
                    raise InternalError(f"importing {modules} failed: "
                                        f"{execution.error.name}: {execution.error.value}")
        except BaseException:
            await asyncio.shield(sandbox.stop("warming it failed"))
            raise
        return sandbox

    async def _healthy(self, sandbox: NodeSandbox) -> bool:
        if sandbox.state is not SandboxState.RUNNING or sandbox.agent is None:
            return False
        if self.spec.warm and not sandbox.code.default_ready():
            return False
        try:
            await sandbox.agent.call(proto.OP_PING, deadline=HEALTH_TIMEOUT)
        except SandboxError:
            return False
        return True

    async def _fill(self) -> None:
        failures = 0
        while True:
            self._ready = collections.deque(sb for sb in self._ready
                                            if sb.state is SandboxState.RUNNING)
            self.stats.ready = len(self._ready)
            image = self.image
            if image is None or len(self._ready) + self._starting >= self.spec.size:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._starting += 1
            self.stats.starting = self._starting
            try:
                sandbox = await self._warmed(image)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a pool must outlive failed starts
                failures += 1
                self.stats.failed_starts += 1
                delay = min(_BACKOFF[0] * 2 ** (failures - 1), _BACKOFF[1])
                log.warning("warm pool %s: a start failed (%s); retrying in %g s",
                            self.spec.image, exc, delay)
                await asyncio.sleep(delay)
                continue
            finally:
                self._starting -= 1
                self.stats.starting = self._starting
            failures = 0
            if image != self.image:  # retargeted while it started
                await sandbox.stop("its warm pool's image was rebuilt")
                continue
            self._ready.append(sandbox)
            self.stats.ready = len(self._ready)

    async def close(self) -> list[NodeSandbox]:
        """Stop refilling; returns the ready sandboxes, for the node to stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        ready, self._ready = list(self._ready), collections.deque()
        return ready
