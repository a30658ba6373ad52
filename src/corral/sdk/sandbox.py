"""``AsyncSandbox``: the SDK's core. :class:`corral.Sandbox` is its blocking face.

Example::

    from corral import AsyncSandbox

    async with await AsyncSandbox.create(image="python", timeout=600) as sb:
        await sb.files.write("/work/hello.py", "print('hello')")
        r = await sb.commands.run("python3 hello.py")
        print(r.exit_code, r.stdout)

The server and key come from ``url=``/``api_key=`` or ``CORRAL_URL``/``CORRAL_API_KEY``;
an ``https://`` server made by ``corral serve --tls`` is trusted through ``ca_file=`` or
``CORRAL_CA_FILE`` (the ``ca.pem`` it prints)::

    sb = await AsyncSandbox.create(url="https://127.0.0.1:8470", api_key="crl_...",
                                   ca_file="/var/lib/corral/tls/ca.pem")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from corral.api import contract, models
from corral.api.code_events import ErrorCallback, ResultCallback, TextCallback
from corral.api.limits import DEFAULT_CODE_TIMEOUT, DEFAULT_LIFETIME
from corral.api.resources import Resources

from .images import Image, build_with
from .volumes import volume_map
from ._http import CREATE_TIMEOUT, ApiClient, checked
from .code import AsyncCodeInterpreter, Execution
from .commands import AsyncCommands
from .files import AsyncFiles
from .network import AsyncNetwork, network_spec
from .ports import AsyncPorts

#: Limits: a :class:`corral.Resources`, its wire form, or a mapping such as
#: ``{"memory": "1G", "cpus": 2}`` (checked as the wire form is).
ResourcesArg = Resources | models.ResourcesSpec | Mapping[str, str | int | float | None]
CaFile = str | os.PathLike[str]


class AsyncSandbox:
    """A sandbox on a Corral server.

    Attributes:
        commands: run processes (:class:`corral.sdk.commands.AsyncCommands`).
        files: move files in and out (:class:`corral.sdk.files.AsyncFiles`).
        code: stateful code contexts (:class:`corral.sdk.code.AsyncCodeInterpreter`);
            :meth:`run_code` runs a cell.
        network: what it may reach (:class:`corral.sdk.network.AsyncNetwork`).
        ports: apps listening inside it, reached through the server
            (:class:`corral.sdk.ports.AsyncPorts`).
        info: the description last fetched (:meth:`refresh` updates it).
    """

    def __init__(self, info: models.SandboxInfo, api: ApiClient) -> None:
        self.info = info
        self._api = api
        self.commands = AsyncCommands(self)
        self.files = AsyncFiles(self)
        self.code = AsyncCodeInterpreter(self)
        self.network = AsyncNetwork(self)
        self.ports = AsyncPorts(self)

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, state={self.info.state!r})"

    @classmethod
    async def create(cls, image: str | Image = "python", *, timeout: float = DEFAULT_LIFETIME,
                     env: Mapping[str, str] | None = None,
                     metadata: Mapping[str, str] | None = None,
                     resources: ResourcesArg | None = None, runtime: str | None = None,
                     idle_timeout: float | None = None,
                     on_idle: models.LifetimeAction = "kill",
                     on_timeout: models.LifetimeAction = "kill",
                     paused_ttl: float | None = None,
                     network: contract.NetworkArg = "none",
                     public_ports: Iterable[int] = (),
                     volumes: Mapping[str, object] | None = None, url: str | None = None,
                     api_key: str | None = None, ca_file: CaFile | None = None
                     ) -> AsyncSandbox:
        """Start a sandbox and return once it can run commands.

        Args:
            image: an image's name (``python``, or one of yours such as ``my-env:1``),
                its ``sha256:`` id, or an :class:`corral.Image`, built first (its steps
                built before are not run again).
            timeout: seconds to live; it is killed after (or paused: ``on_timeout``;
                :meth:`set_timeout` extends it).
            env: environment variables of every command.
            metadata: string labels, to find it with :meth:`list`.
            resources: limits, e.g. ``{"memory": "1G", "cpus": 2}`` or a
                :class:`corral.Resources`.
            runtime: ``"gvisor"`` or ``"namespaces"``; default: the server's strongest.
            idle_timeout: stop it (or pause it: ``on_idle``) after this many seconds in
                which nothing used it: no call touched it, no command or cell ran in it, no
                stream, file transfer or port connection was open; default: only
                ``timeout`` ends it.
            on_idle: what ``idle_timeout`` does: ``"kill"`` (the default) stops it;
                ``"pause"`` pauses it, and any later call resumes it with its files,
                memory and processes as they were (docs/pause.md, "Auto-pause").
            on_timeout: what the end of its lifetime does: ``"kill"`` (the default) stops
                it; ``"pause"`` pauses it, and its resume gives it its whole ``timeout``
                again. Either ``"pause"`` is refused (``InvalidArgumentError``) if its
                runtime cannot pause it (a gVisor sandbox with a network, today).
            paused_ttl: seconds it may stay paused (however it was paused) before the
                server kills it, from 1 s up to the server's own, which is also the
                default (``CORRAL_PAUSED_TTL``, 30 days unless its operator set another).
            network: what it may reach: ``"none"`` (the default: loopback only),
                ``"all"`` (every public address) or ``{"allow": [...], "deny": [...]}`` of
                IPs and CIDRs, each optionally with ``:port`` (``deny`` wins). Private,
                link-local and metadata addresses stay unreachable whatever it says, unless
                the server's operator opened a range.
            public_ports: ports anyone may reach through the server without a credential
                (default none: see :attr:`ports`).
            volumes: your volumes to mount, by mount point: ``{"/data": "my-vol"}``, a
                :class:`corral.Volume`, or ``{"volume": "my-vol", "read_only": True}``.
            url: the server; default ``CORRAL_URL``, else ``http://127.0.0.1:8470``.
            api_key: your key; default ``CORRAL_API_KEY`` (``corral keys create`` makes one).
            ca_file: a PEM CA bundle to verify an ``https://`` server against instead of
                the system's trust store; default ``CORRAL_CA_FILE``. Verification is never
                turned off.

        Example::

            sb = await AsyncSandbox.create("python", timeout=600, metadata={"job": "etl"},
                                           resources={"memory": "1G"})
            sb = await AsyncSandbox.create(url="https://corral.internal:8470",
                                           api_key=key, ca_file="ca.pem")
        """
        api = ApiClient(url, api_key, ca_file)
        try:
            if isinstance(image, Image):
                image = (await build_with(api, image, runtime=runtime)).id
            request = checked(models.SandboxCreate, image=image, runtime=runtime,
                              resources=_resources(resources), env=dict(env or {}),
                              metadata=dict(metadata or {}), timeout=float(timeout),
                              idle_timeout=None if idle_timeout is None
                              else float(idle_timeout), on_idle=on_idle,
                              on_timeout=on_timeout,
                              paused_ttl=None if paused_ttl is None else float(paused_ttl),
                              network=network_spec(network),
                              public_ports=list(public_ports),
                              volumes=volume_map(dict(volumes or {})))
            reply = await api.json("POST", "/v1/sandboxes", body=request,
                                   read_timeout=CREATE_TIMEOUT)
        except BaseException:
            await api.aclose()
            raise
        return cls(models.SandboxInfo.model_validate(reply), api)

    @classmethod
    async def connect(cls, sandbox_id: str, *, url: str | None = None,
                      api_key: str | None = None, ca_file: CaFile | None = None
                      ) -> AsyncSandbox:
        """An existing sandbox of yours, by id, resumed if it was paused (``url``,
        ``api_key`` and ``ca_file`` as in :meth:`create`).

        Example::

            sb = await AsyncSandbox.connect("sbx-0123abcd4567")
            await sb.commands.run("ls /work")
            await sb.close()  # leaves it running; sb.kill() stops it
        """
        api = ApiClient(url, api_key, ca_file)
        try:
            reply = await api.json("GET", f"/v1/sandboxes/{sandbox_id}")
            if reply.get("state") == "paused":  # connecting resumes it, as E2B's does
                reply = await api.json("POST", f"/v1/sandboxes/{sandbox_id}/resume",
                                       read_timeout=CREATE_TIMEOUT)
        except BaseException:
            await api.aclose()
            raise
        return cls(models.SandboxInfo.model_validate(reply), api)

    @staticmethod
    async def list(*, metadata: Mapping[str, str] | None = None, state: str | None = None,
                   url: str | None = None, api_key: str | None = None,
                   ca_file: CaFile | None = None) -> list[models.SandboxInfo]:
        """Your sandboxes, newest first: those whose metadata includes ``metadata``
        (``url``, ``api_key`` and ``ca_file`` as in :meth:`create`).

        Example::

            for info in await AsyncSandbox.list(metadata={"job": "etl"}, state="running"):
                print(info.id, info.created_at)
        """
        params = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
        if state is not None:
            params["state"] = state
        api = ApiClient(url, api_key, ca_file)
        try:
            reply = await api.json("GET", "/v1/sandboxes", params=params)
        finally:
            await api.aclose()
        return models.SandboxList.model_validate(reply).sandboxes

    async def refresh(self) -> models.SandboxInfo:
        """Fetch the sandbox's current description (state, expiry, stop reason)."""
        self.info = models.SandboxInfo.model_validate(
            await self._api.json("GET", f"/v1/sandboxes/{self.id}"))
        return self.info

    async def pause(self) -> models.SandboxInfo:
        """Pause it: its memory, processes and files are kept and its lifetime clock stops
        (gVisor: saved to disk, its CPU and memory freed, surviving a server restart;
        namespaces: frozen in place). Any later call on it resumes it, as does
        :meth:`resume` or :meth:`connect`."""
        self.info = models.SandboxInfo.model_validate(
            await self._api.json("POST", f"/v1/sandboxes/{self.id}/pause",
                                 read_timeout=CREATE_TIMEOUT))
        return self.info

    async def resume(self) -> models.SandboxInfo:
        """Resume it after :meth:`pause` (a running sandbox: nothing to do)."""
        self.info = models.SandboxInfo.model_validate(
            await self._api.json("POST", f"/v1/sandboxes/{self.id}/resume",
                                 read_timeout=CREATE_TIMEOUT))
        return self.info

    async def snapshot_filesystem(self, name: str | None = None) -> models.ImageInfo:
        """Keep this sandbox's files as an image of yours (it runs on), named ``name``
        (such as ``my-state:1``) or unnamed (use its ``id``): start sandboxes from it
        (``create(image=...)``) or build on it (``Image.base(...)``). Memory, processes
        and, under gVisor, ``/tmp`` are not in it.

        Example::

            info = await sb.snapshot_filesystem("after-setup:1")
            clone = await AsyncSandbox.create(image="after-setup:1")
        """
        request = checked(models.FilesystemSnapshot, name=name)
        reply = await self._api.json("POST", f"/v1/sandboxes/{self.id}/snapshot-filesystem",
                                     body=request, read_timeout=CREATE_TIMEOUT)
        return models.ImageInfo.model_validate(reply)

    async def set_timeout(self, seconds: float) -> None:
        """Let the sandbox live ``seconds`` more from now."""
        self.info = models.SandboxInfo.model_validate(await self._api.json(
            "POST", f"/v1/sandboxes/{self.id}/timeout",
            body=checked(models.TimeoutUpdate, timeout=float(seconds))))

    async def run_code(self, code: str, *, language: str | None = None,
                       context: contract.ContextRef | None = None,
                       timeout: float = DEFAULT_CODE_TIMEOUT,
                       on_stdout: TextCallback | None = None,
                       on_stderr: TextCallback | None = None,
                       on_result: ResultCallback | None = None,
                       on_error: ErrorCallback | None = None) -> Execution:
        """Run a cell in a stateful context, like a notebook; see
        :meth:`corral.sdk.code.AsyncCodeInterpreter.run` for the arguments.

        Example::

            ex = await sb.run_code("import pandas as pd; pd.DataFrame({'a': [1, 2]})")
            print(ex.results[0].html, ex.logs.stdout, ex.error)
        """
        return await self.code.run(code, language=language, context=context, timeout=timeout,
                                   on_stdout=on_stdout, on_stderr=on_stderr,
                                   on_result=on_result, on_error=on_error)

    async def kill(self) -> None:
        """Stop the sandbox now (killing a stopped one is not an error)."""
        await self._api.call("DELETE", f"/v1/sandboxes/{self.id}")

    async def close(self) -> None:
        """Close the connection, leaving the sandbox running."""
        await self._api.aclose()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.kill()
        finally:
            await self.close()


def _resources(value: ResourcesArg | None) -> models.ResourcesSpec:
    if value is None:
        return models.ResourcesSpec()
    if isinstance(value, Resources):
        return models.ResourcesSpec.of(value)
    if isinstance(value, models.ResourcesSpec):
        return value
    spec: models.ResourcesSpec = checked(models.ResourcesSpec, **dict(value))
    return spec


if TYPE_CHECKING:
    _conforms: type[contract.SandboxContract] = AsyncSandbox
