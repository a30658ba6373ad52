"""The runtime interface: how a sandbox is isolated, started and torn down on one host.

Shaped like jupyter_client's kernel provisioners: an abstract class of async methods, each
documented with who calls it, in which state, and whether it may be repeated. The node is
the only caller. Commands and files do not go through the runtime: the runtime starts the
in-sandbox agent with its stdin/stdout as the channel, and the node talks to the agent
(``runsc exec`` costs 26-51 ms a call; a request over the channel costs well under one).

States a runtime sandbox moves through (the node persists each transition)::

    CREATED --start--> RUNNING --destroy--> DESTROYED
                 pause |  ^ resume          ^
                       v  |                 |
                      PAUSED ---destroy-----+

(``destroy`` is callable in any state.)

A RUNNING or PAUSED sandbox outlives the node that started it: :meth:`Runtime.release`
lets go of it without stopping it (a server restart), and the next node takes it back with
:meth:`Runtime.adopt` (running) or :meth:`Runtime.adopt_paused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from corral.api.errors import RuntimeUnavailableError
from corral.api.resources import Resources

from .gpu import DriverFiles


class RuntimeState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class Availability:
    """Whether a runtime works on this host; if not, why and how to fix it."""

    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class VolumeBind:
    """A volume's tree, mounted on the host, bound into a sandbox."""

    #: The host folder the volume's filesystem is mounted at (the node's, see
    #: :mod:`corral.node.volumes`).
    source: Path
    #: Where the sandbox sees it: absolute, normal, checked by the node.
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Usage:
    """What a sandbox uses now: CPU time so far, memory and its writable layer, in bytes,
    and its tasks (the pids cgroup's ``pids.current``: under gVisor the Sentry's and gofer's
    host threads, which is what its pids limit counts, not the processes it runs inside)."""

    cpu_seconds: float
    memory_bytes: int
    memory_cache_bytes: int
    memory_limit_bytes: int
    disk_used_bytes: int
    disk_total_bytes: int
    pids: int = 0


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a runtime needs to build one sandbox."""

    sandbox_id: str
    #: The sandbox's cgroup name, ``<node key>/<sandbox id>``, under ``corral/``.
    cgroup: str
    #: The image's root filesystem: the bottom read-only layer.
    rootfs: Path
    resources: Resources
    agent_bundle: Path
    directory: Path
    #: Seconds the agent waits for a restarted node once its node is gone; 0: none.
    orphan_grace: float = 600.0
    #: The network namespace to start the sandbox in (its policy's, made by the node), or
    #: None: loopback only.
    netns: Path | None = None
    #: Read-only layers stacked above ``rootfs``, top first (a built image's steps, each an
    #: overlay upper directory: whiteouts and opaque directories as overlayfs writes them).
    layers: tuple[Path, ...] = ()
    #: Volumes bound into the sandbox (rw or ro, always nosuid and nodev), shared with
    #: whichever other sandboxes mount them.
    volumes: tuple[VolumeBind, ...] = ()
    #: The GPUs' device nodes and the driver's files the sandbox is given (the node's
    #: assignment, :mod:`corral.node.gpus`); None: no GPU.
    gpu: DriverFiles | None = None


@dataclass(frozen=True)
class Weakening:
    """Walls a runtime leaves out: only for the security suite's proof that its checks fail.

    The hostile-program tests must be able to fail; ``tests/security/test_weakened.py``
    starts runtimes built with one of these and asserts that the attacks then succeed.
    Only a runtime's constructor takes it: no setting, environment variable, flag or API
    field reaches it, and :func:`corral.runtime.get_runtime` always builds full-strength
    runtimes. Every field defaults to the safe value.
    """

    #: namespaces: start without the seccomp filter.
    no_seccomp: bool = False
    #: Keep every capability (namespaces: in the sandbox's user namespace; gvisor: in the
    #: Sentry) instead of Docker's default set.
    all_capabilities: bool = False
    #: namespaces: leave /proc's host-describing files unmasked.
    unmasked_proc: bool = False
    #: gvisor: let the Sentry open host files itself (``runsc --directfs=true``, the
    #: 20240729 build's default): read-only bind mounts then stop being read-only.
    gvisor_directfs: bool = False
    #: gvisor: raw sockets in the Sentry (``--net-raw``; with every capability, a sandbox
    #: can then build packets with any source address, which the host must still drop).
    gvisor_net_raw: bool = False


@dataclass
class RuntimeSandbox:
    """A runtime's handle on one sandbox. Owned by the node; mutated only by the runtime."""

    spec: SandboxSpec
    state: RuntimeState = RuntimeState.CREATED
    process: asyncio.subprocess.Process | None = None
    extra: dict[str, object] = field(default_factory=dict)


