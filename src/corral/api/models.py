"""Wire models of the HTTP API, shared by the server and the SDK (pydantic v2, no I/O).

Every request model forbids unknown fields and bounds every string, list and mapping, so a
request is refused at the door rather than half-processed. The bounds, and the one rule for
sandbox paths, come from :mod:`corral.api.limits`, which the node and the agent share. The
semantic rules live where they already did: resource limits in :mod:`corral.api.resources`
(called from here), environment names and metadata keys in the node, which the server calls
with the same values and whose :class:`~corral.api.errors.InvalidArgumentError` answers
with the same 400 body.
Responses allow unknown fields, so an older SDK keeps working against a newer server.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      field_validator, model_validator)

from .agent_protocol import MAX_PTY_SIZE
from .errors import InvalidArgumentError
from .limits import (DEFAULT_CODE_TIMEOUT, DEFAULT_COMMAND_TIMEOUT, DEFAULT_LIFETIME,
                     DEFAULT_PAUSED_TTL, MAX_ARGV, MAX_COMMAND, MAX_ENV_NAME, MAX_MAPPING,
                     MAX_MAPPING_VALUE,
                     MAX_PUBLIC_PORTS, MAX_SANDBOX_VOLUMES, MAX_SIGNED_URL_LIFETIME,
                     normalize_path)
# Re-exported: a client reads the bounds of the fields it fills here.
from .limits import MAX_CODE as MAX_CODE
from .limits import MAX_FORK, SNAPSHOT_TTL_RANGE
from .limits import MAX_INLINE_STDIN as MAX_INLINE_STDIN
from .limits import MAX_PATH as MAX_PATH
from .image_spec import ImageSpec
from .network import MAX_ENTRIES, MAX_ENTRY, NetworkPolicy
from .resources import Resources, check_paused_ttl, check_timeout

#: Longest image name.
MAX_NAME = 128
MAX_SIGNAL = 64


def _sandbox_path(value: str) -> str:
    """Apply :func:`~corral.api.limits.normalize_path` and keep the path as given.

    Only the node knows the sandbox's workdir, so a relative path is checked against ``/``:
    it resolves shortest there, so whatever this refuses the node would refuse too.
    """
    normalize_path(value, "/")
    return value


SandboxStateName = Literal["starting", "running", "paused", "stopping", "stopped", "lost"]
#: What the server does once a sandbox's idle timeout (``on_idle``) or lifetime
#: (``on_timeout``) runs out: stop it for good, or pause it (any later call resumes it).
LifetimeAction = Literal["kill", "pause"]
Path = Annotated[str, Field(min_length=1, max_length=MAX_PATH), AfterValidator(_sandbox_path)]

#: Who owns what a file call creates: a user name or a uid of the image's /etc/passwd.
FileUser = Annotated[str, Field(min_length=1, max_length=64)] | Annotated[
    int, Field(ge=0, le=2**32 - 2)]
Mapping = Annotated[dict[Annotated[str, Field(max_length=MAX_ENV_NAME)],
                         Annotated[str, Field(max_length=MAX_MAPPING_VALUE)]],
                    Field(max_length=MAX_MAPPING)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _checked(check: Any, *args: Any) -> Any:
    """Run a :mod:`corral.api.resources` check, reporting its message as pydantic's."""
    try:
        return check(*args)
    except InvalidArgumentError as exc:
        raise ValueError(exc.message) from None


# -- sandboxes ---------------------------------------------------------------------------

