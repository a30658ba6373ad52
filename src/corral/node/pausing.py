"""Pausing and resuming a sandbox: the node's side (docs/pause.md).

A pause, in order:

1. the runtime says whether this sandbox can be paused at all (nothing touched yet);
2. its lifetime clock stops (:meth:`Lifecycle.hold`: what is left of it is kept);
3. the agent quiesces (:meth:`AgentClient.pause`): it has read every request before, the
   node writes and reads nothing more, and every request in flight fails with
   :data:`~corral.node.agent_client.PAUSED` (a command's output stream, a transfer; the
   commands themselves run on); the agent's own timeouts stop counting;
4. the runtime stops the sandbox where it is (gVisor: a checkpoint to disk, nothing of it
   left running or mounted; namespaces: the cgroup freezer);
5. the state becomes PAUSED, written to its record with the lifetime left (or, for a pause
   because its lifetime ran out, its whole lifetime again: see ``lifetime``), the time,
   and why (``state_reason``).

A resume: a networked sandbox's slot is made ready for it
(:meth:`~corral.node.network.NodeNetwork.reinstate`: gVisor's restore needs its address
back in its namespace), the runtime lets it run (gVisor: a restore with new pipes;
namespaces: a thaw), the node starts a new session with the agent (its ``hello``, over the
new pipes, the old ones, or the socket for a sandbox adopted from an earlier node), the
lifetime clock runs again from what was left, and the code interpreter follows its kernel
bridge again, so its contexts keep their state.

Pausing a paused sandbox and resuming a running one do nothing. A pause or resume holds
the sandbox's ``transition`` lock, as a stop does: one waits for the other. While one is
under way, and while paused, the sandbox's commands, files and code answer
SandboxNotRunningError saying so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.api.errors import SandboxError, SandboxNotRunningError
from corral.runtime import RuntimeState

from . import records
from .adoption import reconnect
from .agent_client import CALL_TIMEOUT, AgentClient
from .lifecycle import Lifecycle, SandboxState
from .network import NodeNetwork
from .sandbox import NodeSandbox

log = logging.getLogger(__name__)

#: How long a resumed (or un-paused) sandbox's agent has to answer its hello.
HELLO_TIMEOUT = 30.0


async def pause(sandbox: NodeSandbox, lifecycle: Lifecycle,
                agent_closed: Callable[[NodeSandbox, str], None], reason: str,
                lifetime: float | None = None) -> float | None:
    """Pause a running sandbox; returns the seconds it took, None if it was paused already
    (nothing done).

    ``agent_closed``: the node's handler of a channel that closes on its own, given to the
    new session when a pause fails and the sandbox runs on. ``reason``: its
    ``state_reason`` once paused. ``lifetime``: the seconds of lifetime its resume gives it
    (default: what it had left). Raises SandboxNotRunningError
    if it is stopping or stopped, RuntimeUnavailableError if its runtime cannot pause it
    (nothing changed), and the runtime's error if the pause failed: the sandbox then runs
    on if it can, else it is stopped with the reason.
    """
    async with sandbox.transition:
        if sandbox.state is SandboxState.PAUSED:
            return None
        agent = sandbox.channel()  # stopping or stopped: says so, with the reason
        sandbox.runtime.check_pause(sandbox.handle)
        started = time.monotonic()
        sandbox.changing = "pausing"
        lifecycle.hold(sandbox)
        try:
            sandbox.code.suspend()
            try:
                await agent.pause(CALL_TIMEOUT)
            except SandboxError as exc:  # wedged or gone: not to be trusted with a pause
                await _stop(sandbox, lifecycle, f"pausing it failed: {exc.message}")
                raise
            # From here until its record says paused, a node that dies leaves a mark: the
            # next one finishes the pause if the runtime's part got done (adoption).
            directory = sandbox.handle.spec.directory
            marked = not sandbox.pooled
            if marked:
                await asyncio.to_thread(records.mark_pausing, directory)
            try:
                await sandbox.runtime.pause(sandbox.handle)
            except SandboxError as exc:
                await _recover(sandbox, lifecycle, agent_closed, exc)
                if marked:
                    await asyncio.to_thread(records.unmark_pausing, directory)
                raise
        finally:
            sandbox.changing = None
        if lifetime is not None:
            sandbox.lifetime_left = lifetime
        sandbox.state_reason = reason
        lifecycle.move(sandbox, SandboxState.PAUSED)  # and records all of it
        if marked:
            await asyncio.to_thread(records.unmark_pausing, directory)
    took = time.monotonic() - started
    log.info("sandbox %s paused in %.3f s (%s)", sandbox.id, took, reason)
    return took


async def resume(sandbox: NodeSandbox, lifecycle: Lifecycle,
                 agent_closed: Callable[[NodeSandbox, str], None],
                 on_stderr: Callable[[NodeSandbox, asyncio.StreamReader], None],
                 network: NodeNetwork, reason: str,
                 take: Callable[[NodeSandbox], None] | None = None) -> float | None:
    """Resume a paused sandbox; returns the seconds it took until its agent answered, None
    for a running one (nothing done). ``on_stderr``: the node's reader of a new runtime
    process's stderr; ``network``: the node's, which readies the sandbox's slot first.
    ``reason``: its ``state_reason`` once resumed. ``take``: called first, under the
    sandbox's transition lock, to take back what it gave up when it paused (its GPUs);
    if it raises, nothing is done and the sandbox stays paused.

    Raises SandboxNotRunningError if it is stopping or stopped; if its network cannot be
    made ready or the runtime fails, the sandbox stays paused (resume may be tried again,
    or kill it); if its agent does not answer, the sandbox is stopped with the reason.
    """
    async with sandbox.transition:
        if sandbox.state is SandboxState.RUNNING:
            return None
        if sandbox.state is not SandboxState.PAUSED:
            sandbox.channel()  # says why, with the reason
            raise SandboxNotRunningError(f"sandbox {sandbox.id} is {sandbox.state.value}")
        if take is not None:
            take(sandbox)
        started = time.monotonic()
        sandbox.changing = "resuming"
        try:
            await network.reinstate(sandbox)
            process = await sandbox.runtime.resume(sandbox.handle)
            try:
                agent = await _session(sandbox, process, on_stderr)
            except SandboxError as exc:
                await _stop(sandbox, lifecycle, f"resuming it failed: {exc.message}")
                raise
        finally:
            sandbox.changing = None
        sandbox.agent = agent
        agent.on_close = lambda why: agent_closed(sandbox, why)
        sandbox.state_reason = reason
        lifecycle.move(sandbox, SandboxState.RUNNING)  # its clock: what was left, from now
    took = time.monotonic() - started
    try:
        await sandbox.code.reattach()
    except SandboxError as exc:  # the contexts say so on their next cell
        log.warning("sandbox %s: its code contexts' kernels are out of reach after the "
                    "resume: %s", sandbox.id, exc.message)
    log.info("sandbox %s resumed in %.3f s (%s)", sandbox.id, took, reason)
    return took


async def keep_memory(sandbox: NodeSandbox, lifecycle: Lifecycle,
                      agent_closed: Callable[[NodeSandbox, str], None],
                      destination: Path) -> dict[str, Any] | None:
    """Keep a running sandbox's memory, processes and files in ``destination`` (a memory
    snapshot, :mod:`.checkpoints`) and let it run on; returns its code interpreter's
    kernels as the snapshot holds them (None: it had none).

    As a pause: the agent quiesces first (its requests in flight fail, its commands run
    on), the runtime keeps the sandbox, then a new session starts on the same channel and
    the code interpreter follows its bridge again. Its lifetime clock runs on. Raises
    SandboxNotRunningError if it is not running, RuntimeUnavailableError if its runtime
    cannot (nothing changed), and the runtime's error if the snapshot failed (the sandbox
    runs on if it can, else it is stopped with the reason); ``destination`` is then the
    caller's to remove.
    """
    async with sandbox.transition:
        agent = sandbox.channel()  # paused, stopping or stopped: says so
        sandbox.runtime.check_snapshot(sandbox.handle)
        started = time.monotonic()
        sandbox.changing = "snapshotting"
        try:
            sandbox.code.suspend()
            kernels = sandbox.code.kernels()
            try:
                await agent.pause(CALL_TIMEOUT)
            except SandboxError as exc:
                await _stop(sandbox, lifecycle, f"quiescing it for a snapshot failed: "
                                                f"{exc.message}")
                raise
            failed: SandboxError | None = None
            try:
                await sandbox.runtime.snapshot(sandbox.handle, destination)
            except SandboxError as exc:
                failed = exc
            if sandbox.handle.state is not RuntimeState.RUNNING:
                await _stop(sandbox, lifecycle, "its snapshot failed: "
                            + (failed.message if failed else "it did not run on"))
                raise failed or SandboxNotRunningError(f"sandbox {sandbox.id} stopped")
            try:
                agent = await _session(sandbox, None, lambda *_: None)
            except SandboxError as exc:
                await _stop(sandbox, lifecycle, f"its agent did not answer after a snapshot: "
                                                f"{exc.message}")
                raise
            sandbox.agent = agent
            agent.on_close = lambda reason: agent_closed(sandbox, reason)
        finally:
            sandbox.changing = None
    try:
        await sandbox.code.reattach()
    except SandboxError as exc:  # the contexts say so on their next cell
        log.warning("sandbox %s: its code contexts' kernels are out of reach after a "
                    "snapshot: %s", sandbox.id, exc.message)
    if failed is not None:
        raise failed
    log.info("sandbox %s: memory kept in %.3f s", sandbox.id, time.monotonic() - started)
    return kernels


async def restored_session(sandbox: NodeSandbox,
                           on_stderr: Callable[[NodeSandbox, asyncio.StreamReader], None]
                           ) -> AgentClient:
    """The first session with the agent of a sandbox restored from a memory snapshot: it
    waits, as after a resume, for a ``hello`` on the new pipes its runtime gave it."""
    process = sandbox.handle.process
    if process is None:
        raise SandboxError(f"sandbox {sandbox.id}: its runtime gave no agent channel")
    agent = await _session(sandbox, process, on_stderr)
    sandbox.agent = agent
    return agent


async def _session(sandbox: NodeSandbox, process: asyncio.subprocess.Process | None,
                   on_stderr: Callable[[NodeSandbox, asyncio.StreamReader], None]
                   ) -> AgentClient:
    """The new session with a resumed sandbox's agent: over the runtime's new process, the
    node's pipes to its old one, or (with neither) the socket it reconnects to."""
    label = f"sandbox {sandbox.id}"
    if process is None:
        process = sandbox.handle.process
        if process is None:  # adopted from an earlier node: no pipes of this node's
            return await reconnect(sandbox.handle.spec, label)
    elif process.stderr is not None:
        on_stderr(sandbox, process.stderr)
    if process.stdout is None or process.stdin is None:
        raise SandboxError(f"{label}: its runtime gave no agent channel")
    agent = AgentClient(process.stdout, process.stdin, label)
    await agent.greet(HELLO_TIMEOUT)
    return agent


