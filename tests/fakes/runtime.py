"""``FakeRuntime``: the real agent as a plain subprocess of the tests' Python, no isolation.

It lives under ``tests/`` on purpose: no setting, flag or API field can select it. A node
uses it only when built with it, ``Node(settings, runtimes={"fake": FakeRuntime()})``.

What it keeps of a real runtime: the agent (its binary, ``agent/``) with its stdin and
stdout as the channel, the same environment variables, the run folder whose socket a
restarted node binds for the agent to reconnect to (release and adoption work), and a
copy of the image's root per sandbox. What it leaves out: every wall. The agent runs as
the tests' user, on the host, with the sandbox's root at ``<sandbox dir>/rootfs`` given on
its command line (``--root``, see ``agent/src/paths.rs``): file API paths, a command's
working directory and the image's ``/etc/passwd`` resolve there, but commands run host
programs and their own absolute paths are host paths. No limits: counters stay at zero.
Pausing stops the agent and its descendants with SIGSTOP (a freezer without cgroups), and
resuming continues them: the node's side of a pause runs as it does on a real runtime.

The agent is made a child subreaper, as PID 1 would be, so that every process a command
leaves behind stays its descendant: :meth:`FakeRuntime.destroy` kills them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
from pathlib import Path

from corral.api.errors import InternalError
from corral.runtime import Availability, Runtime, RuntimeSandbox, RuntimeState, SandboxSpec
from corral.runtime.base import drop_pipes
from corral.runtime._host import channel_dir, channel_socket
from corral.runtime.agent_bundle import AGENT_NAME, agent_binary, agent_env

PR_SET_CHILD_SUBREAPER = 36
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _become_subreaper() -> None:
    """In the agent's process, before exec: adopt its descendants' orphans, like PID 1."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc, parent links)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{name}/stat").read_bytes()
                parents[int(name)] = int(raw[raw.rfind(b")") + 2:].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants, each stopped first so that none forks away."""
    doomed = {pid}
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    while new := descendants(pid) - doomed:
        for child in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
        doomed |= new
    for victim in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def _is_agent(pid: int, root: Path) -> bool:
    """Whether ``pid`` is the agent serving ``root`` (not a recycled pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[0].endswith(b"/" + AGENT_NAME.encode()) and os.fsencode(root) in argv


class FakeRuntime(Runtime):
    """The agent as a host subprocess over a copied root; see the module docstring."""

    name = "fake"
    strength = 0

    def __init__(self) -> None:
        #: Specs of every sandbox :meth:`create` made, in order (tests look at their dirs).
        self.created: list[SandboxSpec] = []
        self.agent = agent_binary()

    def check(self) -> Availability:
        return Availability(True, "the agent as a plain subprocess, no isolation (tests only)")

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        await asyncio.to_thread(self._prepare, spec)
        self.created.append(spec)
        return RuntimeSandbox(spec=spec)

    def _prepare(self, spec: SandboxSpec) -> None:
        spec.directory.mkdir(mode=0o700)
        try:
            shutil.copytree(spec.rootfs, spec.directory / "rootfs", symlinks=True)
            channel_dir(spec).mkdir(mode=0o700)
        except BaseException:
            shutil.rmtree(spec.directory, ignore_errors=True)
            raise

    async def start(self, sandbox: RuntimeSandbox) -> asyncio.subprocess.Process:
        spec = sandbox.spec
        root = spec.directory / "rootfs"
        env = agent_env(spec.orphan_grace)
        if "CORRAL_AGENT_SOCKET" in env:  # the agent sees the host's paths
            env["CORRAL_AGENT_SOCKET"] = str(channel_socket(spec))
        argv = [str(self.agent), "--root", str(root)]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=root, env=env, start_new_session=True,
                preexec_fn=_become_subreaper, limit=1024 * 1024)
        except OSError as exc:
            raise InternalError(f"starting the fake agent for {spec.sandbox_id}: {exc}") from exc
        sandbox.process = process
        sandbox.extra["pid"] = process.pid
        sandbox.state = RuntimeState.RUNNING
        return process

    async def destroy(self, sandbox: RuntimeSandbox) -> None:
        if sandbox.state is RuntimeState.DESTROYED:
            return
        pid = sandbox.extra.get("pid")
        root = sandbox.spec.directory / "rootfs"
        if isinstance(pid, int) and _is_agent(pid, root):
            _kill_tree(pid)
        if sandbox.process is not None:
            transport = getattr(sandbox.process, "_transport", None)
            if transport is not None:
                transport.close()
            await sandbox.process.wait()
        await asyncio.to_thread(shutil.rmtree, sandbox.spec.directory, True)
        sandbox.state = RuntimeState.DESTROYED

    async def release(self, sandbox: RuntimeSandbox) -> None:
        drop_pipes(sandbox)

    async def adopt(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        pid = extra.get("pid")
        if not isinstance(pid, int) or not _is_agent(pid, spec.directory / "rootfs"):
            raise InternalError(f"sandbox {spec.sandbox_id}: its agent is gone")
        return RuntimeSandbox(spec=spec, state=RuntimeState.RUNNING, extra=dict(extra))

    def check_pause(self, sandbox: RuntimeSandbox) -> None:
        return None

    async def pause(self, sandbox: RuntimeSandbox) -> None:
        self._signal_tree(sandbox, signal.SIGSTOP)
        sandbox.state = RuntimeState.PAUSED

    async def resume(self, sandbox: RuntimeSandbox) -> None:
        self._signal_tree(sandbox, signal.SIGCONT)
        sandbox.state = RuntimeState.RUNNING

    async def adopt_paused(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        sandbox = await self.adopt(spec, extra)
        sandbox.state = RuntimeState.PAUSED
        return sandbox

    def _signal_tree(self, sandbox: RuntimeSandbox, signum: int) -> None:
        pid = sandbox.extra.get("pid")
        if not isinstance(pid, int) or not _is_agent(pid, sandbox.spec.directory / "rootfs"):
            raise InternalError(f"sandbox {sandbox.spec.sandbox_id}: its agent is gone")
        for victim in {pid} | descendants(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signum)

    def counters(self, sandbox: RuntimeSandbox) -> tuple[int, int]:
        return 0, 0

    def limit_hit(self, sandbox: RuntimeSandbox, since: tuple[int, int]) -> str | None:
        return None
