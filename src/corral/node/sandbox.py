"""A live sandbox as the node holds it: its agent channel, commands, files and lifetime.

Its state belongs to the node's :class:`~corral.node.lifecycle.Lifecycle`: this object
reads it, and asks the lifecycle to stop it or to change its expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from corral.api import contract, models
from corral.api.errors import SandboxNotRunningError
from corral.api.limits import DEFAULT_CODE_TIMEOUT
from corral.api.resources import Resources, check_action, check_timeout
from corral.runtime import Runtime, RuntimeSandbox, Usage

from .agent_client import AgentClient
from .commands import NodeCommands
from .files import NodeFiles
from .interpreter import NodeCodeInterpreter
from .lifecycle import Lifecycle, SandboxState
from .network import NodeNetwork, SandboxNetwork
from .ports import NodePorts
from .volumes import VolumeMount


class NodeSandbox:
    """One sandbox. Get one from :meth:`corral.node.Node.create`.

    Attributes:
        commands: run processes (:class:`corral.node.commands.NodeCommands`).
        files: move files in and out (:class:`corral.node.files.NodeFiles`).
        code: run code in stateful Jupyter contexts
            (:class:`corral.node.interpreter.NodeCodeInterpreter`).
        network: what it may reach (:class:`corral.node.network.SandboxNetwork`).
        ports: connections to apps listening inside it
            (:class:`corral.node.ports.NodePorts`).
        state: where it is in its life; written only by its node's lifecycle.
        is_paused: whether it is paused (:meth:`corral.node.Node.pause`): cheap, no I/O.
        stop_reason: why it stopped (or is stopping), once it does.
        state_reason: why it was last paused or resumed (``paused: by request``,
            ``resumed: by a command``, ...); None until it is first paused.
        paused_at: when it was paused (epoch seconds); None unless it is paused.
        timeout: the lifetime it was created with, in seconds; a resume after its
            lifetime paused it (``on_timeout``) gives it this much again.
        on_timeout: what the end of its lifetime does: ``"kill"`` (the default) or
            ``"pause"`` (:meth:`set_on_timeout`).
        pooled: waiting in a warm pool: not listed, not recorded, not yet anyone's.
        volumes: the volumes it mounts, where, and whether read-only.
    """

    def __init__(self, lifecycle: Lifecycle, sandbox_id: str, image: str, runtime: Runtime,
                 handle: RuntimeSandbox, resources: Resources, env: dict[str, str],
                 workdir: str, metadata: dict[str, str], timeout: float,
                 network: NodeNetwork, pooled: bool = False, user: str | None = None,
                 volumes: tuple[VolumeMount, ...] = ()) -> None:
        self._lifecycle = lifecycle
        self.id = sandbox_id
        self.image = image
        self.runtime = runtime
        self.handle = handle
        self.resources = resources
        self.env = env
        self.workdir = workdir
        #: The user commands run as when a call names none (the image's); None: root.
        self.user = user
        self.metadata = metadata
        self.volumes = volumes
        self.created_at = time.time()
        self.timeout = timeout
        self.expires_at = self.created_at + timeout
        self.on_timeout = "kill"
        self.state = SandboxState.STARTING
        self.stop_reason: str | None = None
        self.state_reason: str | None = None
        self.paused_at: float | None = None
        #: Seconds of lifetime it had left when it was paused; None while it runs.
        self.lifetime_left: float | None = None
        #: "pausing", "resuming" or "snapshotting" while one is under way (the state
        #: changes at the end of the first two).
        self.changing: str | None = None
        #: Held by a pause, a resume and a stop: one at a time (see :mod:`.pausing`).
        self.transition = asyncio.Lock()
        self.pooled = pooled
        self.agent: AgentClient | None = None
        self.stderr_tail = bytearray()
        self.commands = NodeCommands(self)
        self.files = NodeFiles(self)
        self.code = NodeCodeInterpreter(self)
        self.network = SandboxNetwork(self, network)
        self.ports = NodePorts(self)

    def __repr__(self) -> str:
        return f"NodeSandbox(id={self.id!r}, state={self.state.value!r})"

    @property
    def is_paused(self) -> bool:
        """Whether it is paused: its commands, files and code wait for a resume."""
        return self.state is SandboxState.PAUSED

    def persist(self) -> None:
        """Write its record again (after a change a restarted node must know)."""
        self._lifecycle.persist(self)

    @property
    def info(self) -> models.SandboxInfo:
        """Its description and state now, as the API gives it."""
        return models.SandboxInfo(
            id=self.id, image=self.image, runtime=self.runtime.name, state=self.state.value,
            resources=models.ResourcesSpec.of(self.resources), metadata=dict(self.metadata),
            created_at=datetime.fromtimestamp(self.created_at, UTC),
            expires_at=datetime.fromtimestamp(self.expires_at, UTC),
            stop_reason=self.stop_reason,
            state_reason=(self.stop_reason if self.stop_reason is not None
                          else self.state_reason),
            paused_at=(None if self.paused_at is None
                       else datetime.fromtimestamp(self.paused_at, UTC)),
            on_timeout=self.on_timeout)  # type: ignore[arg-type]  # checked when set

    async def refresh(self) -> models.SandboxInfo:
        """Its description now (the node's copy is always current)."""
        return self.info

    def channel(self) -> AgentClient:
        """The agent's channel; raises SandboxNotRunningError, with the reason, once it
        stopped or stops."""
        if self.changing in ("resuming", "snapshotting"):
            raise SandboxNotRunningError(f"sandbox {self.id} is {self.changing}; retry in a "
                                         "moment")
        if self.changing == "pausing" or self.state is SandboxState.PAUSED:
            raise SandboxNotRunningError(
                f"sandbox {self.id} is {'being ' if self.changing else ''}paused; resume it "
                "to use it")
        if self.state is not SandboxState.RUNNING or self.agent is None or self.agent.closed:
            reason = self.stop_reason or (self.agent.close_reason if self.agent else None)
            raise SandboxNotRunningError(
                f"sandbox {self.id} is {self.state.value}" + (f": {reason}" if reason else ""))
        return self.agent

    def counters(self) -> tuple[int, int]:
        """The runtime's limit counters now, to compare with :meth:`limit_hit` later."""
        return self.runtime.counters(self.handle)

    def usage(self) -> Usage:
        """What it uses now: CPU time so far, memory, its writable layer (a paused gVisor
        sandbox: none of its memory, which is on disk)."""
        return self.runtime.usage(self.handle)

    def limit_hit(self, since: tuple[int, int]) -> str | None:
        """Which limit, if any, was hit since ``since`` (e.g. ``killed: memory limit ...``)."""
        return self.runtime.limit_hit(self.handle, since)

    async def run_code(self, code: str, *, language: str | None = None,
                       context: contract.ContextRef | None = None,
                       timeout: float | None = DEFAULT_CODE_TIMEOUT,
                       env: Mapping[str, str] | None = None,
                       on_stdout: Callable[[str], None] | None = None,
                       on_stderr: Callable[[str], None] | None = None,
                       on_result: Callable[[models.Result], None] | None = None,
                       on_error: Callable[[models.ExecutionError], None] | None = None
                       ) -> models.Execution:
        """Run a cell in a stateful context; see :meth:`NodeCodeInterpreter.run`."""
        return await self.code.run(code, language=language, context=context, timeout=timeout,
                                   env=env, on_stdout=on_stdout, on_stderr=on_stderr,
                                   on_result=on_result, on_error=on_error)

    async def set_timeout(self, seconds: float) -> None:
        """Let the sandbox live ``seconds`` more from now (replaces the previous timeout)."""
        self.channel()
        check_timeout(seconds)
        self._lifecycle.set_expiry(self, time.time() + seconds)

    def check_pausable(self) -> None:
        """Raise RuntimeUnavailableError, saying why, if its runtime cannot pause it (a
        networked gVisor sandbox, today); cheap, no I/O."""
        self.runtime.check_pause(self.handle)

    async def set_on_timeout(self, action: str) -> None:
        """What the end of its lifetime does from now: ``"kill"`` stops it; ``"pause"``
        pauses it instead (its files, memory and processes kept), and its resume gives it
        its whole :attr:`timeout` again. Refused (RuntimeUnavailableError) with
        ``"pause"`` if its runtime cannot pause it."""
        check_action(action, "on_timeout")
        if action == "pause":
            self.check_pausable()
        self.on_timeout = action
        self._lifecycle.persist(self)

    async def stop(self, reason: str) -> None:
        """Stop the sandbox, recording ``reason`` (unless it already stops for another),
        and remove everything it left on the host (a paused one's saved state too).
        Stopping a stopped one returns at once; a pause or resume under way ends first."""
        if self.state is SandboxState.STOPPED:
            return
        async with self.transition:
            await self._lifecycle.stop(self, reason)

    async def kill(self) -> None:
        """Stop the sandbox now and remove everything it left on the host."""
        await self.stop("killed by request")

    async def __aenter__(self) -> NodeSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()


if TYPE_CHECKING:
    _conforms: type[contract.SandboxContract] = NodeSandbox
