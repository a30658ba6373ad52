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

from anyio.from_thread import BlockingPortal

from corral._blocking import CommandIds, Proxy, blocking, blocking_iter, blocking_wrapped
from corral.api import models

from ._portal import blocking_constructor, blocking_static, portal
from .code import AsyncCodeInterpreter
from .network import AsyncNetwork
from .ports import AsyncPorts
from .commands import AsyncCommandHandle, AsyncCommands
from .files import AsyncFiles, AsyncWatchHandle
from .pty import AsyncPty, AsyncPtyHandle
from .sandbox import AsyncSandbox
from .snapshots import AsyncSnapshot
from .volumes import AsyncVolume


class CommandHandle(CommandIds[AsyncCommandHandle]):
    """Blocking :class:`corral.sdk.commands.AsyncCommandHandle`; iterate it for output."""

    wait = blocking(AsyncCommandHandle.wait)
    send_stdin = blocking(AsyncCommandHandle.send_stdin)
    close_stdin = blocking(AsyncCommandHandle.close_stdin)
    signal = blocking(AsyncCommandHandle.signal)
    resize = blocking(AsyncCommandHandle.resize)
    kill = blocking(AsyncCommandHandle.kill)
    close = blocking(AsyncCommandHandle.aclose)
    __iter__ = blocking_iter(AsyncCommandHandle.__aiter__)

    def __enter__(self) -> CommandHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Commands(Proxy[AsyncCommands]):
    """Blocking :class:`corral.sdk.commands.AsyncCommands`."""

    run = blocking(AsyncCommands.run)
    start = blocking_wrapped(AsyncCommands.start, CommandHandle)
    connect = blocking_wrapped(AsyncCommands.connect, CommandHandle)
    run_background = blocking(AsyncCommands.run_background)
    signal = blocking(AsyncCommands.signal)
    kill = blocking(AsyncCommands.kill)
    resize = blocking(AsyncCommands.resize)
    list = blocking(AsyncCommands.list)
    history = blocking(AsyncCommands.history)


class WatchHandle(Proxy[AsyncWatchHandle]):
    """Blocking :class:`corral.sdk.files.AsyncWatchHandle`; iterate it for events.

    :meth:`stop` may be called from another thread to end an iteration that waits.
    """

    stop = blocking(AsyncWatchHandle.stop)
    __iter__ = blocking_iter(AsyncWatchHandle.__aiter__)

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PtyHandle(CommandIds[AsyncPtyHandle]):
    """Blocking :class:`corral.sdk.pty.AsyncPtyHandle`; ``on_data`` runs on the SDK's
    thread."""

    send_input = blocking(AsyncPtyHandle.send_input)
    resize = blocking(AsyncPtyHandle.resize)
    kill = blocking(AsyncPtyHandle.kill)
    wait = blocking(AsyncPtyHandle.wait)
    close = blocking(AsyncPtyHandle.aclose)

    def __enter__(self) -> PtyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pty(Proxy[AsyncPty]):
    """Blocking :class:`corral.sdk.pty.AsyncPty`."""

    create = blocking_wrapped(AsyncPty.create, PtyHandle)


class Files(Proxy[AsyncFiles]):
    """Blocking :class:`corral.sdk.files.AsyncFiles`."""

    read = blocking(AsyncFiles.read)
    read_text = blocking(AsyncFiles.read_text)
    read_stream = blocking_iter(AsyncFiles.read_stream)
    write = blocking(AsyncFiles.write)
    list = blocking(AsyncFiles.list)
    stat = blocking(AsyncFiles.stat)
    exists = blocking(AsyncFiles.exists)
    mkdir = blocking(AsyncFiles.mkdir)
    download_url = blocking(AsyncFiles.download_url)
    upload_url = blocking(AsyncFiles.upload_url)
    remove = blocking(AsyncFiles.remove)
    rename = blocking(AsyncFiles.rename)
    watch = blocking_wrapped(AsyncFiles.watch, WatchHandle)


class CodeInterpreter(Proxy[AsyncCodeInterpreter]):
    """Blocking :class:`corral.sdk.code.AsyncCodeInterpreter`; callbacks run on the SDK's
    thread."""

    run = blocking(AsyncCodeInterpreter.run)
    create_context = blocking(AsyncCodeInterpreter.create_context)
    list_contexts = blocking(AsyncCodeInterpreter.list_contexts)
    restart_context = blocking(AsyncCodeInterpreter.restart_context)
    interrupt = blocking(AsyncCodeInterpreter.interrupt)
    delete_context = blocking(AsyncCodeInterpreter.delete_context)


