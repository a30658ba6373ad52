"""Sandboxes that outlive their node: letting go of them, and taking them over again.

``Node.close(detach=True)`` :func:`release`\\ s each running sandbox: the node closes its
channel, the agent sees it end and waits (up to the orphan grace) for a new node. The next
node on the same data dir reads each sandbox's record (:mod:`.records`) and :func:`adopt`\\ s
it: the runtime re-attaches to it, and the node listens on a socket in the sandbox's
read-only run folder until the agent reconnects and says hello. A paused sandbox is adopted
paused, with no channel (nothing of it runs): the runtime checks that what a resume needs is
there, and the channel comes with the resume (:mod:`.pausing`). A sandbox whose node died
pausing it (its record says running, and the pause's mark is there) is adopted paused if
the runtime's part got done (:meth:`Runtime.finish_pause`), else running. A sandbox that cannot be
adopted is torn down; the node lists it, with the reason, in ``Node.lost``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.api.errors import AgentError, SandboxError
from corral.runtime import Runtime, RuntimeSandbox, SandboxSpec
from corral.runtime.host import channel_socket, give_socket, net_namespace_path

from . import records
from .agent_client import AgentClient
from .images import ImageStore
from .lifecycle import Lifecycle, SandboxState
from .sandbox import NodeSandbox

log = logging.getLogger(__name__)

#: How long a starting node waits for each surviving sandbox's agent to reconnect.
ADOPT_TIMEOUT = 10.0


class AdoptionError(SandboxError):
    """A sandbox a previous node left could not be taken over; the message says why."""


@dataclass(frozen=True)
class Adopted:
    """A sandbox taken over from a previous node: its record, runtime handle and channel
    (None for a paused one)."""

    record: records.SandboxRecord
    runtime: Runtime
    handle: RuntimeSandbox
    agent: AgentClient | None


async def adopt(directory: Path, *, runtime: Callable[[str], Runtime], images: ImageStore,
                bundle: Path, node_key: str) -> Adopted:
    """Take over the sandbox a previous node left in ``directory``.

    Raises :class:`AdoptionError` with the reason when it cannot be; what the runtime had
    re-attached is then destroyed, and the caller's sweep removes the rest.
    """
    sandbox_id = directory.name
    try:
        record = await asyncio.to_thread(records.read, directory)
        paused = record.state == SandboxState.PAUSED.value
        if record.state != SandboxState.RUNNING.value and not paused:
            raise AdoptionError(f"it was {record.state} when its node stopped")
        chosen = runtime(record.runtime)
        built = images.get(record.image)
        spec = SandboxSpec(sandbox_id=sandbox_id, rootfs=built.rootfs,
                           cgroup=f"{node_key}/{sandbox_id}", resources=record.resources,
                           agent_bundle=bundle, directory=directory, layers=built.layers,
                           netns=_netns(record.extra, node_key))
        cut_short = None
        if not paused and await asyncio.to_thread(records.pausing_marked, directory):
            # Its node died pausing it: paused if the runtime's part got done.
            cut_short = await chosen.finish_pause(spec, record.extra)
            paused = cut_short is not None
            if paused:
                log.warning("sandbox %s: its node died pausing it; adopted paused",
                            sandbox_id)
        handle = cut_short or await (chosen.adopt_paused if paused else chosen.adopt)(
            spec, record.extra)
        if "net" in record.extra:  # the node's, not the runtime's: kept whatever it keeps
            handle.extra["net"] = record.extra["net"]
    except (ValueError, OSError, SandboxError) as exc:
        raise AdoptionError(_message(exc)) from exc
    if paused:
        return Adopted(record, chosen, handle, None)
    try:
        agent = await reconnect(spec, f"sandbox {sandbox_id}")
    except (OSError, SandboxError) as exc:
        try:
            await chosen.destroy(handle)
        except SandboxError as teardown:
            log.error("sandbox %s: tearing it down failed: %s", sandbox_id, teardown.message)
        raise AdoptionError(_message(exc)) from exc
    return Adopted(record, chosen, handle, agent)


async def reconnect(spec: SandboxSpec, label: str) -> AgentClient:
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
        give_socket(path)  # the sandbox's root may connect; nobody else
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


async def release(sandbox: NodeSandbox, lifecycle: Lifecycle) -> bool:
    """Let go of a running or paused sandbox without stopping it; False if it is stopping
    or its runtime cannot leave it be (the caller then stops it). A pause or resume under
    way ends first."""
    async with sandbox.transition:
        if sandbox.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
            return False  # it stopped meanwhile: its teardown is under way
        return await _release(sandbox, lifecycle)


async def _release(sandbox: NodeSandbox, lifecycle: Lifecycle) -> bool:
    lifecycle.forget(sandbox)
    if sandbox.agent is not None:
        sandbox.agent.on_close = None
        await sandbox.agent.close()  # the agent sees its channel end and waits
    try:
        await sandbox.runtime.release(sandbox.handle)
    except SandboxError as exc:
        log.warning("sandbox %s cannot outlive this node (%s); stopping it", sandbox.id,
                    exc.message)
        lifecycle.keep(sandbox)
        return False
    log.info("sandbox %s released, still %s", sandbox.id, sandbox.state.value)
    return True


def _netns(extra: dict[str, object], node_key: str) -> Path | None:
    """The network namespace the sandbox was started in (None: loopback only), from the
    slot its record names: a gVisor sandbox's checkpoint and restore run on it too."""
    recorded = extra.get("net")
    if recorded is None:
        return None
    index = recorded.get("index") if isinstance(recorded, dict) else None
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise AdoptionError(f"its record's network {recorded!r:.200} names no slot")
    return net_namespace_path(node_key, index)


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SandboxError) else str(exc)