#: The agent channel's pipes hold this much: a few frames (the kernel's default, 64 KiB,
#: is less than one data frame and its header, so the agent would wait on the node once a
#: frame). Bounded: a full pipe pins its pages, twice per sandbox.
CHANNEL_PIPE_BYTES = 256 * 1024
_F_SETPIPE_SZ = 1031


def widen_pipes(process: asyncio.subprocess.Process) -> None:
    """Give the agent channel's pipes (the process's stdin and stdout) room for several
    frames; where the kernel refuses (``pipe-max-size``), they keep their size."""
    transport = getattr(process, "_transport", None)
    if transport is None:
        return
    for fd in (0, 1):
        pipe = transport.get_pipe_transport(fd)
        info = pipe.get_extra_info("pipe") if pipe is not None else None
        if info is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(info.fileno(), _F_SETPIPE_SZ, CHANNEL_PIPE_BYTES)


def drop_pipes(sandbox: RuntimeSandbox) -> None:
    """Close the node's pipes to a sandbox's runtime process, leaving the process running.

    What :meth:`Runtime.release` does for a runtime whose process lives in its own session
    (closing the transport instead would kill it).
    """
    transport = getattr(sandbox.process, "_transport", None)
    if transport is not None:
        for fd in (0, 1, 2):
            pipe = transport.get_pipe_transport(fd)
            if pipe is not None:
                pipe.close()
    sandbox.process = None