class Network(Proxy[AsyncNetwork]):
    """Blocking :class:`corral.sdk.network.AsyncNetwork`."""

    get = blocking(AsyncNetwork.get)
    update = blocking(AsyncNetwork.update)
    events = blocking(AsyncNetwork.events)


class Ports(Proxy[AsyncPorts]):
    """Blocking :class:`corral.sdk.ports.AsyncPorts`."""

    signed_url = blocking(AsyncPorts.signed_url)
    get = blocking(AsyncPorts.get)
    set_public = blocking(AsyncPorts.set_public)

    def url(self, port: int, *, host_based: bool = False) -> str:
        """See :meth:`corral.sdk.ports.AsyncPorts.url`."""
        return self._inner.url(port, host_based=host_based)

    @property
    def token(self) -> str:
        return self._inner.token

    @property
    def public(self) -> list[int]:
        return self._inner.public


class VolumeFiles(Files):
    """Blocking :class:`corral.sdk.volumes.AsyncVolumeFiles`: as :class:`Files` (each call
    goes to the volume's own method by name, ``exists`` and ``rename`` included)."""


class Volume(Proxy[AsyncVolume]):
    """A volume of yours, blocking: same methods as :class:`corral.sdk.volumes.AsyncVolume`,
    without ``await``."""

    create = blocking_constructor(AsyncVolume.create)
    from_name = blocking_constructor(AsyncVolume.from_name)
    list = blocking_static(AsyncVolume.list)
    refresh = blocking(AsyncVolume.refresh)
    delete = blocking(AsyncVolume.delete)
    close = blocking(AsyncVolume.close)

    def __init__(self, inner: AsyncVolume) -> None:
        super().__init__(inner, portal())
        self.files = VolumeFiles(inner.files, self._portal)

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def info(self) -> models.VolumeInfo:
        return self._inner.info

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Snapshot:
    """Your snapshots, blocking: same calls as :class:`corral.sdk.snapshots.AsyncSnapshot`,
    without ``await``. Take one with :meth:`Sandbox.snapshot`; start from one with
    ``Sandbox.create(snapshot=...)``.

    Example::

        for info in Snapshot.list():
            print(info.id, info.name, info.memory, info.expires_at)
        Snapshot.delete("snap-0123456789abcdef")
    """

    list = blocking_static(AsyncSnapshot.list)
    get = blocking_static(AsyncSnapshot.get)
    delete = blocking_static(AsyncSnapshot.delete)


def _sandboxes(found: list[AsyncSandbox], _portal: BlockingPortal) -> list[Sandbox]:
    """Blocking faces of sandboxes an async call gave (a fork's copies)."""
    return [Sandbox(inner) for inner in found]


class Sandbox(Proxy[AsyncSandbox]):
    """A sandbox on a Corral server, blocking. A context manager that kills it at exit.

    Same methods as :class:`corral.AsyncSandbox`, without ``await``.
    """

    create = blocking_constructor(AsyncSandbox.create)
    connect = blocking_constructor(AsyncSandbox.connect)
    list = blocking_static(AsyncSandbox.list)
    list_metrics = blocking_static(AsyncSandbox.list_metrics)
    refresh = blocking(AsyncSandbox.refresh)
    get_metrics = blocking(AsyncSandbox.get_metrics)
    set_timeout = blocking(AsyncSandbox.set_timeout)
    snapshot_filesystem = blocking(AsyncSandbox.snapshot_filesystem)
    snapshot = blocking(AsyncSandbox.snapshot)
    fork = blocking_wrapped(AsyncSandbox.fork, _sandboxes)
    pause = blocking(AsyncSandbox.pause)
    resume = blocking(AsyncSandbox.resume)
    kill = blocking(AsyncSandbox.kill)
    run_code = blocking(AsyncSandbox.run_code)
    close = blocking(AsyncSandbox.close)

    def __init__(self, inner: AsyncSandbox) -> None:
        super().__init__(inner, portal())
        self.commands = Commands(inner.commands, self._portal)
        self.pty = Pty(inner.pty, self._portal)
        self.files = Files(inner.files, self._portal)
        self.code = CodeInterpreter(inner.code, self._portal)
        self.network = Network(inner.network, self._portal)
        self.ports = Ports(inner.ports, self._portal)

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def info(self) -> models.SandboxInfo:
        return self._inner.info

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, state={self.info.state!r})"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.kill()
        finally:
            self.close()
