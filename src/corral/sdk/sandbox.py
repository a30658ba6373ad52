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

import builtins
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import RootModel

from corral.api import contract, models
from corral.api.code_events import ErrorCallback, ResultCallback, TextCallback
from corral.api.errors import InvalidArgumentError
from corral.api.limits import DEFAULT_CODE_TIMEOUT, DEFAULT_LIFETIME, MAX_METRICS_IDS
from corral.api.resources import Resources

from .images import Image, build_with
from .volumes import volume_map
from ._http import CREATE_TIMEOUT, ApiClient, checked, segment
from .code import AsyncCodeInterpreter, Execution
from .commands import AsyncCommands
from .files import AsyncFiles
from .network import AsyncNetwork, network_spec
from .ports import AsyncPorts
from .pty import AsyncPty

#: Limits: a :class:`corral.Resources`, its wire form, or a mapping such as
#: ``{"memory": "1G", "cpus": 2}`` (checked as the wire form is).
ResourcesArg = Resources | models.ResourcesSpec | Mapping[str, str | int | float | None]
CaFile = str | os.PathLike[str]
#: A snapshot to start from: its id (``snap-...``) or its description.
SnapshotArg = str | models.SnapshotInfo


@dataclass(frozen=True)
class _Connection:
    """What a sandbox's client was made with, to make more alike (its forks')."""

    url: str | None
    api_key: str | None = field(repr=False)  # never shown, as ApiClient's
    ca_file: CaFile | None
    max_retries: int | None = None

    @classmethod
    def of(cls, url: str | None, api_key: str | None, ca_file: CaFile | None,
           max_retries: int | None = None) -> _Connection:
        """As given, the environment's values filled in now (as :class:`ApiClient` does),
        so a later change of ``CORRAL_*`` does not move the forks elsewhere."""
        return cls(url or os.environ.get("CORRAL_URL"),
                   api_key or os.environ.get("CORRAL_API_KEY"),
                   ca_file or os.environ.get("CORRAL_CA_FILE") or None, max_retries)

    def client(self) -> ApiClient:
        return ApiClient(self.url, self.api_key, self.ca_file, max_retries=self.max_retries)


class _Given(RootModel[dict[str, Any]]):
    """A request body of exactly the fields the caller gave (a create from a memory
    snapshot is refused for naming what the snapshot fixes, even at its default)."""


