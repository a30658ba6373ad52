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
from collections.abc import Mapping
from contextlib import AbstractContextManager

from anyio.from_thread import BlockingPortal, start_blocking_portal

from corral._blocking import (CommandIds, Proxy, blocking, blocking_iter, blocking_wrapped,
                              iterate)

from .commands import CommandHandle, Commands
from .files import Files
from .interpreter import CodeInterpreter
from corral.api.models import SandboxInfo

from .lifecycle import SandboxState
from .node import Node
from .sandbox import Sandbox
from .settings import NodeSettings


class SyncCommandHandle(CommandIds[CommandHandle]):
    """Blocking :class:`corral.node.commands.CommandHandle`; iterate it for output."""

    wait = blocking(CommandHandle.wait)
    send_stdin = blocking(CommandHandle.send_stdin)
    close_stdin = blocking(CommandHandle.close_stdin)
    signal = blocking(CommandHandle.signal)
    kill = blocking(CommandHandle.kill)
    close = blocking(CommandHandle.aclose)
    __iter__ = blocking_iter(CommandHandle.__aiter__)

    def __enter__(self) -> SyncCommandHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncCommands(Proxy[Commands]):
    """Blocking :class:`corral.node.commands.Commands`."""

    run = blocking(Commands.run)
    start = blocking_wrapped(Commands.start, SyncCommandHandle)
    run_background = blocking(Commands.run_background)
    list = blocking(Commands.list)
    signal = blocking(Commands.signal)
    kill = blocking(Commands.kill)


class SyncFiles(Proxy[Files]):
    """Blocking :class:`corral.node.files.Files`."""

    read = blocking(Files.read)
    read_text = blocking(Files.read_text)
    read_stream = blocking_iter(Files.read_stream)
    write = blocking(Files.write)
    list = blocking(Files.list)
    stat = blocking(Files.stat)
    exists = blocking(Files.exists)
    mkdir = blocking(Files.mkdir)
    remove = blocking(Files.remove)
    rename = blocking(Files.rename)


class SyncCodeInterpreter(Proxy[CodeInterpreter]):
    """Blocking :class:`corral.node.interpreter.CodeInterpreter`."""

    run = blocking(CodeInterpreter.run)
    stream = blocking_wrapped(CodeInterpreter.stream, iterate)
    create_context = blocking(CodeInterpreter.create_context)
    list_contexts = blocking(CodeInterpreter.list_contexts)
    restart_context = blocking(CodeInterpreter.restart_context)
    delete_context = blocking(CodeInterpreter.delete_context)
    interrupt = blocking(CodeInterpreter.interrupt)


class SyncSandbox(Proxy[Sandbox]):
    """Blocking :class:`corral.node.sandbox.Sandbox`; a context manager that kills it."""

    kill = blocking(Sandbox.kill)
    stop = blocking(Sandbox.stop)
    set_timeout = blocking(Sandbox.set_timeout)
    refresh = blocking(Sandbox.refresh)
    run_code = blocking(Sandbox.run_code)

    def __init__(self, inner: Sandbox, portal: BlockingPortal) -> None:
        super().__init__(inner, portal)
        self.commands = SyncCommands(inner.commands, portal)
        self.files = SyncFiles(inner.files, portal)
        self.code = SyncCodeInterpreter(inner.code, portal)

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
    def stop_reason(self) -> str | None:
        return self._inner.stop_reason

    def __enter__(self) -> SyncSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class SyncNode(Proxy[Node]):
    """Blocking :class:`corral.node.node.Node`, on an event loop of its own."""

    create = blocking_wrapped(Node.create, SyncSandbox)
    destroy = blocking(Node.destroy)

    def __init__(self, settings: NodeSettings | None = None) -> None:
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        portal = self._portal_cm.__enter__()
        try:
            super().__init__(Node(settings), portal)
            portal.call(self._inner.start)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    @property
    def node(self) -> Node:
        return self._inner

    def get(self, sandbox_id: str) -> SyncSandbox:
        return SyncSandbox(self._inner.get(sandbox_id), self._portal)

    def list(self, metadata: Mapping[str, str] | None = None,
             state: SandboxState | None = None) -> list[SyncSandbox]:
        return [SyncSandbox(sb, self._portal) for sb in self._inner.list(metadata=metadata,
                                                                        state=state)]

    @property
    def lost(self) -> dict[str, str]:
        return self._inner.lost

    def close(self, *, detach: bool = False) -> None:
        try:
            self._portal.call(functools.partial(self._inner.close, detach=detach))
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