class Runtime(ABC):
    """One isolation backend. Subclasses are stateless apart from host-wide caches."""

    name: str
    #: Higher is stronger isolation; the default runtime is the strongest that works.
    strength: int

    @abstractmethod
    def check(self) -> Availability:
        """Probe the host. Called by ``corral doctor`` and when a node starts; cheap, repeatable."""

    def gpu_problem(self, driver: str) -> str | None:
        """Why this runtime cannot give a sandbox the host's GPUs with NVIDIA driver
        ``driver`` (``580.159.04``), or None if it can. Called by the node before it
        assigns a GPU, and by ``corral doctor``; cheap after its first call."""
        return f"the {self.name} runtime cannot pass GPUs into sandboxes"

    @abstractmethod
    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        """Prepare the host side: copy-on-write root, cgroups and limits, namespaces.

        Called once per sandbox, before :meth:`start`. On failure it undoes what it did and
        raises; nothing is left behind.
        """

    @abstractmethod
    async def start(self, sandbox: RuntimeSandbox) -> asyncio.subprocess.Process:
        """Start the sandbox with the agent as its first process; CREATED -> RUNNING.

        The returned process's stdin/stdout are the agent channel. Called once.
        """

    @abstractmethod
    async def destroy(self, sandbox: RuntimeSandbox) -> None:
        """Kill every process and remove every mount, cgroup and directory of the sandbox.

        Callable in any state, any number of times (idempotent); fast, never waits on a
        slow runtime tool.
        """

    async def adopt(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        """Take back a RUNNING sandbox that a previous node started and released.

        Called by a starting node, once per sandbox it finds, with the ``extra`` that
        :meth:`create` recorded. Raises if the sandbox is gone or cannot be taken back;
        the node then destroys what is left of it.
        """
        raise RuntimeUnavailableError(f"the {self.name} runtime cannot re-attach sandboxes")

    async def release(self, sandbox: RuntimeSandbox) -> None:
        """Let go of a RUNNING sandbox without stopping it (the node is shutting down).

        Called once per sandbox, by a node that keeps its sandboxes across a restart.
        """
        raise RuntimeUnavailableError(f"the {self.name} runtime cannot release sandboxes")

    @abstractmethod
    def limit_hit(self, sandbox: RuntimeSandbox, since: tuple[int, int]) -> str | None:
        """If a limit killed something since ``since`` (a :meth:`counters` reading), say which.

        Returns e.g. ``"killed: memory limit 512 MiB"``; None when no limit was hit.
        """

    @abstractmethod
    def counters(self, sandbox: RuntimeSandbox) -> tuple[int, int]:
        """A cheap reading of the limit counters (OOM kills, refused forks)."""

    def usage(self, sandbox: RuntimeSandbox) -> Usage:
        """What ``sandbox`` uses now (cheap: a few small reads)."""
        raise RuntimeUnavailableError(f"the {self.name} runtime does not report usage")

    # -- pausing ------------------------------------------------------------------------
    #: Whether a PAUSED sandbox survives a reboot of the host (its state is on disk).
    durable_pause: bool = False

    def check_pause(self, sandbox: RuntimeSandbox) -> None:
        """Raise RuntimeUnavailableError, saying why, if ``sandbox`` cannot be paused.

        Called by the node before a pause touches anything (the agent is asked to quiesce
        only after it); cheap, no I/O that can block.
        """
        raise RuntimeUnavailableError(f"the {self.name} runtime cannot pause sandboxes")

    async def pause(self, sandbox: RuntimeSandbox) -> None:
        """Stop a RUNNING sandbox where it is; RUNNING -> PAUSED.

        Called by the node once per pause, after :meth:`check_pause`, once the agent has
        quiesced (it answered ``pause``; nothing more is written to its channel). Returns
        once the sandbox uses no CPU. On failure it raises, with the handle's state saying
        what is left: RUNNING (nothing was stopped: the node starts a new session with the
        agent on the same channel and the sandbox runs on), anything else (the node
        destroys it).
        """
        raise RuntimeUnavailableError(f"the {self.name} runtime cannot pause sandboxes")

    async def resume(self, sandbox: RuntimeSandbox) -> asyncio.subprocess.Process | None:
        """Let a PAUSED sandbox run on; PAUSED -> RUNNING.

        Returns the new process whose stdin/stdout are the agent's channel (the node starts
        a session on it with a ``hello``), or None when the sandbox's processes were kept
        and so is its channel: the node's pipes to :attr:`RuntimeSandbox.process`, or, with
        none (a sandbox adopted from an earlier node), the socket the agent reconnects to.
        Called by the node once per resume. On failure it raises and leaves the sandbox
        PAUSED, as it was (a resume may be tried again), or DESTROYED.
        """
        raise RuntimeUnavailableError(f"the {self.name} runtime cannot resume sandboxes")

    async def finish_pause(self, spec: SandboxSpec, extra: dict[str, object]
                           ) -> RuntimeSandbox | None:
        """Take back a sandbox whose pause its node did not see to the end (it died during
        :meth:`pause`; the sandbox's record still says running). Returns the PAUSED handle
        if the runtime's part got done (finishing what is left of it), None if the sandbox
        runs as it did (its pause never got under way: adopt it running). Raises if it is
        neither (the node then destroys what is left)."""
        return None

    # -- memory snapshots ---------------------------------------------------------------

    def check_snapshot(self, sandbox: RuntimeSandbox) -> None:
        """Raise RuntimeUnavailableError, saying why, if ``sandbox``'s memory cannot be
        kept (:meth:`snapshot`). Cheap, no I/O that can block."""
        raise RuntimeUnavailableError(
            f"the {self.name} runtime cannot keep a running sandbox's memory (that needs "
            "gVisor's checkpoint); keep its files instead (a filesystem snapshot), or use "
            "the gvisor runtime")

    async def snapshot(self, sandbox: RuntimeSandbox, destination: Path) -> None:
        """Keep a RUNNING sandbox's memory, processes and files in the new folder
        ``destination``, and let it run on.

        Called by the node after :meth:`check_snapshot`, once the agent has quiesced (as
        for :meth:`pause`). On failure it raises, with the handle's state saying what is
        left, as :meth:`pause` does; ``destination`` is then the caller's to remove.
        """
        raise RuntimeUnavailableError(f"the {self.name} runtime cannot keep a running "
                                      "sandbox's memory")

    async def restore(self, spec: SandboxSpec, source: Path) -> RuntimeSandbox:
        """Build a new sandbox ``spec`` from a :meth:`snapshot` in ``source`` (the same
        image, resources and volumes; its own id, directory and cgroup) and start it where
        the snapshot was taken. The handle's process's stdin/stdout are the agent's channel:
        the node starts a session on it with a ``hello``. On failure nothing is left."""
        raise RuntimeUnavailableError(f"the {self.name} runtime cannot restore snapshots")

    async def adopt_paused(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        """Take back a PAUSED sandbox that a previous node left (see :meth:`adopt`).

        Raises if what it needs to resume is gone (a reboot, for a runtime whose pause is
        not :attr:`durable_pause`); the node then destroys what is left of it.
        """
        raise RuntimeUnavailableError(f"the {self.name} runtime cannot re-attach paused "
                                      "sandboxes")