class ResourcesSpec(BaseModel):
    """Limits of one sandbox. Sizes are MiB as numbers or strings such as ``"512M"``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    memory: Annotated[str, Field(max_length=32)] | Annotated[int, Field(strict=True)] | None \
        = None
    cpus: float | None = None
    pids: Annotated[int, Field(strict=True)] | None = None
    disk: Annotated[str, Field(max_length=32)] | Annotated[int, Field(strict=True)] | None \
        = None
    gpu: Annotated[str, Field(max_length=72)] | Annotated[int, Field(strict=True)] | None = \
        Field(default=None, description="NVIDIA GPUs it has to itself: a count (0-8), a "
              "model name matched against the node's GPUs (\"H200\": one of them) or "
              "\"<model>:<count>\"; a node without a usable GPU refuses it (400, saying "
              "why). See docs/gpu.md")

    @model_validator(mode="after")
    def _within_bounds(self) -> ResourcesSpec:
        self.to_resources()
        return self

    def to_resources(self) -> Resources:
        """The checked :class:`~corral.api.resources.Resources` these values describe."""
        result: Resources = _checked(Resources.parse, self.memory, self.cpus, self.pids,
                                     self.disk, self.gpu)
        return result

    @classmethod
    def of(cls, resources: Resources) -> ResourcesSpec:
        return cls(memory=resources.memory_mib, cpus=resources.cpus, pids=resources.pids,
                   disk=resources.disk_mib, gpu=resources.gpu or None)


class NetworkLists(BaseModel):
    """Allow and deny lists: IPs, CIDRs and domains, each optionally with ``:port``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    allow: Annotated[list[Annotated[str, Field(max_length=MAX_ENTRY)]],
                     Field(max_length=MAX_ENTRIES)] = Field(default_factory=list)
    deny: Annotated[list[Annotated[str, Field(max_length=MAX_ENTRY)]],
                    Field(max_length=MAX_ENTRIES)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _parses(self) -> NetworkLists:
        self.to_policy()
        return self

    def to_policy(self) -> NetworkPolicy:
        """The checked :class:`~corral.api.network.NetworkPolicy` these lists describe."""
        result: NetworkPolicy = _checked(NetworkPolicy.parse,
                                         {"allow": self.allow, "deny": self.deny})
        return result


def _network_parses(value: Any) -> Any:
    """Check a policy first, so that a bad one is one error naming its entry (rather than
    one per member of the union)."""
    if not isinstance(value, NetworkLists):
        _checked(NetworkPolicy.parse, value)
    return value


#: A network policy on the wire: ``"none"`` (loopback only), ``"all"`` (every public
#: address) or allow/deny lists (see :mod:`corral.api.network`).
NetworkSpec = Annotated[Literal["none", "all"] | NetworkLists, BeforeValidator(_network_parses)]


def network_policy(spec: NetworkSpec) -> NetworkPolicy:
    """The :class:`~corral.api.network.NetworkPolicy` a wire spec describes."""
    return spec.to_policy() if isinstance(spec, NetworkLists) else NetworkPolicy.parse(spec)


def network_spec(policy: NetworkPolicy) -> NetworkSpec:
    """The wire form of ``policy``."""
    if policy.mode == "lists":
        return NetworkLists(allow=[str(r) for r in policy.allow],
                            deny=[str(r) for r in policy.deny])
    return "all" if policy.mode == "all" else "none"


def check_port(port: object) -> int:
    """``port`` if it is a TCP port number (1 to 65535), else InvalidArgumentError."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgumentError(f"port must be an integer between 1 and 65535, not "
                                   f"{port!r:.40}")
    return port


#: A TCP port inside a sandbox.
PortNumber = Annotated[int, Field(ge=1, le=65535, strict=True)]
PortList = Annotated[list[PortNumber], Field(max_length=MAX_PUBLIC_PORTS)]


#: A volume's name, as its tenant gives it.
VOLUME_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
#: A snapshot id: ``snap-`` and 16 hex digits.
SNAPSHOT_ID_PATTERN = r"^snap-[0-9a-f]{16}$"
VolumeName = Annotated[str, Field(pattern=VOLUME_NAME_PATTERN)]


class VolumeMountSpec(_Request):
    """A volume mounted in a sandbox: ``{"volume": "my-vol", "read_only": true}``."""

    volume: VolumeName
    read_only: bool = False


VolumeMap = Annotated[dict[Annotated[str, Field(min_length=1, max_length=MAX_PATH)],
                           VolumeName | VolumeMountSpec],
                      Field(max_length=MAX_SANDBOX_VOLUMES)]


class VolumeMountInfo(_Response):
    """A volume a sandbox mounts: where, which (its name), and whether read-only."""

    path: str
    volume: str
    read_only: bool = False


#: Node labels a sandbox asks for (cluster mode): names like ``zone`` or ``corral.io/gpu``.
NODE_LABEL_PATTERN = r"^[a-z0-9]([a-z0-9._/-]{0,62}[a-z0-9])?$"
NODE_LABEL_VALUE_PATTERN = r"^[A-Za-z0-9._-]{0,63}$"
MAX_NODE_SELECTOR = 16
NodeSelector = Annotated[
    dict[Annotated[str, Field(pattern=NODE_LABEL_PATTERN)],
         Annotated[str, Field(pattern=NODE_LABEL_VALUE_PATTERN)]],
    Field(max_length=MAX_NODE_SELECTOR)]


class SandboxCreate(_Request):
    """``POST /v1/sandboxes``."""

    image: Annotated[str, Field(min_length=1, max_length=MAX_NAME)] = "python"
    runtime: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    env: Mapping = Field(default_factory=dict)
    metadata: Mapping = Field(default_factory=dict)
    timeout: float = Field(default=DEFAULT_LIFETIME, description="maximum lifetime, seconds")
    idle_timeout: float | None = Field(
        default=None, description="stop (or, with on_idle=pause, pause) it after this many "
        "seconds without activity: no API call on it, no command or cell running, no stream, "
        "transfer or port connection open; default: never")
    on_idle: LifetimeAction = Field(
        default="kill", description="what its idle timeout does: \"kill\" stops it, "
        "\"pause\" pauses it (any later call resumes it); \"pause\" needs idle_timeout")
    on_timeout: LifetimeAction = Field(
        default="kill", description="what the end of its lifetime (timeout) does: \"kill\" "
        "stops it, \"pause\" pauses it, and a resume gives it its whole timeout again")
    paused_ttl: float | None = Field(
        default=None, description="seconds it may stay paused before it is killed; "
        f"default and maximum: the server's (CORRAL_PAUSED_TTL, {DEFAULT_PAUSED_TTL:.15g} s "
        "unless its operator set another)")
    network: NetworkSpec = Field(
        default="none", description="what it may reach: \"none\" (loopback only), "
        "\"all\" (every public address) or {\"allow\": [...], \"deny\": [...]}")
    public_ports: PortList = Field(
        default_factory=list, description="ports anyone may reach through the server "
        "without a token (default none: every exposed port needs a credential)")
    volumes: VolumeMap = Field(
        default_factory=dict, description="your volumes to mount, by mount point: "
        "{\"/data\": \"my-vol\"} or {\"/data\": {\"volume\": \"my-vol\", "
        "\"read_only\": true}}")
    node_selector: NodeSelector = Field(
        default_factory=dict, description="cluster mode: only a node with all these labels "
        "(`corral node ls`) may run it; at most 16. A server of its own has no labels and "
        "refuses any")
    snapshot: Annotated[str, Field(pattern=SNAPSHOT_ID_PATTERN)] | None = Field(
        default=None, description="start from one of your snapshots: with memory, where its "
        "sandbox was (then image, runtime, resources, env, network and volumes are the "
        "snapshot's and may not be given); files alone, on the snapshot's image")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        result: float = _checked(check_timeout, value)
        return result

    @field_validator("idle_timeout")
    @classmethod
    def _idle_timeout(cls, value: float | None) -> float | None:
        return None if value is None else float(_checked(check_timeout, value,
                                                         "idle timeout"))

    @field_validator("paused_ttl")
    @classmethod
    def _paused_ttl(cls, value: float | None) -> float | None:
        return None if value is None else float(_checked(check_paused_ttl, value))

    @model_validator(mode="after")
    def _pause_when_idle_needs_an_idle_timeout(self) -> SandboxCreate:
        if self.on_idle == "pause" and self.idle_timeout is None:
            raise ValueError("on_idle=pause needs idle_timeout: the seconds without activity "
                             "after which it is paused")
        return self


class NetworkUpdate(_Request):
    """``PUT /v1/sandboxes/{id}/network``: the sandbox's whole new policy."""

    network: NetworkSpec


class NetworkInfo(_Response):
    """A sandbox's network policy as it is enforced now, and its traffic so far."""

    network: NetworkSpec
    bytes_in: int = Field(default=0, description="bytes it received (through its interface "
                          "and its node's proxy)")
    bytes_out: int = Field(default=0, description="bytes it sent, the same ways")


class EgressEvent(_Response):
    """One verdict of a sandbox's resolver or proxy (a name looked up or connected to), or
    a packet its rules refused (``packet``: no name, its destination and why)."""

    at: datetime
    kind: Literal["dns", "connect", "packet"]
    name: str
    port: int | None = None
    address: str | None = Field(default=None, description="what it resolved or connected to")
    allowed: bool
    reason: str = Field(description="allowed, or why not: not-allowed, denied, "
                        "no-reachable-address (only private answers), ip-literal, no-name, "
                        "sni-mismatch, too-many-connections, upstream-unreachable; for a "
                        "packet: always-denied (private, link-local, metadata, the host, "
                        "other sandboxes), denied, not-allowed, ipv6, spoofed")


class EgressEvents(_Response):
    """``GET /v1/sandboxes/{id}/network/events``: its latest verdicts, oldest first."""

    events: list[EgressEvent]


class PortsInfo(_Response):
    """How a sandbox's ports are reached through the server (its owner sees this)."""

    token: str = Field(description="the sandbox's port token: send it as "
                       "`X-Corral-Port-Token`, or visit a port's URL once with `?token=`")
    public: list[int] = Field(default_factory=list,
                              description="ports reachable without any credential")
    domain: str = Field(description="host-based URLs are http(s)://{port}-{id}.{domain}")


class PortsUpdate(_Request):
    """``PUT /v1/sandboxes/{id}/ports``: which ports are public (the whole new list)."""

    public: PortList


class SignedUrlRequest(_Request):
    """``POST /v1/sandboxes/{id}/signed-urls``: a URL to one port that works until it
    expires, without any other credential."""

    port: PortNumber
    expires_in: float = Field(default=60.0, ge=1, le=MAX_SIGNED_URL_LIFETIME,
                              description="seconds it stays valid")
    path: Annotated[str, Field(max_length=2048, pattern=r"^/[^?#\s]*$")] = "/"
    host_based: bool = Field(default=False, description="a {port}-{id}.{domain} URL instead "
                             "of /v1/sandboxes/{id}/ports/{port}/")


class FileUrlRequest(_Request):
    """``POST /v1/sandboxes/{id}/files/signed-urls``: a URL that downloads (``read``: GET)
    or uploads (``write``: PUT, the raw body) one path until it expires, with no key."""

    path: Path
    operation: Literal["read", "write"] = "read"
    expires_in: float = Field(default=60.0, ge=1, le=MAX_SIGNED_URL_LIFETIME,
                              description="seconds it stays valid")
    user: FileUser | None = Field(default=None, description=(
        "who owns the file an upload writes (as PUT .../files ?user=); uploads only"))

    @model_validator(mode="after")
    def _user_for_uploads(self) -> FileUrlRequest:
        if self.user is not None and self.operation != "write":
            raise ValueError("user applies to uploads (operation write) only")
        return self


class SignedUrl(_Response):
    url: str
    expires_at: datetime


class TimeoutUpdate(_Request):
    """``POST /v1/sandboxes/{id}/timeout``: live ``timeout`` more seconds from now."""

    timeout: float

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        result: float = _checked(check_timeout, value)
        return result


class SandboxInfo(_Response):
    """A sandbox as the API describes it; stopped ones keep their ``stop_reason``.

    ``state_reason`` says why it is in its state now: ``paused: by the API``, ``paused: idle
    for 300 s``, ``paused: lifetime ran out (on_timeout=pause)``, ``resumed: by a command``;
    for a stopping or stopped one, its ``stop_reason``; None for one that has run since it
    started.
    """

    id: str
    image: str
    runtime: str
    state: SandboxStateName
    resources: ResourcesSpec
    metadata: dict[str, str]
    created_at: datetime
    expires_at: datetime
    stop_reason: str | None = None
    state_reason: str | None = Field(default=None, description="why it is in its state now "
                                     "(for a stopped one: its stop_reason)")
    paused_at: datetime | None = Field(default=None, description="when it was paused (only "
                                       "while paused)")
    idle_timeout: float | None = None
    on_idle: LifetimeAction = "kill"
    on_timeout: LifetimeAction = "kill"
    paused_ttl: float | None = Field(default=None, description="seconds it may stay paused "
                                     "before it is killed")
    network: NetworkSpec = "none"
    ports: PortsInfo | None = Field(default=None, description="its port token and public "
                                    "ports (see `/v1/sandboxes/{id}/ports`)")
    volumes: list[VolumeMountInfo] = Field(default_factory=list)
    node: str | None = Field(default=None, description="cluster mode: the node it runs on")


class SandboxList(_Response):
    sandboxes: list[SandboxInfo]


# -- commands ----------------------------------------------------------------------------

class PtySize(_Request):
    """A terminal's size in characters: ``pty`` of a command request, and the body of
    ``POST .../commands/{cid}/resize``."""

    cols: Annotated[int, Field(ge=1, le=MAX_PTY_SIZE)]
    rows: Annotated[int, Field(ge=1, le=MAX_PTY_SIZE)]


class CommandRequest(_Request):
    """``POST /v1/sandboxes/{id}/commands``.

    ``cmd`` is a shell string (``/bin/sh -c``) or an argv list (no shell). Without
    ``stream`` or ``background`` the call waits and answers a :class:`CommandResult`;
    ``stream`` answers NDJSON :class:`CommandEvent` lines as output arrives;
    ``background`` answers :class:`CommandStarted` at once and lets the command run.
    Inline stdin (``stdin`` text or ``stdin_base64`` bytes) is written, then closed unless
    ``stdin_open``; with ``stdin_open`` more can be sent to ``.../commands/{cid}/stdin``.
    With ``pty`` the command runs on a pseudo-terminal of that size (its stdin, stdout and
    stderr, its output all ``stdout``; ``TERM=xterm-256color`` unless ``env`` names one):
    its stdin is open (keys typed go to ``.../stdin``, Ctrl-C is ``\x03``) and
    ``.../commands/{cid}/resize`` changes the size.
    """

    cmd: Annotated[str, Field(min_length=1, max_length=MAX_COMMAND)] | Annotated[
        list[Annotated[str, Field(max_length=MAX_COMMAND)]],
        Field(min_length=1, max_length=MAX_ARGV)]
    env: Mapping = Field(default_factory=dict)
    cwd: Path | None = None
    user: Annotated[str, Field(min_length=1, max_length=64)] | Annotated[
        int, Field(ge=0, le=2**32 - 2)] | None = None
    timeout: float | None = Field(default=None, description=f"seconds; default "
                                  f"{DEFAULT_COMMAND_TIMEOUT:g} unless background or stream, "
                                  "which have none")
    stdin: Annotated[str, Field(max_length=MAX_INLINE_STDIN)] | None = None
    stdin_base64: Annotated[str, Field(max_length=MAX_INLINE_STDIN * 4 // 3 + 4)] | None = None
    stdin_open: bool = False
    stream: bool = False
    background: bool = False
    pty: PtySize | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        return None if value is None else float(_checked(check_timeout, value,
                                                         "command timeout"))

    @model_validator(mode="after")
    def _consistent(self) -> CommandRequest:
        if self.stream and self.background:
            raise ValueError("choose one of stream and background")
        if self.stdin is not None and self.stdin_base64 is not None:
            raise ValueError("choose one of stdin and stdin_base64")
        self.stdin_bytes()
        return self

    def stdin_bytes(self) -> bytes | None:
        """The inline stdin as bytes, if any."""
        if self.stdin is not None:
            return self.stdin.encode()
        if self.stdin_base64 is None:
            return None
        try:
            return base64.b64decode(self.stdin_base64, validate=True)
        except binascii.Error:
            raise ValueError("stdin_base64 is not valid base64") from None


class CommandResult(_Response):
    """How a finished command ended.

    ``exit_code`` is ``128 + n`` when killed by signal ``n``; ``reason`` says why Corral
    ended it (``"timeout"``, ``"killed"``, ``"killed: memory limit 512 MiB"``), and
    ``truncated`` that output past the server's capture limit was dropped.
    """

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    signal: int | None = None
    reason: str | None = None
    duration: float = 0.0
    truncated: bool = False


class CommandStarted(_Response):
    """A command started in the background: ``id`` addresses it in later calls."""

    id: int
    pid: int


class StartedEvent(_Response):
    type: Literal["started"] = "started"
    id: int
    pid: int


class OutputEvent(_Response):
    """A chunk of output; ``data`` is base64, as output need not be text."""

    type: Literal["stdout", "stderr"]
    data: str

    def payload(self) -> bytes:
        return base64.b64decode(self.data)


class ExitEvent(_Response):
    type: Literal["exit"] = "exit"
    exit_code: int
    signal: int | None = None
    reason: str | None = None
    duration: float = 0.0


class ErrorEvent(_Response):
    """The stream ended by an error after it began (the sandbox stopped, say)."""

    type: Literal["error"] = "error"
    error: ErrorDetail


CommandEvent = Annotated[StartedEvent | OutputEvent | ExitEvent | ErrorEvent,
                         Field(discriminator="type")]


class SignalRequest(_Request):
    """``POST .../commands/{cid}/signal``; 9 (SIGKILL) kills the command and its children."""

    signal: Annotated[int, Field(ge=1, le=MAX_SIGNAL)]


#: What a terminal runs unless told otherwise: a login shell, bash where the image has it.
TERMINAL_SHELL: tuple[str, ...] = (
    "/bin/sh", "-c", "command -v bash >/dev/null && exec bash -i -l; exec sh -i -l")


class TerminalRequest(_Request):
    """The first message (text, JSON) on ``WS /v1/sandboxes/{id}/terminal``: the terminal's
    size and what runs on it (default :data:`TERMINAL_SHELL`), as a command request's."""

    pty: PtySize
    cmd: Annotated[str, Field(min_length=1, max_length=MAX_COMMAND)] | Annotated[
        list[Annotated[str, Field(max_length=MAX_COMMAND)]],
        Field(min_length=1, max_length=MAX_ARGV)] | None = None
    env: Mapping = Field(default_factory=dict)
    cwd: Path | None = None
    user: Annotated[str, Field(min_length=1, max_length=64)] | Annotated[
        int, Field(ge=0, le=2**32 - 2)] | None = None
    timeout: float | None = Field(default=None, description="seconds; default none")

    def command(self) -> CommandRequest:
        """The command request it stands for (streamed, stdin open)."""
        return CommandRequest.model_validate({
            "cmd": self.cmd if self.cmd is not None else list(TERMINAL_SHELL),
            "env": dict(self.env), "cwd": self.cwd, "user": self.user,
            "timeout": self.timeout, "pty": self.pty, "stream": True, "stdin_open": True})


class TerminalResize(_Request):
    """A text message on a terminal WebSocket: its new size."""

    type: Literal["resize"]
    cols: Annotated[int, Field(ge=1, le=MAX_PTY_SIZE)]
    rows: Annotated[int, Field(ge=1, le=MAX_PTY_SIZE)]


class TerminalSignal(_Request):
    """A text message on a terminal WebSocket: a signal for its command's process group."""

    type: Literal["signal"]
    signal: Annotated[int, Field(ge=1, le=MAX_SIGNAL)]


TerminalControl = Annotated[TerminalResize | TerminalSignal, Field(discriminator="type")]


class ProcessInfo(_Response):
    id: int
    pid: int
    argv: list[str]
    started_at: float
    #: Whether it runs on a pseudo-terminal (started with ``pty``).
    pty: bool = False


class ProcessList(_Response):
    processes: list[ProcessInfo]


class CommandRecord(_Response):
    """A command run through the API, as its sandbox's history keeps it: the first
    :data:`~corral.api.limits.HISTORY_OUTPUT` bytes of each stream (and of its command
    line); ``truncated`` when anything was cut. ``ended_at`` is None while it runs."""

    id: int
    cmd: str | list[str]
    started_at: datetime
    ended_at: datetime | None
    exit_code: int | None
    signal: int | None
    reason: str | None
    stdout: str
    stderr: str
    truncated: bool


class CommandHistory(_Response):
    """A sandbox's last commands run through the API, newest first."""

    commands: list[CommandRecord]


# -- metrics -------------------------------------------------------------------------------

class MetricSample(_Response):
    """One look at a sandbox. ``cpu_percent``: the share of its cores busy since the look
    before (100: all of them); sizes in bytes; ``pids``: its pids cgroup's tasks;
    ``net_*_bytes``: through its interface so far, None without a network; ``gpu_percent``
    and ``gpu_memory_used``: its GPUs' mean utilisation and memory in use (bytes), None
    without a GPU (or where the node cannot read them: no NVML)."""

    time: datetime
    cpu_percent: float
    memory_used: int
    memory_limit: int
    disk_used: int
    disk_limit: int
    pids: int
    net_rx_bytes: int | None
    net_tx_bytes: int | None
    gpu_percent: float | None = None
    gpu_memory_used: int | None = None


class SandboxMetrics(_Response):
    """A sandbox's samples, oldest first; ``interval``: seconds between two looks."""

    interval: float
    samples: list[MetricSample]


class SandboxesMetrics(_Response):
    """The newest samples of several sandboxes, oldest first, by id."""

    interval: float
    sandboxes: dict[str, list[MetricSample]]


# -- files -------------------------------------------------------------------------------

class EntryInfo(_Response):
    """One file, directory or link inside a sandbox (links are not followed)."""

    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int
    target: str | None = None


class EntryList(_Response):
    entries: list[EntryInfo]


class WriteResult(_Response):
    path: str
    size: int


class WatchEvent(_Response):
    """One change under a watched directory (``files.watch``).

    ``name`` is relative to the watched directory (``sub/a.txt`` under a recursive
    watch). ``rename`` is reported under the old name and ``create`` under the new one;
    ``overflow`` (``name`` empty) marks where events were lost (the client fell behind
    by more than the sandbox holds, or a bound was reached).
    """

    type: Literal["create", "write", "remove", "rename", "chmod", "overflow"]
    name: str
    is_dir: bool = False


#: The lines of a watch's NDJSON stream: events, or an error that ended it.
WatchStreamEvent = Annotated[WatchEvent | ErrorEvent, Field(discriminator="type")]


class Exists(_Response):
    exists: bool


class MakeDir(_Request):
    path: Path
    parents: bool = True
    user: FileUser | None = Field(default=None, description=(
        "the user (name or uid) who owns the directories created; default: the agent's "
        "(root). Sandboxes only: volumes refuse it"))


class Created(_Response):
    created: bool


class Rename(_Request):
    src: Path
    dst: Path
    overwrite: bool = False


# -- errors ------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    message: str


class ErrorBody(BaseModel):
    """The one shape of every error response: ``{"error": {"code", "message"}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: ErrorDetail


ErrorEvent.model_rebuild()


# -- code interpreter --------------------------------------------------------------------

#: ``ExecutionError.name`` of a cell stopped at its timeout (the context keeps its state).
TIMEOUT_ERROR = "TimeoutError"
#: ``ExecutionError.name`` when the context's kernel died (restart the context).
KERNEL_DIED = "KernelDied"
#: ``ExecutionError.name`` of a Bash cell whose last command exited non-zero; the value is
#: the exit status (``"1"``). An interrupted Bash cell is ``KeyboardInterrupt`` (``"130"``).
EXIT_STATUS = "ExitStatus"
#: The languages a code context runs: ``python`` (ipykernel) and ``bash`` in every image
#: with Python's Jupyter; ``r``, ``javascript``, ``typescript`` and ``java`` where the
#: image has their Jupyter kernels (the ``code-interpreter`` image).
CODE_LANGUAGES = ("python", "bash", "r", "javascript", "typescript", "java")
_LANGUAGE_DOC = ("the context's language: " + ", ".join(CODE_LANGUAGES)
                 + " (the last four in images with their kernels, as code-interpreter)")
ContextId = Annotated[str, Field(min_length=1, max_length=64)]


class ContextCreate(_Request):
    """``POST /v1/sandboxes/{id}/code/contexts``: a kernel of its own, with its own state."""

    language: Annotated[str, Field(min_length=1, max_length=32, description=_LANGUAGE_DOC,
                                   examples=list(CODE_LANGUAGES))] = "python"
    cwd: Path | None = None
    env: Mapping = Field(default_factory=dict)


class CodeContext(_Response):
    """A stateful code context: one kernel. ``default`` is the one used when none is named."""

    id: str
    language: str = Field(description=_LANGUAGE_DOC, examples=list(CODE_LANGUAGES))
    cwd: str


class ContextList(_Response):
    contexts: list[CodeContext]


class RunCodeRequest(_Request):
    """``POST /v1/sandboxes/{id}/code``: run a cell in a context (default: ``default``,
    created on first use in ``language``). With ``stream`` the answer is NDJSON
    :class:`CodeEvent` lines as output arrives; without, one :class:`Execution`."""

    code: Annotated[str, Field(max_length=MAX_CODE)]
    language: Annotated[str, Field(min_length=1, max_length=32)] | None = Field(
        default=None, description=_LANGUAGE_DOC + "; null: the named context's, or python "
        "for the default one", examples=list(CODE_LANGUAGES))
    context: ContextId | None = None
    timeout: float | None = Field(default=None, description=f"seconds; default "
                                  f"{DEFAULT_CODE_TIMEOUT:g}. At the timeout the cell is "
                                  "interrupted; the context lives on")
    env: Mapping = Field(default_factory=dict, description="environment variables for this "
                         "cell alone; afterwards each is back to what it was before the cell "
                         "(Bash: to the context's own value)")
    stream: bool = False

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        return None if value is None else float(_checked(check_timeout, value,
                                                         "code timeout"))


class Result(_Response):
    """One rich output of a cell, a MIME bundle: each format it came in is set.

    ``is_main_result`` marks the cell's value (``Out[n]``); the others are displays
    (``display()``, matplotlib figures). ``png``/``jpeg``/``pdf`` are base64; ``json`` is
    the decoded value; ``extra`` holds other MIME types, by type.
    """

    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json_data: Any = Field(default=None, alias="json")
    javascript: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    is_main_result: bool = False

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True,
                              serialize_by_alias=True)

    @property
    def json(self) -> Any:
        """The ``application/json`` value, if the result had one."""
        return self.json_data

    def formats(self) -> list[str]:
        """The formats this result has (``"text"``, ``"png"``, ...)."""
        names = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex",
                 "json_data", "javascript")
        found = [n.removesuffix("_data") for n in names if getattr(self, n) is not None]
        return found + list(self.extra)


class Logs(_Response):
    """What a cell printed, chunk by chunk, as it arrived."""

    stdout: list[str] = Field(default_factory=list)
    stderr: list[str] = Field(default_factory=list)


class ExecutionError(_Response):
    """A cell's exception: ``name`` (``ZeroDivisionError``), ``value`` and ``traceback``.

    Names of Corral's own: ``TimeoutError`` (the cell ran past its timeout and was
    interrupted; the context keeps its state), ``KernelDied`` (restart the context) and,
    for Bash, ``ExitStatus`` (the cell's last command failed; ``value`` is its status).
    """

    name: str
    value: str
    traceback: str = ""


class Execution(_Response):
    """The outcome of one cell: rich ``results``, ``logs``, and ``error`` if it raised.

    ``truncated`` says output past the per-execution limit was dropped.
    """

    results: list[Result] = Field(default_factory=list)
    logs: Logs = Field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    context: str = "default"
    truncated: bool = False
    duration: float = 0.0

    @property
    def text(self) -> str | None:
        """The text of the cell's value (its main result), if it had one."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None


class CodeOutputEvent(_Response):
    type: Literal["stdout", "stderr"]
    text: str


class CodeResultEvent(_Response):
    type: Literal["result"] = "result"
    result: Result


class CodeErrorEvent(_Response):
    """The cell raised (or timed out, or its kernel died: see :class:`ExecutionError`)."""

    type: Literal["execution_error"] = "execution_error"
    error: ExecutionError


class CodeEndEvent(_Response):
    type: Literal["end"] = "end"
    context: str
    execution_count: int | None = None
    truncated: bool = False
    duration: float = 0.0


CodeEvent = Annotated[CodeOutputEvent | CodeResultEvent | CodeErrorEvent | CodeEndEvent
                      | ErrorEvent, Field(discriminator="type")]


# -- images ----------------------------------------------------------------------------------

#: An image name as tenants give it: ``name`` or ``name:tag`` (``latest`` when left out).
IMAGE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}(:[a-z0-9][a-z0-9._-]{0,63})?$"


class ImageBuildRequest(_Request):
    """``POST /v1/images``: build ``spec`` and name the result ``name`` (or leave it
    unnamed: it is then reachable by its id alone, by its owner)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[str, Field(pattern=IMAGE_NAME_PATTERN)] | None = None
    spec: ImageSpec
    context: Annotated[str, Field(pattern=r"^ctx-[0-9a-f]{32}$")] | None = Field(
        default=None, description="a build context uploaded to `/v1/images/contexts`")
    runtime: Annotated[str, Field(max_length=32)] | None = None


class FilesystemSnapshot(_Request):
    """``POST /v1/sandboxes/{id}/snapshot-filesystem``: keep its files as an image, named
    ``name`` (or unnamed: reachable by its id)."""

    name: Annotated[str, Field(pattern=IMAGE_NAME_PATTERN)] | None = None


class ImageContextInfo(_Response):
    """An uploaded build context: pass ``id`` as a build's ``context``."""

    id: str
    size_bytes: int
    files: int
    expires_at: datetime


class ImageInfo(_Response):
    """An image a tenant can start sandboxes from: one of its own (``public`` false) or
    one the operator provides."""

    name: str | None
    id: str
    public: bool = False
    base: str | None = None
    size_bytes: int = 0
    layers: int = 0
    created_at: datetime | None = None
    env: dict[str, str] = {}
    workdir: str | None = None
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    labels: dict[str, str] = {}
    steps: list[str] = []
    build: str | None = Field(default=None, description="the build that made it "
                              "(`GET /v1/images/builds/{id}`)")


class ImageList(_Response):
    images: list[ImageInfo]
    used_bytes: int = Field(description="disk this tenant's images take (a layer shared by "
                            "two of them counts once)")
    quota_bytes: int


class BuildInfo(_Response):
    """One build: how it went, and its log (the last lines, bounded)."""

    id: str
    name: str | None
    state: Literal["running", "succeeded", "failed"]
    started_at: datetime
    finished_at: datetime | None = None
    image: str | None = None
    error: str | None = None
    log: str = ""


class BuildStepEvent(_Response):
    """A step begins (``cached``: its layer was there, it does not run)."""

    type: Literal["step"] = "step"
    step: int
    total: int
    text: str
    cached: bool = False


class BuildLogEvent(_Response):
    """A line a step printed."""

    type: Literal["log"] = "log"
    step: int
    text: str


class BuildDoneEvent(_Response):
    type: Literal["done"] = "done"
    image: ImageInfo
    seconds: float


class BuildStartedEvent(_Response):
    """The first event of a build's stream: where its log stays afterwards."""

    type: Literal["build"] = "build"
    build: str


BuildEvent = Annotated[BuildStartedEvent | BuildStepEvent | BuildLogEvent | BuildDoneEvent
                       | ErrorEvent, Field(discriminator="type")]


class PruneInfo(_Response):
    images: int
    layers: int
    bytes_freed: int


# -- volumes ---------------------------------------------------------------------------------

class VolumeCreate(_Request):
    """``POST /v1/volumes``: a new volume of ``size`` (MiB, or ``"10G"``)."""

    name: VolumeName
    size: int | Annotated[str, Field(max_length=32)] = Field(
        default="1G", description="its quota: MiB as a number, or a string such as 10G")


class VolumeInfo(_Response):
    name: str
    id: str
    size_mib: int
    used_bytes: int
    created_at: datetime
    in_use_by: list[str] = Field(default_factory=list,
                                 description="your running sandboxes that mount it")


class VolumeList(_Response):
    volumes: list[VolumeInfo]



# -- snapshots and forks -------------------------------------------------------------------

#: A snapshot's optional label (not unique): letters, digits and ``._-``, up to 64.
SNAPSHOT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class SnapshotCreate(_Request):
    """``POST /v1/sandboxes/{id}/snapshots``: keep the sandbox as it is now, and let it run
    on. ``memory`` (the default): its memory, processes (a code context's kernel and its
    variables too) and files, gVisor only; ``memory: false``: its files alone, any runtime."""

    name: Annotated[str, Field(pattern=SNAPSHOT_NAME_PATTERN)] | None = Field(
        default=None, description="a label of yours (not unique)")
    memory: bool = True
    ttl: float | None = Field(
        default=None, description="seconds it is kept (60 to 7776000); default: the "
        "server's (CORRAL_SNAPSHOT_TTL, 7 days)")

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: float | None) -> float | None:
        low, high = SNAPSHOT_TTL_RANGE
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"ttl must be {low:.0f} to {high:.0f} seconds (90 days)")
        return value


class SnapshotInfo(_Response):
    """A snapshot: start sandboxes from it with ``POST /v1/sandboxes {"snapshot": id}``."""

    id: str
    name: str | None = None
    sandbox_id: str = Field(description="the sandbox it was taken of")
    memory: bool = Field(description="whether it holds memory and processes (else files "
                         "alone)")
    image: str = Field(description="the image its sandboxes run (for a files-only snapshot, "
                       "an image of yours that holds them)")
    runtime: str
    size_bytes: int
    created_at: datetime
    expires_at: datetime


class SnapshotList(_Response):
    snapshots: list[SnapshotInfo]


class ForkRequest(_Request):
    """``POST /v1/sandboxes/{id}/fork``: ``count`` new sandboxes, each a copy of this one as
    it is now (memory, processes, files), each with its own id, token and files."""

    count: int = Field(default=1, ge=1, le=MAX_FORK)
    timeout: float | None = Field(default=None, description="each copy's lifetime, seconds; "
                                  "default: what the sandbox has left")
    metadata: Mapping | None = Field(default=None, description="the copies' labels; "
                                     "default: the sandbox's")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        return None if value is None else float(_checked(check_timeout, value))