async def _recover(sandbox: NodeSandbox, lifecycle: Lifecycle,
                   agent_closed: Callable[[NodeSandbox, str], None],
                   exc: SandboxError) -> None:
    """The runtime failed to pause the sandbox: if it says the sandbox runs on, start a new
    session with its agent (the one the pause ended) and let its lifetime run again; if
    that fails too, or it does not run on, stop it."""
    if sandbox.handle.state is RuntimeState.RUNNING:
        try:
            agent = await _session(sandbox, None, lambda *_: None)
        except SandboxError as again:
            await _stop(sandbox, lifecycle, f"pausing it failed ({exc.message}), and its "
                                            f"agent did not answer after: {again.message}")
            return
        sandbox.agent = agent
        agent.on_close = lambda reason: agent_closed(sandbox, reason)
        lifecycle.release_hold(sandbox)
        log.warning("sandbox %s could not be paused, and runs on: %s", sandbox.id,
                    exc.message)
        return
    await _stop(sandbox, lifecycle, f"pausing it failed: {exc.message}")


async def _stop(sandbox: NodeSandbox, lifecycle: Lifecycle, reason: str) -> None:
    sandbox.changing = None
    try:
        await lifecycle.stop(sandbox, reason)
    except SandboxError as exc:  # logged by the lifecycle; the caller raises the first error
        log.debug("sandbox %s: %s", sandbox.id, exc.message)