class AsyncSandbox:
    """A sandbox on a Corral server.

    Attributes:
        commands: run processes (:class:`corral.sdk.commands.AsyncCommands`).
        pty: interactive terminals (:class:`corral.sdk.pty.AsyncPty`).
        files: move files in and out (:class:`corral.sdk.files.AsyncFiles`).
        code: stateful code contexts (:class:`corral.sdk.code.AsyncCodeInterpreter`);
            :meth:`run_code` runs a cell.
        network: what it may reach (:class:`corral.sdk.network.AsyncNetwork`).
        ports: apps listening inside it, reached through the server
            (:class:`corral.sdk.ports.AsyncPorts`).
        info: the description last fetched (:meth:`refresh` updates it).
    """

    def __init__(self, info: models.SandboxInfo, api: ApiClient,
                 connection: _Connection | None = None) -> None:
        self.info = info
        self._api = api
        self._connection = connection or _Connection.of(api.url, None, None)
        self.commands = AsyncCommands(self)
        self.pty = AsyncPty(self)
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
    async def create(cls, image: str | Image | None = None, *,
                     timeout: float = DEFAULT_LIFETIME,
                     env: Mapping[str, str] | None = None,
                     metadata: Mapping[str, str] | None = None,
                     resources: ResourcesArg | None = None, runtime: str | None = None,
                     gpu: int | str | None = None,
                     idle_timeout: float | None = None,
                     on_idle: models.LifetimeAction = "kill",
                     on_timeout: models.LifetimeAction = "kill",
                     paused_ttl: float | None = None,
                     network: contract.NetworkArg | None = None,
                     public_ports: Iterable[int] = (),
                     volumes: Mapping[str, object] | None = None,
                     snapshot: SnapshotArg | None = None,
                     node_selector: Mapping[str, str] | None = None, url: str | None = None,
                     api_key: str | None = None, ca_file: CaFile | None = None,
                     max_retries: int | None = None
                     ) -> AsyncSandbox:
        """Start a sandbox and return once it can run commands.

        Args:
            image: an image's name (``python``, the default, or one of yours such as
                ``my-env:1``), its ``sha256:`` id, or an :class:`corral.Image`, built first
                (its steps built before are not run again).
            timeout: seconds to live; it is killed after (or paused: ``on_timeout``;
                :meth:`set_timeout` extends it).
            env: environment variables of every command.
            metadata: string labels, to find it with :meth:`list`.
            resources: limits, e.g. ``{"memory": "1G", "cpus": 2}`` or a
                :class:`corral.Resources`.
            runtime: ``"gvisor"`` or ``"namespaces"``; default: the server's strongest.
            gpu: NVIDIA GPUs it has to itself: a count (``1``), a model name (``"H200"``:
                one GPU whose name contains it) or ``"H200:2"``; the same as ``resources``'
                ``gpu``. A server without a usable GPU refuses it with
                ``InvalidArgumentError`` saying why; all its GPUs in use,
                ``ResourceExhaustedError`` (docs/gpu.md).
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
            snapshot: one of your snapshots (:meth:`snapshot`), by id or as returned. One
                with memory restores the sandbox it was taken of, where it was: its
                processes, variables and files, with its image, runtime, resources, env,
                network and volumes, so leave those out (``timeout``, ``metadata``,
                ``idle_timeout`` and ``public_ports`` may be given; ``metadata`` left out
                keeps its labels). A files-only one starts a new sandbox on its files,
                with anything but ``image``.
            node_selector: on a cluster (docs/cluster.md), only a node with all these
                labels may run it, e.g. ``{"zone": "b"}``; a server of its own refuses any.
            url: the server; default ``CORRAL_URL``, else ``http://127.0.0.1:8470``.
            api_key: your key; default ``CORRAL_API_KEY`` (``corral keys create`` makes one).
            ca_file: a PEM CA bundle to verify an ``https://`` server against instead of
                the system's trust store; default ``CORRAL_CA_FILE``. Verification is never
                turned off.
            max_retries: how many times a call refused before the server did anything
                (``429 rate_limited``, ``503 unavailable``) is sent again, after the wait
                its ``Retry-After`` asks for (with exponential back-off and jitter, at most
                30 s of waiting a call); 0 to 10, default 3; 0 raises at once. A longer
                ``Retry-After`` is not waited for: the error is raised, its
                ``retry_after`` saying it. Uploads streamed from an iterator are never
                sent again.

        Example::

            sb = await AsyncSandbox.create("python", timeout=600, metadata={"job": "etl"},
                                           resources={"memory": "1G"})
            sb = await AsyncSandbox.create(url="https://corral.internal:8470",
                                           api_key=key, ca_file="ca.pem")
            again = await AsyncSandbox.create(snapshot="snap-0123456789abcdef")
        """
        if snapshot is not None and isinstance(image, Image):
            raise InvalidArgumentError("a sandbox from a snapshot runs the snapshot's image; "
                                       "leave image out")
        connection = _Connection.of(url, api_key, ca_file, max_retries)
        api = connection.client()
        try:
            if isinstance(image, Image):
                image = (await build_with(api, image, runtime=runtime)).id
            # Only what was given is sent: the server tells a default from a choice.
            given: dict[str, Any] = {"timeout": float(timeout), "on_idle": on_idle,
                                     "on_timeout": on_timeout}
            optional = {"image": image, "runtime": runtime,
                        "metadata": None if metadata is None else dict(metadata),
                        "idle_timeout": None if idle_timeout is None else float(idle_timeout),
                        "paused_ttl": None if paused_ttl is None else float(paused_ttl),
                        "network": None if network is None else network_spec(network),
                        "snapshot": _snapshot_id(snapshot)}
            given.update({k: v for k, v in optional.items() if v is not None})
            if resources:  # an empty one (as an empty env, volumes, ports) is the default
                given["resources"] = _resources(resources)
            if gpu is not None:
                limits = given.get("resources", models.ResourcesSpec())
                given["resources"] = checked(models.ResourcesSpec, **{
                    **limits.model_dump(exclude_unset=True), "gpu": gpu})
            if env:
                given["env"] = dict(env)
            if volumes:
                given["volumes"] = volume_map(dict(volumes))
            if node_selector:
                given["node_selector"] = dict(node_selector)
            if ports := list(public_ports):
                given["public_ports"] = ports
            request = checked(models.SandboxCreate, **given)
            body = _Given(request.model_dump(mode="json", exclude_unset=True,
                                             exclude_none=True))
            reply = await api.json("POST", "/v1/sandboxes", body=body,
                                   read_timeout=CREATE_TIMEOUT)
        except BaseException:
            await api.aclose()
            raise
        return cls(models.SandboxInfo.model_validate(reply), api, connection)

    @classmethod
    async def connect(cls, sandbox_id: str, *, url: str | None = None,
                      api_key: str | None = None, ca_file: CaFile | None = None,
                      max_retries: int | None = None
                      ) -> AsyncSandbox:
        """An existing sandbox of yours, by id, resumed if it was paused (``url``,
        ``api_key`` and ``ca_file`` as in :meth:`create`).

        Example::

            sb = await AsyncSandbox.connect("sbx-0123abcd4567")
            await sb.commands.run("ls /work")
            await sb.close()  # leaves it running; sb.kill() stops it
        """
        connection = _Connection.of(url, api_key, ca_file, max_retries)
        api = connection.client()
        try:
            path = f"/v1/sandboxes/{segment(sandbox_id, 'sandbox id')}"
            reply = await api.json("GET", path)
            if reply.get("state") == "paused":  # connecting resumes it, as E2B's does
                reply = await api.json("POST", f"{path}/resume",
                                       read_timeout=CREATE_TIMEOUT)
        except BaseException:
            await api.aclose()
            raise
        return cls(models.SandboxInfo.model_validate(reply), api, connection)

    @staticmethod
    async def list(*, metadata: Mapping[str, str] | None = None, state: str | None = None,
                   url: str | None = None, api_key: str | None = None,
                   ca_file: CaFile | None = None,
                   max_retries: int | None = None) -> list[models.SandboxInfo]:
        """Your sandboxes, newest first: those whose metadata includes ``metadata``
        (``url``, ``api_key``, ``ca_file`` and ``max_retries`` as in :meth:`create`).

        Example::

            for info in await AsyncSandbox.list(metadata={"job": "etl"}, state="running"):
                print(info.id, info.created_at)
        """
        params = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
        if state is not None:
            params["state"] = state
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            reply = await api.json("GET", "/v1/sandboxes", params=params)
        finally:
            await api.aclose()
        return models.SandboxList.model_validate(reply).sandboxes

    @staticmethod
    async def list_metrics(sandbox_ids: Iterable[str], *, points: int = 1,
                           url: str | None = None, api_key: str | None = None,
                           ca_file: CaFile | None = None,
                           max_retries: int | None = None
                           ) -> dict[str, builtins.list[models.MetricSample]]:
        """The newest ``points`` samples (1 to 120) of each of your sandboxes among
        ``sandbox_ids``, oldest first, by id (one request per 100 ids). Another tenant's
        sandbox, or an unknown id, is simply absent. Asking is not activity.

        Example::

            latest = await AsyncSandbox.list_metrics([sb.id for sb in found])
        """
        wanted = builtins.list(dict.fromkeys(sandbox_ids))
        found: dict[str, builtins.list[models.MetricSample]] = {}
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            for i in range(0, len(wanted), MAX_METRICS_IDS):
                reply = await api.json("GET", "/v1/metrics/sandboxes", params={
                    "ids": ",".join(wanted[i:i + MAX_METRICS_IDS]), "points": str(points)})
                found.update(models.SandboxesMetrics.model_validate(reply).sandboxes)
        finally:
            await api.aclose()
        return found

    async def refresh(self) -> models.SandboxInfo:
        """Fetch the sandbox's current description (state, expiry, stop reason)."""
        self.info = models.SandboxInfo.model_validate(
            await self._api.json("GET", f"/v1/sandboxes/{segment(self.id)}"))
        return self.info

    async def pause(self) -> models.SandboxInfo:
        """Pause it: its memory, processes and files are kept and its lifetime clock stops
        (gVisor: saved to disk, its CPU and memory freed, surviving a server restart;
        namespaces: frozen in place). Any later call on it resumes it, as does
        :meth:`resume` or :meth:`connect`."""
        self.info = models.SandboxInfo.model_validate(
            await self._api.json("POST", f"/v1/sandboxes/{segment(self.id)}/pause",
                                 read_timeout=CREATE_TIMEOUT))
        return self.info

    async def resume(self) -> models.SandboxInfo:
        """Resume it after :meth:`pause` (a running sandbox: nothing to do)."""
        self.info = models.SandboxInfo.model_validate(
            await self._api.json("POST", f"/v1/sandboxes/{segment(self.id)}/resume",
                                 read_timeout=CREATE_TIMEOUT))
        return self.info

    async def get_metrics(self, start: datetime | float | None = None,
                          end: datetime | float | None = None
                          ) -> builtins.list[models.MetricSample]:
        """The samples the server took of this sandbox, oldest first: one every
        ``CORRAL_METRICS_INTERVAL`` seconds (5 by default) while it ran (none while paused),
        kept for its life and a while after it stopped (``CORRAL_METRICS_RETENTION``).

        ``start``, ``end``: a datetime (a naive one is local time) or Unix seconds; each
        optional (everything kept). Each :class:`~corral.api.models.MetricSample` has
        ``time``, ``cpu_percent`` (the share of its cores busy: 100 is all of them),
        ``memory_used``/``memory_limit``, ``disk_used``/``disk_limit`` (bytes), ``pids``
        and ``net_rx_bytes``/``net_tx_bytes`` (None without a network). Asking is not
        activity: it keeps nothing from its idle timeout, and a paused sandbox stays so.

        Example::

            peak = max(s.memory_used for s in await sb.get_metrics())
        """
        params = {name: f"{_seconds(value):.6f}"
                  for name, value in (("start", start), ("end", end)) if value is not None}
        reply = await self._api.json("GET", f"/v1/sandboxes/{segment(self.id)}/metrics",
                                     params=params)
        return models.SandboxMetrics.model_validate(reply).samples

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
        reply = await self._api.json("POST",
                                     f"/v1/sandboxes/{segment(self.id)}/snapshot-filesystem",
                                     body=request, read_timeout=CREATE_TIMEOUT)
        return models.ImageInfo.model_validate(reply)

    async def snapshot(self, name: str | None = None, *, memory: bool = True,
                       ttl: float | None = None) -> models.SnapshotInfo:
        """Keep this sandbox as it is now (it runs on), to start sandboxes from later
        (``create(snapshot=...)``); manage them with :class:`corral.sdk.snapshots.AsyncSnapshot`.

        Args:
            name: a label of yours (letters, digits, ``._-``; not unique).
            memory: keep its memory, processes (a code context's kernel and its variables
                too) and files: a sandbox started from it goes on where this one is now.
                gVisor only (RuntimeUnavailableError on namespaces: take a files-only
                one); a copy of a networked sandbox gets a network of its own under the
                same policy. It holds whatever the memory held, secrets included.
                ``False``: its files alone (any runtime),
                kept as an image of yours; memory, processes and, under gVisor, ``/tmp``
                are not in it.
            ttl: seconds it is kept, 60 to 7776000 (90 days); default the server's (7
                days). It is then deleted; sandboxes started from it run on.

        Your snapshots together count against a disk quota (ResourceExhaustedError once
        it is used up: delete some).

        Example::

            await sb.run_code("model = train()")
            snap = await sb.snapshot("trained", ttl=3600)
            again = await AsyncSandbox.create(snapshot=snap)   # model is there
        """
        request = checked(models.SnapshotCreate, name=name, memory=memory, ttl=ttl)
        reply = await self._api.json("POST", f"/v1/sandboxes/{segment(self.id)}/snapshots",
                                     body=request, read_timeout=CREATE_TIMEOUT)
        return models.SnapshotInfo.model_validate(reply)

    async def fork(self, count: int = 1, *, timeout: float | None = None,
                   metadata: Mapping[str, str] | None = None) -> builtins.list[AsyncSandbox]:
        """``count`` new sandboxes (1 to 16), each a copy of this one as it is now, which
        runs on: each has its memory (a code context's variables, and any secret it
        held), processes and files as they were at that instant, with its image,
        runtime, resources, env, network and volumes; and its own id, port token and
        files from then on (what one writes, the others do not see). gVisor only
        (RuntimeUnavailableError otherwise). They are connected as this one is (same
        server, key, CA file); kill or close each.

        Args:
            count: how many copies, 1 to 16.
            timeout: each copy's lifetime in seconds; default: what this one has left.
            metadata: the copies' labels; default: this one's.

        Example::

            await sb.run_code("data = load()")
            for copy in await sb.fork(3):
                async with copy:                      # killed at the end
                    print((await copy.run_code("len(data)")).text)
        """
        request = checked(models.ForkRequest, count=count,
                          timeout=None if timeout is None else float(timeout),
                          metadata=None if metadata is None else dict(metadata))
        reply = await self._api.json("POST", f"/v1/sandboxes/{segment(self.id)}/fork", body=request,
                                     read_timeout=CREATE_TIMEOUT)
        return [type(self)(info, self._connection.client(), self._connection)
                for info in models.SandboxList.model_validate(reply).sandboxes]

    async def set_timeout(self, seconds: float) -> None:
        """Let the sandbox live ``seconds`` more from now."""
        self.info = models.SandboxInfo.model_validate(await self._api.json(
            "POST", f"/v1/sandboxes/{segment(self.id)}/timeout",
            body=checked(models.TimeoutUpdate, timeout=float(seconds))))

    async def run_code(self, code: str, *, language: str | None = None,
                       context: contract.ContextRef | None = None,
                       timeout: float = DEFAULT_CODE_TIMEOUT,
                       env: Mapping[str, str] | None = None,
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
                                   env=env, on_stdout=on_stdout, on_stderr=on_stderr,
                                   on_result=on_result, on_error=on_error)

    async def kill(self) -> None:
        """Stop the sandbox now (killing a stopped one is not an error)."""
        await self._api.call("DELETE", f"/v1/sandboxes/{segment(self.id)}")

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


def _snapshot_id(snapshot: SnapshotArg | None) -> str | None:
    if isinstance(snapshot, models.SnapshotInfo):
        return snapshot.id
    return snapshot


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


def _seconds(value: datetime | float) -> float:
    """Unix seconds of a datetime (a naive one is local time) or a number."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"a time is a datetime or Unix seconds, not "
                                   f"{type(value).__name__}")
    return float(value)
