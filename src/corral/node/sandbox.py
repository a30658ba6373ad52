"""A live sandbox as the node holds it: its agent channel, commands, files and lifetime."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from corral.api.errors import SandboxNotRunningError
from corral.api.resources import Resources, check_timeout
from corral.runtime import Runtime, RuntimeSandbox

from .agent_client import AgentClient
from .commands import Commands
from .files import Files
from .interpreter import CodeInterpreter
from .models import SandboxInfo, SandboxState

if TYPE_CHECKING:
    from .node import Node


class Sandbox:
    """One sandbox. Get one from :meth:`corral.node.Node.create`.

    Attributes:
        commands: run processes (:class:`corral.node.commands.Commands`).
        files: move files in and out (:class:`corral.node.files.Files`).
        code: run code in stateful Jupyter contexts
            (:class:`corral.node.interpreter.CodeInterpreter`).
    """

    def __init__(self, node: Node, sandbox_id: str, image: str, runtime: Runtime,
                 handle: RuntimeSandbox, resources: Resources, env: dict[str, str],
                 workdir: str, metadata: dict[str, str], timeout: float) -> None:
        self._node = node
        self.id = sandbox_id
        self.image = image
        self.runtime = runtime
        self.handle = handle
        self.resources = resources
        self.env = env
        self.workdir = workdir
        self.metadata = metadata
        self.created_at = time.time()
        self.expires_at = self.created_at + timeout
        self.state = SandboxState.STARTING
        self.stop_reason: str | None = None
        self.agent: AgentClient | None = None
        self.stderr_tail = bytearray()
        self.commands = Commands(self)
        self.files = Files(self)
        self.code = CodeInterpreter(self)
        self._timer: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Task[None] | None = None

    def info(self) -> SandboxInfo:
        return SandboxInfo(id=self.id, image=self.image, runtime=self.runtime.name,
                           state=self.state, resources=self.resources,
                           created_at=self.created_at, expires_at=self.expires_at,
                           metadata=dict(self.metadata), stop_reason=self.stop_reason)

    def _agent(self) -> AgentClient:
        if self.state is not SandboxState.RUNNING or self.agent is None or self.agent.closed:
            reason = self.stop_reason or (self.agent.close_reason if self.agent else None)
            raise SandboxNotRunningError(
                f"sandbox {self.id} is {self.state.value}" + (f": {reason}" if reason else ""))
        return self.agent

    def _counters(self) -> tuple[int, int]:
        return self.runtime.counters(self.handle)

    def _limit_hit(self, since: tuple[int, int]) -> str | None:
        return self.runtime.limit_hit(self.handle, since)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self.expires_at - time.time())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            delay, lambda: loop.create_task(self._node._stop(
                self, f"timeout: sandbox lifetime of {self.expires_at - self.created_at:g} s "
                      "reached")))

    async def set_timeout(self, seconds: float) -> None:
        """Let the sandbox live ``seconds`` more from now (replaces the previous timeout)."""
        self._agent()
        check_timeout(seconds)
        self.expires_at = time.time() + seconds
        self._arm_timer()
        self._node._write_record(self)

    async def kill(self) -> None:
        """Stop the sandbox now and remove everything it left on the host."""
        await self._node._stop(self, "killed by request")

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()
