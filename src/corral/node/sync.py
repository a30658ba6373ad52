"""The blocking face of the node, derived from the async core (see :mod:`corral._blocking`).

Every method here runs its async twin on a private event loop (an anyio blocking
portal) and waits for it, so the two faces cannot drift: the logic exists once. Streams
(command output, file downloads) become ordinary iterators.

Example::

    from corral.node.sync import SyncNode

    with SyncNode() as node, node.create("python") as sb:
        print(sb.commands.run("echo hi").stdout)
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from anyio.from_thread import BlockingPortal, start_blocking_portal

from corral._blocking import (CommandIds, Proxy, blocking, blocking_iter, blocking_wrapped,
                              iterate)

from .checkpoints import MemorySnapshot
from .commands import NodeCommandHandle, NodeCommands
from .files import NodeFiles, NodeWatch
from .interpreter import NodeCodeInterpreter
from .network import SandboxNetwork
from corral.api.models import SandboxInfo
from corral.api.network import NetworkPolicy
from corral.runtime import Runtime
from corral.runtime.gpu import GpuHost

from .lifecycle import SandboxState
from .node import Node
from .sandbox import NodeSandbox
from .settings import NodeSettings
from .volumes import VolumeMount, VolumeStore


class SyncNodeCommandHandle(CommandIds[NodeCommandHandle]):
    """Blocking :class:`corral.node.commands.NodeCommandHandle`; iterate it for output."""

    wait = blocking(NodeCommandHandle.wait)
    send_stdin = blocking(NodeCommandHandle.send_stdin)
    close_stdin = blocking(NodeCommandHandle.close_stdin)
    signal = blocking(NodeCommandHandle.signal)
    resize = blocking(NodeCommandHandle.resize)
    kill = blocking(NodeCommandHandle.kill)
    close = blocking(NodeCommandHandle.aclose)
    __iter__ = blocking_iter(NodeCommandHandle.__aiter__)

    def __enter__(self) -> SyncNodeCommandHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncNodeCommands(Proxy[NodeCommands]):
    """Blocking :class:`corral.node.commands.NodeCommands`."""

    run = blocking(NodeCommands.run)
    start = blocking_wrapped(NodeCommands.start, SyncNodeCommandHandle)
    connect = blocking_wrapped(NodeCommands.connect, SyncNodeCommandHandle)
    run_background = blocking(NodeCommands.run_background)
    list = blocking(NodeCommands.list)
    signal = blocking(NodeCommands.signal)
    kill = blocking(NodeCommands.kill)
    resize = blocking(NodeCommands.resize)


class SyncNodeWatch(Proxy[NodeWatch]):
    """Blocking :class:`corral.node.files.NodeWatch`; iterate it for events."""

    close = blocking(NodeWatch.aclose)
    __iter__ = blocking_iter(NodeWatch.__aiter__)

    def __enter__(self) -> SyncNodeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncNodeFiles(Proxy[NodeFiles]):
    """Blocking :class:`corral.node.files.NodeFiles`."""

    read = blocking(NodeFiles.read)
    read_text = blocking(NodeFiles.read_text)
    read_stream = blocking_iter(NodeFiles.read_stream)
    write = blocking(NodeFiles.write)
    list = blocking(NodeFiles.list)
    stat = blocking(NodeFiles.stat)
    exists = blocking(NodeFiles.exists)
    mkdir = blocking(NodeFiles.mkdir)
    remove = blocking(NodeFiles.remove)
    rename = blocking(NodeFiles.rename)
    watch = blocking_wrapped(NodeFiles.watch, SyncNodeWatch)


class SyncNodeCodeInterpreter(Proxy[NodeCodeInterpreter]):
    """Blocking :class:`corral.node.interpreter.NodeCodeInterpreter`."""

    run = blocking(NodeCodeInterpreter.run)
    stream = blocking_wrapped(NodeCodeInterpreter.stream, iterate)
    create_context = blocking(NodeCodeInterpreter.create_context)
    list_contexts = blocking(NodeCodeInterpreter.list_contexts)
    restart_context = blocking(NodeCodeInterpreter.restart_context)
    delete_context = blocking(NodeCodeInterpreter.delete_context)
    interrupt = blocking(NodeCodeInterpreter.interrupt)


class SyncNodeNetwork(Proxy[SandboxNetwork]):
    """Blocking :class:`corral.node.network.SandboxNetwork`."""

    get = blocking(SandboxNetwork.get)
    update = blocking(SandboxNetwork.update)
    events = blocking(SandboxNetwork.events)

    @property
    def policy(self) -> NetworkPolicy:
        return self._inner.policy



class SyncNodeSandbox(Proxy[NodeSandbox]):
    """Blocking :class:`corral.node.sandbox.NodeSandbox`; a context manager that kills it."""

    kill = blocking(NodeSandbox.kill)
    stop = blocking(NodeSandbox.stop)
    set_timeout = blocking(NodeSandbox.set_timeout)
    set_on_timeout = blocking(NodeSandbox.set_on_timeout)
    refresh = blocking(NodeSandbox.refresh)
    run_code = blocking(NodeSandbox.run_code)

    def __init__(self, inner: NodeSandbox, portal: BlockingPortal) -> None:
        super().__init__(inner, portal)
        self.commands = SyncNodeCommands(inner.commands, portal)
        self.files = SyncNodeFiles(inner.files, portal)
        self.code = SyncNodeCodeInterpreter(inner.code, portal)
        self.network = SyncNodeNetwork(inner.network, portal)

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def info(self) -> SandboxInfo:
        """Its description and state now, as the API gives it."""
        return self._inner.info

    @property
    def state(self) -> SandboxState:
        return self._inner.state

    @property
    def volumes(self) -> tuple[VolumeMount, ...]:
        return self._inner.volumes

    @property
    def stop_reason(self) -> str | None:
        return self._inner.stop_reason

    @property
    def is_paused(self) -> bool:
        return self._inner.is_paused

    @property
    def state_reason(self) -> str | None:
        return self._inner.state_reason

    def __enter__(self) -> SyncNodeSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class SyncNode(Proxy[Node]):
    """Blocking :class:`corral.node.node.Node`, on an event loop of its own."""

    create = blocking_wrapped(Node.create, SyncNodeSandbox)
    destroy = blocking(Node.destroy)
    remove_volume = blocking(Node.remove_volume)
    build_image = blocking(Node.build_image)
    import_image = blocking(Node.import_image)
    prune_images = blocking(Node.prune_images)
    retarget_pool = blocking(Node.retarget_pool)
    set_pools = blocking(Node.set_pools)
    snapshot_filesystem = blocking(Node.snapshot_filesystem)
    pause = blocking(Node.pause)
    resume = blocking(Node.resume)
    snapshot = blocking(Node.snapshot)
    remove_snapshot = blocking(Node.remove_snapshot)
    create_from_snapshot = blocking_wrapped(Node.create_from_snapshot, SyncNodeSandbox)

    def __init__(self, settings: NodeSettings | None = None, *,
                 runtimes: Mapping[str, Runtime] | None = None,
                 gpus: GpuHost | None = None, gpu_root: Path = Path("/")) -> None:
        """``settings``, ``runtimes``, ``gpus`` and ``gpu_root`` as :class:`Node` takes
        them; the node starts now."""
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        portal = self._portal_cm.__enter__()
        try:
            super().__init__(Node(settings, runtimes=runtimes, gpus=gpus, gpu_root=gpu_root),
                             portal)
            portal.call(self._inner.start)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    @property
    def node(self) -> Node:
        return self._inner

    def get(self, sandbox_id: str) -> SyncNodeSandbox:
        # On the node's loop thread, which is the one that changes its sandboxes.
        found = self._portal.call(self._inner.get, sandbox_id)
        return SyncNodeSandbox(found, self._portal)

    def list(self, metadata: Mapping[str, str] | None = None,
             state: SandboxState | None = None) -> list[SyncNodeSandbox]:
        found = self._portal.call(functools.partial(self._inner.list, metadata=metadata,
                                                    state=state))
        return [SyncNodeSandbox(sb, self._portal) for sb in found]

    def fork(self, sandbox_id: str, count: int, *, timeout: float | None = None,
             metadata: Mapping[str, str] | None = None) -> builtins.list[SyncNodeSandbox]:
        """Blocking :meth:`Node.fork`."""
        clones = self._portal.call(functools.partial(self._inner.fork, sandbox_id, count,
                                                     timeout=timeout, metadata=metadata))
        return [SyncNodeSandbox(sb, self._portal) for sb in clones]

    def list_snapshots(self) -> builtins.list[MemorySnapshot]:
        return self._inner.list_snapshots()

    @property
    def lost(self) -> dict[str, str]:
        return self._inner.lost

    @property
    def volumes(self) -> VolumeStore:
        """The node's volumes (:class:`corral.node.volumes.VolumeStore`; already blocking)."""
        return self._inner.volumes

    def volume_users(self, volume_id: str) -> builtins.list[str]:
        # On the node's loop thread, which is the one that changes its sandboxes.
        return self._portal.call(self._inner.volume_users, volume_id)

    def close(self, *, detach: bool = False) -> None:
        try:
            self._portal.call(functools.partial(self._inner.close, detach=detach))
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
