"""The idle reaper: a task of the server's lifespan that stops sandboxes left idle.

It only ticks; what counts as activity, and the stop itself, are
:meth:`corral.server.services.SandboxService.reap_idle`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .sandboxes import SandboxService

log = logging.getLogger(__name__)

#: Seconds between two looks; a sandbox outlives its idle timeout by at most about this.
REAP_INTERVAL = 1.0


class IdleReaper:
    def __init__(self, sandboxes: SandboxService, interval: float = REAP_INTERVAL) -> None:
        self._sandboxes = sandboxes
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

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._sandboxes.reap_idle()
            except Exception:
                log.exception("stopping idle sandboxes failed")
