"""The sandbox lifecycle: its states, the transitions allowed between them, and their owner.

Every change of a sandbox's state goes through :class:`Lifecycle` (nothing else assigns
it), which checks the move against :data:`TRANSITIONS`, records why a sandbox stops,
persists the sandbox (its record on disk, see :mod:`.records`), and then tells every
listener registered with :meth:`Lifecycle.on_state` (the node's bookkeeping, the control
plane's store), so nobody has to poll. It also owns each sandbox's lifetime timer.

::

    STARTING ──────► RUNNING ──────► STOPPING ──► STOPPED
       │   │        pause │ ▲ resume     ▲  ▲
       │   │              ▼ │   (kill)   │  │
       │   └──────────► PAUSED ──────────┘  │
       │  (adopted paused)                  │
       └────────────────────────────────────┘
                (a start that fails)

A paused sandbox's lifetime clock stands still: :meth:`Lifecycle.hold` stops its timer and
keeps what was left of its lifetime in ``lifetime_left``; the move back to RUNNING sets its
expiry that far from now. While paused, ``expires_at`` still says when it would have ended
had it not been paused. The pausing itself is :mod:`.pausing`'s. ``paused_at`` is set as a
sandbox becomes PAUSED (unless it already says when: an adopted one's) and cleared as it
leaves that state.

When a sandbox's lifetime runs out it is stopped, unless its ``on_timeout`` is ``"pause"``
and the node gave :attr:`Lifecycle.pause_expired`: then that pauses it (and stops it if
the pause fails).

Adding a state (forking, lost, ...) is a member of :class:`SandboxState` and its rows in
:data:`TRANSITIONS`; every caller already goes through :meth:`Lifecycle.move`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from corral.api.errors import InternalError, SandboxError, SandboxNotRunningError

if TYPE_CHECKING:
    from .sandbox import NodeSandbox

log = logging.getLogger(__name__)


class SandboxState(enum.Enum):
    """Where a sandbox is in its life (the wire's ``state``)."""

    STARTING = "starting"
    RUNNING = "running"
    #: Stopped where it was, to be resumed (:meth:`corral.node.Node.pause`).
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"


S = SandboxState
#: The moves :meth:`Lifecycle.move` allows: from a state, to these.
TRANSITIONS: Mapping[SandboxState, frozenset[SandboxState]] = {
    # STARTING -> PAUSED: a paused sandbox a restarted node adopts.
    S.STARTING: frozenset({S.RUNNING, S.PAUSED, S.STOPPING}),
    S.RUNNING: frozenset({S.PAUSED, S.STOPPING}),
    S.PAUSED: frozenset({S.RUNNING, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}
#: Called after each transition, with the sandbox in its new state. Must not block.
StateListener = Callable[["NodeSandbox", SandboxState], None]
#: Writes down what a restarted node needs (see :mod:`.records`); may raise OSError.
Persist = Callable[["NodeSandbox"], None]
#: Pauses a sandbox whose lifetime ran out (``on_timeout="pause"``), or stops it with why.
PauseExpired = Callable[["NodeSandbox"], Coroutine[Any, Any, None]]


class IllegalTransition(InternalError):
    """A move the table does not allow: a bug in Corral, never the caller's doing."""


class Lifecycle:
    """The one owner of the node's sandbox states, stops and lifetime timers."""

    def __init__(self, persist: Persist) -> None:
        self._persist = persist
        self._listeners: list[StateListener] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._teardowns: dict[str, asyncio.Task[None]] = {}
        #: Sandboxes this node let go of, running, for the next node to adopt.
        self._released: set[str] = set()
        #: The node's pause of a sandbox whose lifetime ran out with ``on_timeout="pause"``;
        #: None: such sandboxes are stopped like the rest.
        self.pause_expired: PauseExpired | None = None
        self._expiring: set[asyncio.Task[None]] = set()

    def on_state(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener`` after every transition; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def move(self, sandbox: NodeSandbox, to: SandboxState, reason: str | None = None) -> None:
        """Move ``sandbox`` to ``to``, keep the first stop ``reason``, persist, then notify.

        Raises :class:`IllegalTransition` for a move :data:`TRANSITIONS` does not list.
        """
        now = sandbox.state
        if to not in TRANSITIONS[now]:
            raise IllegalTransition(f"sandbox {sandbox.id}: {now.value} -> {to.value} is not "
                                    "a transition of the sandbox lifecycle")
        if reason is not None and sandbox.stop_reason is None:
            sandbox.stop_reason = reason
        sandbox.state = to  # the one assignment of a node sandbox's state (a test checks)
        if to is S.RUNNING:
            if sandbox.lifetime_left is not None:  # resumed: the rest of its lifetime
                sandbox.expires_at = time.time() + sandbox.lifetime_left
                sandbox.lifetime_left = None
            sandbox.paused_at = None
            self._arm(sandbox)
        elif to is S.PAUSED:
            self.hold(sandbox)
            if sandbox.paused_at is None:
                sandbox.paused_at = time.time()
        elif to is S.STOPPING:
            sandbox.paused_at = None
            self._disarm(sandbox)
        if to is not S.STOPPED:  # a stopped sandbox's directory, and record, are gone
            self.persist(sandbox)
        for listener in list(self._listeners):
            try:
                listener(sandbox, to)
            except Exception:
                log.exception("a listener of sandbox %s's state failed", sandbox.id)

    def persist(self, sandbox: NodeSandbox) -> None:
        """Write the sandbox down again (its lifetime or labels changed)."""
        try:
            self._persist(sandbox)
        except OSError as exc:
            # The sandbox runs; it just will not survive a restart of this node.
            log.warning("sandbox %s: cannot record it for a restart: %s", sandbox.id, exc)

    def set_expiry(self, sandbox: NodeSandbox, expires_at: float) -> None:
        """Let a running sandbox live until ``expires_at`` (epoch seconds), and persist it."""
        sandbox.expires_at = expires_at
        if sandbox.state is S.RUNNING:
            self._arm(sandbox)
        self.persist(sandbox)

    def hold(self, sandbox: NodeSandbox) -> None:
        """Stop a sandbox's lifetime clock (a pause begins): its timer ends, and what is left
        of its lifetime is kept in ``lifetime_left`` (once: a second hold keeps the first)."""
        self._disarm(sandbox)
        if sandbox.lifetime_left is None:
            sandbox.lifetime_left = max(0.0, sandbox.expires_at - time.time())

    def release_hold(self, sandbox: NodeSandbox) -> None:
        """Start a running sandbox's lifetime clock again after a :meth:`hold` that led to
        no pause (the pause failed): it ends ``lifetime_left`` from now."""
        if sandbox.lifetime_left is not None and sandbox.state is S.RUNNING:
            sandbox.expires_at = time.time() + sandbox.lifetime_left
            sandbox.lifetime_left = None
            self._arm(sandbox)

    def begin_stop(self, sandbox: NodeSandbox, reason: str) -> asyncio.Task[None]:
        """Start stopping ``sandbox`` (its state and reason change now); the teardown runs
        in a task of its own, shared by every caller, and is returned."""
        if sandbox.id in self._released:
            raise SandboxNotRunningError(f"sandbox {sandbox.id} was handed over running to the "
                                         "next node on this data dir; stop it through that one")
        task = self._teardowns.get(sandbox.id)
        if task is None:
            if sandbox.state in (S.STARTING, S.RUNNING, S.PAUSED):
                self.move(sandbox, S.STOPPING, reason)
            task = asyncio.get_running_loop().create_task(self._teardown(sandbox))
            task.add_done_callback(_reported)  # a stop nobody awaits (a timer's, say)
            self._teardowns[sandbox.id] = task
        return task

    async def stop(self, sandbox: NodeSandbox, reason: str) -> None:
        """Stop ``sandbox`` and remove what it left on the host; callers that arrive while
        it stops wait for the same end. A stopped sandbox returns at once."""
        if sandbox.state is S.STOPPED:
            return
        await asyncio.shield(self.begin_stop(sandbox, reason))

    async def _teardown(self, sandbox: NodeSandbox) -> None:
        try:
            if sandbox.agent is not None:
                sandbox.agent.on_close = None
                await sandbox.agent.close()
            await sandbox.runtime.destroy(sandbox.handle)
        except SandboxError as exc:
            log.error("sandbox %s: tearing it down failed: %s", sandbox.id, exc.message)
            raise
        finally:
            self.move(sandbox, S.STOPPED)
            del self._teardowns[sandbox.id]
            log.info("sandbox %s stopped: %s", sandbox.id, sandbox.stop_reason)

    def forget(self, sandbox: NodeSandbox) -> None:
        """Drop a sandbox this node lets go of, running or paused (see ``Node.close(detach=)``):
        its timer ends, and stopping it through this node is refused from now on."""
        self._disarm(sandbox)
        self._released.add(sandbox.id)

    def keep(self, sandbox: NodeSandbox) -> None:
        """Take back a sandbox :meth:`forget` let go of (its runtime could not release it)."""
        self._released.discard(sandbox.id)

    def _arm(self, sandbox: NodeSandbox) -> None:
        self._disarm(sandbox)
        loop = asyncio.get_running_loop()
        lifetime = sandbox.expires_at - sandbox.created_at
        self._timers[sandbox.id] = loop.call_later(
            max(0.0, sandbox.expires_at - time.time()), self._expire, sandbox, lifetime)

    def _expire(self, sandbox: NodeSandbox, lifetime: float) -> None:
        """Its lifetime ran out: pause it if it asked for that and can be, else stop it."""
        self._timers.pop(sandbox.id, None)
        if (sandbox.on_timeout == "pause" and self.pause_expired is not None
                and sandbox.state is S.RUNNING and not sandbox.pooled):
            task = asyncio.get_running_loop().create_task(self.pause_expired(sandbox))
            self._expiring.add(task)  # held until done: a task nobody holds may be lost
            task.add_done_callback(self._expiring.discard)
            task.add_done_callback(_logged)
            return
        self.begin_stop(sandbox, f"timeout: sandbox lifetime of {lifetime:g} s reached")

    def _disarm(self, sandbox: NodeSandbox) -> None:
        timer = self._timers.pop(sandbox.id, None)
        if timer is not None:
            timer.cancel()


def _logged(task: asyncio.Task[None]) -> None:
    """Log a pause of an expired sandbox that failed in a way its handler did not expect."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("pausing a sandbox whose lifetime ran out failed: %s", type(exc).__name__)


def _reported(task: asyncio.Task[None]) -> None:
    """Read a teardown's outcome: its failure was logged in :meth:`Lifecycle._teardown`."""
    if not task.cancelled():
        task.exception()
