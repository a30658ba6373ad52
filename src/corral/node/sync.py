"""The blocking face of the node, derived from the async core.

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
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .commands import CommandHandle, Commands
from .files import Files
from .node import Node, NodeSettings
from .sandbox import Sandbox

T = TypeVar("T")


def _blocking(name: str, source: type) -> Callable[..., Any]:
    """A method that calls ``self._inner.<name>`` on the portal and waits for it."""

    def method(self: _Proxy, *args: Any, **kwargs: Any) -> Any:
        return self._portal.call(functools.partial(getattr(self._inner, name), *args, **kwargs))

    method.__name__ = name
    method.__doc__ = getattr(source, name).__doc__
    return method


def _iterate(portal: BlockingPortal, iterator: AsyncIterator[T]) -> Iterator[T]:
    while True:
        try:
            yield portal.call(iterator.__anext__)
        except StopAsyncIteration:
            return


class _Proxy:
    def __init__(self, inner: Any, portal: BlockingPortal) -> None:
        self._inner = inner
        self._portal = portal


class SyncCommandHandle(_Proxy):
    """Blocking :class:`corral.node.commands.CommandHandle`; iterate it for output."""

    wait = _blocking("wait", CommandHandle)
    send_stdin = _blocking("send_stdin", CommandHandle)
    close_stdin = _blocking("close_stdin", CommandHandle)
    signal = _blocking("signal", CommandHandle)
    kill = _blocking("kill", CommandHandle)

    @property
    def pid(self) -> int:
        return int(self._inner.pid)

    def __iter__(self) -> Iterator[Any]:
        return _iterate(self._portal, self._inner.__aiter__())


class SyncCommands(_Proxy):
    """Blocking :class:`corral.node.commands.Commands`."""

    run = _blocking("run", Commands)
    list = _blocking("list", Commands)

    def start(self, *args: Any, **kwargs: Any) -> SyncCommandHandle:
        handle = self._portal.call(functools.partial(self._inner.start, *args, **kwargs))
        return SyncCommandHandle(handle, self._portal)


class SyncFiles(_Proxy):
    """Blocking :class:`corral.node.files.Files`."""

    read = _blocking("read", Files)
    read_text = _blocking("read_text", Files)
    write = _blocking("write", Files)
    list = _blocking("list", Files)
    stat = _blocking("stat", Files)
    exists = _blocking("exists", Files)
    mkdir = _blocking("mkdir", Files)
    remove = _blocking("remove", Files)
    rename = _blocking("rename", Files)

    def read_stream(self, path: str) -> Iterator[bytes]:
        return _iterate(self._portal, self._inner.read_stream(path))


class SyncSandbox(_Proxy):
    """Blocking :class:`corral.node.sandbox.Sandbox`; a context manager that kills it."""

    kill = _blocking("kill", Sandbox)
    set_timeout = _blocking("set_timeout", Sandbox)

    def __init__(self, inner: Sandbox, portal: BlockingPortal) -> None:
        super().__init__(inner, portal)
        self.commands = SyncCommands(inner.commands, portal)
        self.files = SyncFiles(inner.files, portal)

    @property
    def id(self) -> str:
        return str(self._inner.id)

    def info(self) -> Any:
        return self._inner.info()

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

    def close(self) -> None:
        try:
            self._portal.call(self._node.close)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
