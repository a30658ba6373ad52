"""``Sandbox``: the blocking face of :class:`corral.AsyncSandbox`, derived from it.

Every method runs its async twin on the SDK's event-loop thread and waits, so the two
faces cannot drift: the logic exists once. Streams (command output, downloads) become
ordinary iterators; output callbacks run on the SDK's thread and must not call back into
a blocking ``Sandbox``.

Example::

    from corral import Sandbox

    with Sandbox.create(image="python", timeout=600) as sb:
        sb.files.write("/work/data.csv", b"a,b\\n1,2\\n")
        r = sb.commands.run(["python3", "-c", "print(open('data.csv').read())"])
        print(r.exit_code, r.stdout, r.stderr)

    # A server started with `corral serve --tls`, trusted through the CA file it printed:
    found = Sandbox.list(url="https://127.0.0.1:8470", api_key="crl_...",
                         ca_file="/var/lib/corral/tls/ca.pem")
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from corral._blocking import CommandIds
from corral.api import models
from corral.api.command_events import Output

from ._portal import Proxy, blocking, iterate, portal
from .code import AsyncCodeInterpreter
from .commands import AsyncCommandHandle, AsyncCommands
from .files import AsyncFiles
from .sandbox import AsyncSandbox


class CommandHandle(CommandIds, Proxy):
    """Blocking :class:`corral.sdk.commands.AsyncCommandHandle`; iterate it for output."""

    wait = blocking("wait", AsyncCommandHandle)
    send_stdin = blocking("send_stdin", AsyncCommandHandle)
    close_stdin = blocking("close_stdin", AsyncCommandHandle)
    signal = blocking("signal", AsyncCommandHandle)
    kill = blocking("kill", AsyncCommandHandle)
    close = blocking("aclose", AsyncCommandHandle)

    def __iter__(self) -> Iterator[Output]:
        return iterate(self._inner.__aiter__())

    def __enter__(self) -> CommandHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Commands(Proxy):
    """Blocking :class:`corral.sdk.commands.AsyncCommands`."""

    run = blocking("run", AsyncCommands)
    run_background = blocking("run_background", AsyncCommands)
    signal = blocking("signal", AsyncCommands)
    kill = blocking("kill", AsyncCommands)
    list = blocking("list", AsyncCommands)

    def start(self, *args: Any, **kwargs: Any) -> CommandHandle:
        return CommandHandle(portal().call(functools.partial(self._inner.start, *args,
                                                             **kwargs)))

    start.__doc__ = AsyncCommands.start.__doc__


class Files(Proxy):
    """Blocking :class:`corral.sdk.files.AsyncFiles`."""

    read = blocking("read", AsyncFiles)
    read_text = blocking("read_text", AsyncFiles)
    write = blocking("write", AsyncFiles)
    list = blocking("list", AsyncFiles)
    stat = blocking("stat", AsyncFiles)
    exists = blocking("exists", AsyncFiles)
    mkdir = blocking("mkdir", AsyncFiles)
    remove = blocking("remove", AsyncFiles)
    rename = blocking("rename", AsyncFiles)

    def read_stream(self, path: str) -> Iterator[bytes]:
        """A file's content in chunks, as it arrives."""
        return iterate(self._inner.read_stream(path))


class CodeInterpreter(Proxy):
    """Blocking :class:`corral.sdk.code.AsyncCodeInterpreter`; callbacks run on the SDK's
    thread."""

    run = blocking("run", AsyncCodeInterpreter)
    create_context = blocking("create_context", AsyncCodeInterpreter)
    list_contexts = blocking("list_contexts", AsyncCodeInterpreter)
    restart_context = blocking("restart_context", AsyncCodeInterpreter)
    interrupt = blocking("interrupt", AsyncCodeInterpreter)
    delete_context = blocking("delete_context", AsyncCodeInterpreter)


class Sandbox(Proxy):
    """A sandbox on a Corral server, blocking. A context manager that kills it at exit.

    Same methods as :class:`corral.AsyncSandbox`, without ``await``.
    """

    refresh = blocking("refresh", AsyncSandbox)
    set_timeout = blocking("set_timeout", AsyncSandbox)
    kill = blocking("kill", AsyncSandbox)
    run_code = blocking("run_code", AsyncSandbox)
    close = blocking("close", AsyncSandbox)

    def __init__(self, inner: AsyncSandbox) -> None:
        super().__init__(inner)
        self.commands = Commands(inner.commands)
        self.files = Files(inner.files)
        self.code = CodeInterpreter(inner.code)

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> Sandbox:
        return cls(portal().call(functools.partial(AsyncSandbox.create, *args, **kwargs)))

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> Sandbox:
        return cls(portal().call(functools.partial(AsyncSandbox.connect, *args, **kwargs)))

    @staticmethod
    def list(**kwargs: Any) -> list[models.SandboxInfo]:
        result: list[models.SandboxInfo] = portal().call(functools.partial(AsyncSandbox.list,
                                                                       **kwargs))
        return result

    create.__func__.__doc__ = AsyncSandbox.create.__doc__  # type: ignore[attr-defined]
    connect.__func__.__doc__ = AsyncSandbox.connect.__doc__  # type: ignore[attr-defined]
    list.__doc__ = AsyncSandbox.list.__doc__

    @property
    def id(self) -> str:
        return str(self._inner.id)

    @property
    def info(self) -> models.SandboxInfo:
        info: models.SandboxInfo = self._inner.info
        return info

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, state={self.info.state!r})"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.kill()
        finally:
            self.close()
