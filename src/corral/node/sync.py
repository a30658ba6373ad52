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

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from corral._blocking import CommandIds, Proxy, blocking, iterate

from .commands import CommandHandle, Commands
from .files import Files
from .interpreter import CodeInterpreter
from .node import Node
from corral.api.models import SandboxInfo

from .lifecycle import SandboxState
from .sandbox import Sandbox
from .settings import NodeSettings


class SyncCommandHandle(CommandIds, Proxy):
    """Blocking :class:`corral.node.commands.CommandHandle`; iterate it for output."""

    wait = blocking("wait", CommandHandle)
    send_stdin = blocking("send_stdin", CommandHandle)
    close_stdin = blocking("close_stdin", CommandHandle)
    signal = blocking("signal", CommandHandle)
    kill = blocking("kill", CommandHandle)

    def __iter__(self) -> Iterator[Any]:
        return iterate(self._portal, self._inner.__aiter__())


class SyncCommands(Proxy):
    """Blocking :class:`corral.node.commands.Commands`."""

    run = blocking("run", Commands)
    list = blocking("list", Commands)
    signal = blocking("signal", Commands)

    def start(self, *args: Any, **kwargs: Any) -> SyncCommandHandle:
        handle = self._portal.call(functools.partial(self._inner.start, *args, **kwargs))
        return SyncCommandHandle(handle, self._portal)


class SyncFiles(Proxy):
    """Blocking :class:`corral.node.files.Files`."""

    read = blocking("read", Files)
    read_text = blocking("read_text", Files)
    write = blocking("write", Files)
    list = blocking("list", Files)
    stat = blocking("stat", Files)
    exists = blocking("exists", Files)
    mkdir = blocking("mkdir", Files)
    remove = blocking("remove", Files)
    rename = blocking("rename", Files)

    def read_stream(self, path: str) -> Iterator[bytes]:
        return iterate(self._portal, self._inner.read_stream(path))


class SyncCodeInterpreter(Proxy):
    """Blocking :class:`corral.node.interpreter.CodeInterpreter`."""

    run = blocking("run", CodeInterpreter)
    create_context = blocking("create_context", CodeInterpreter)
    list_contexts = blocking("list_contexts", CodeInterpreter)
    restart_context = blocking("restart_context", CodeInterpreter)
    delete_context = blocking("delete_context", CodeInterpreter)
    interrupt = blocking("interrupt", CodeInterpreter)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        events = self._portal.call(functools.partial(self._inner.stream, *args, **kwargs))
        return iterate(self._portal, events)


class SyncSandbox(Proxy):
    """Blocking :class:`corral.node.sandbox.Sandbox`; a context manager that kills it."""

    kill = blocking("kill", Sandbox)
    set_timeout = blocking("set_timeout", Sandbox)

    def __init__(self, inner: Sandbox, portal: BlockingPortal) -> None:
        super().__init__(inner, portal)
        self.commands = SyncCommands(inner.commands, portal)
        self.files = SyncFiles(inner.files, portal)
        self.code = SyncCodeInterpreter(inner.code, portal)

    @property
    def id(self) -> str:
        return str(self._inner.id)

    @property
    def info(self) -> SandboxInfo:
        """Its description and state now, as the API gives it."""
        info: SandboxInfo = self._inner.info
        return info

    @property
    def state(self) -> SandboxState:
        state: SandboxState = self._inner.state
        return state

    @property
    def stop_reason(self) -> str | None:
        reason: str | None = self._inner.stop_reason
        return reason

    def __enter__(self) -> SyncSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class SyncNode:
    """Blocking :class:`corral.node.node.Node`, on an event loop of its own."""

    def __init__(self, settings: NodeSettings | None = None) -> None:
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._node = Node(settings)
        try:
            self._portal.call(self._node.start)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    @property
    def node(self) -> Node:
        return self._node

    def create(self, *args: Any, **kwargs: Any) -> SyncSandbox:
        sandbox = self._portal.call(functools.partial(self._node.create, *args, **kwargs))
        return SyncSandbox(sandbox, self._portal)

    create.__doc__ = Node.create.__doc__

    def get(self, sandbox_id: str) -> SyncSandbox:
        return SyncSandbox(self._node.get(sandbox_id), self._portal)

    def list(self, **filters: Any) -> list[SyncSandbox]:
        return [SyncSandbox(sb, self._portal) for sb in self._node.list(**filters)]

    def destroy(self, sandbox_id: str) -> None:
        self._portal.call(self._node.destroy, sandbox_id)

    @property
    def lost(self) -> dict[str, str]:
        return self._node.lost

    def close(self, *, detach: bool = False) -> None:
        try:
            self._portal.call(functools.partial(self._node.close, detach=detach))
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
