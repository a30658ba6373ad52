"""The idle reaper: a task of the server's lifespan that acts on sandboxes on its own.

Every tick (a second by default) it:

* stops each sandbox idle past its ``idle_timeout`` (``on_idle="kill"``), or pauses it
  (``on_idle="pause"``; if the pause fails, it stops it, saying so). What counts as use is
  :mod:`.activity`'s; a command still running is asked of the agent first;
* kills each sandbox paused for longer than its ``paused_ttl``.

Each check and the pause or stop that follows it run with nothing awaited in between, so
no request slips in between the two: a request that arrives during a pause waits for it
and resumes the sandbox (:meth:`SandboxService.owned`), and a resume under way wins over
the paused TTL. A sandbox's state and reason reach the store through the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from corral.api.errors import SandboxError
from corral.node import Node, NodeSandbox, SandboxState

from .activity import (Upkeep, idle_pause_failed_reason, idle_pause_reason, idle_reason,
                       paused_ttl_reason)
from .sandboxes import SandboxService

log = logging.getLogger(__name__)

#: Seconds between two looks; a sandbox outlives its idle timeout by at most about this.
REAP_INTERVAL = 1.0


class IdleReaper:
    def __init__(self, sandboxes: SandboxService, node: Node,
                 interval: float = REAP_INTERVAL) -> None:
        self._sandboxes = sandboxes
        self._node = node
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking on the running event loop (the server's lifespan calls this)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="corral-idle-reaper")

    async def close(self) -> None:
        """Stop ticking. A stop in progress goes on (the node shields it); the service's
        ``record_all`` writes how it ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reap_idle(self) -> int:
        """Stop, or pause (``on_idle="pause"``), every sandbox idle past its idle timeout;
        returns how many."""
        now = time.monotonic()
        due = [(sandbox, upkeep) for sandbox, upkeep in self._sandboxes.upkept()
               if upkeep.idle_past_timeout(now)]
        done = await asyncio.gather(*(self._reap(sandbox, upkeep) for sandbox, upkeep in due))
        return sum(done)

    async def reap_paused(self) -> int:
        """Kill every sandbox paused for longer than its paused TTL; returns how many."""
        now = time.time()
        due = [(sandbox, upkeep.paused_ttl) for sandbox, upkeep in self._sandboxes.upkept()
               if sandbox.paused_at is not None and now - sandbox.paused_at >= upkeep.paused_ttl]
        done = await asyncio.gather(*(self._kill_paused(sandbox, ttl) for sandbox, ttl in due))
        return sum(done)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for reap in (self.reap_idle, self.reap_paused):
                try:
                    await reap()
                except Exception:
                    log.exception("acting on idle or long-paused sandboxes failed")

    async def _reap(self, sandbox: NodeSandbox, upkeep: Upkeep) -> bool:
        if upkeep.idle_timeout is None or not _settled(sandbox):
            return False  # paused, stopping, or on its way there
        try:
            # A command still running (in the background, streamed, or waited on) is
            # activity. The agent answers this: a hostile one can claim to be busy, but
            # then only its lifetime timeout ends it, which bounds every sandbox anyway.
            busy = bool(await sandbox.commands.list())
        except SandboxError:
            return False  # it is stopping on its own
        if busy:
            upkeep.touch()
            return False
        if not _settled(sandbox) or not upkeep.idle_past_timeout(time.monotonic()):
            return False  # it stopped, or something used it, while we asked
        if upkeep.on_idle == "pause":
            await self._pause(sandbox, upkeep.idle_timeout)
        else:
            reason = idle_reason(upkeep.idle_timeout)
            log.info("sandbox %s stopped: %s", sandbox.id, reason)
            await sandbox.stop(reason)  # requests in flight and the record both say why
        await self._sandboxes.record(sandbox)
        return True

    async def _pause(self, sandbox: NodeSandbox, idle_timeout: float) -> None:
        """Pause a sandbox its idle timeout ran out for; stop it, saying why, if the pause
        fails (its runtime cannot pause it, or the checkpoint failed)."""
        reason = idle_pause_reason(idle_timeout)
        try:
            await self._node.pause(sandbox.id, reason=reason)
        except SandboxError as exc:
            why = idle_pause_failed_reason(idle_timeout, exc.message)
            log.warning("sandbox %s stopped: %s", sandbox.id, why)
            await sandbox.stop(why)
            return
        log.info("sandbox %s %s", sandbox.id, reason)

    async def _kill_paused(self, sandbox: NodeSandbox, paused_ttl: float) -> bool:
        # Nothing awaited between this check and the stop taking the sandbox's transition
        # lock: a resume that began first is left to finish, and the sandbox to live.
        if not sandbox.is_paused or sandbox.transition.locked():
            return False
        reason = paused_ttl_reason(paused_ttl)
        log.info("sandbox %s stopped: %s", sandbox.id, reason)
        await sandbox.stop(reason)
        await self._sandboxes.record(sandbox)
        return True


def _settled(sandbox: NodeSandbox) -> bool:
    """Running, with no pause or resume under way."""
    return sandbox.state is SandboxState.RUNNING and sandbox.changing is None
