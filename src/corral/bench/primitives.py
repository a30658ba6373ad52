"""The bare primitives Corral is compared with, each timed the same way Corral is.

* ``runsc run`` of a minimal OCI bundle whose root is the image's rootfs (read-only):
  what one gVisor container costs without Corral's cgroups, overlay and agent.
* ``bwrap --unshare-all`` over the same rootfs: one namespaced process.
* either of them running the agent from the agent bundle (mounted at ``/.corral`` as
  Corral mounts it) with no node on its channel, so it exits once up: what starting the
  agent costs.
* a host ``fork+exec`` of ``/bin/true``: the floor for any exec round trip.
* spawns of ``/bin/true`` by a python inside a bare sandbox (:data:`SPAWN_PROBE`), timed
  there: what starting a process costs in that sandbox kind, whoever asks for it. Under
  gVisor it is most of a warm exec round trip.
* a host write-then-read of a file on tmpfs: the floor for a file round trip.
* idle bare sandboxes (``runsc run --detach`` / ``bwrap`` of ``sleep``) in cgroups of
  their own, and the PSS of a cgroup's processes: the floor for memory per sandbox.

Every bare runsc run gets a fresh state directory that is deleted afterwards, runs under a
timeout, and has any process still naming that directory killed, so none outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.api.errors import InternalError, RuntimeUnavailableError
from corral.runtime.agent_bundle import MOUNT_POINT, agent_command, agent_env
from corral.runtime.gvisor.runsc import GvisorOptions, RunscError
from corral.runtime.gvisor.runsc import resolve as resolve_runsc
from corral.runtime.host import SandboxCgroups

RUN_TIMEOUT = 60.0


def agent_start_argv() -> list[str]:
    """The agent's start command. With its stdin at ``/dev/null`` (as bare runs have it)
    the agent starts, says hello, finds its channel closed and exits: its start alone."""
    return agent_command()


#: Python for inside a bare sandbox: ``posix_spawn`` of ``/bin/true`` and its wait, ``argv[1]``
#: times, each timed there; prints the seconds as a JSON list.
SPAWN_PROBE = (
    "import json, os, sys, time\n"
    "times = []\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    started = time.perf_counter()\n"
    "    pid = os.posix_spawn('/bin/true', ['true'], {})\n"
    "    if os.waitpid(pid, 0)[1] != 0:\n"
    "        sys.exit('/bin/true failed')\n"
    "    times.append(time.perf_counter() - started)\n"
    "print(json.dumps(times))\n")


def spawn_probe_argv(count: int) -> list[str]:
    """The bare sandbox's command that runs :data:`SPAWN_PROBE` ``count`` times."""
    return ["/usr/bin/python3", "-S", "-c", SPAWN_PROBE, str(count)]


def spawn_times(output: str) -> list[float]:
    """The seconds :data:`SPAWN_PROBE` printed (InternalError if it printed anything else)."""
    try:
        times = json.loads(output)
    except ValueError:
        times = None
    if not isinstance(times, list) or not all(isinstance(t, float) for t in times):
        raise InternalError(f"the spawn probe printed {output[:200]!r}, not a list of times")
    return times


def _timed(argv: list[str], what: str, timeout: float = RUN_TIMEOUT) -> float:
    """Run ``argv`` to completion and return its wall time; InternalError if it fails."""
    return _run(argv, what, timeout)[0]


def _run(argv: list[str], what: str, timeout: float = RUN_TIMEOUT) -> tuple[float, str]:
    """Run ``argv`` to completion: its wall time and stdout; InternalError if it fails."""
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InternalError(f"{what} did not finish within {timeout:g} s") from exc
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-1000:]
        raise InternalError(f"{what} failed (exit status {done.returncode}): {tail}")
    return elapsed, done.stdout.decode(errors="replace")


def host_exec() -> float:
    """One host ``fork+exec`` of ``/bin/true`` through :func:`subprocess.run`."""
    return _timed(["/bin/true"], "host /bin/true")


def host_file_round_trip(directory: Path, data: bytes) -> float:
    """Write ``data`` to a file in ``directory`` and read it back (bytes through the page cache)."""
    path = directory / f"bench-{secrets.token_hex(4)}"
    started = time.perf_counter()
    path.write_bytes(data)
    back = path.read_bytes()
    elapsed = time.perf_counter() - started
    path.unlink()
    if len(back) != len(data):
        raise InternalError(f"host file round trip returned {len(back)} of {len(data)} bytes")
    return elapsed


def bwrap_run(rootfs: Path, argv: list[str], agent_bundle: Path | None = None) -> float:
    """``bwrap --unshare-all`` of ``argv`` over ``rootfs`` mounted read-only.

    With ``agent_bundle``, the bundle is mounted read-only at ``/.corral`` and the agent's
    environment set, as the namespaces runtime does.
    """
    return _run(_bwrap_argv(rootfs, argv, agent_bundle), "bare bwrap")[0]


def bwrap_output(rootfs: Path, argv: list[str]) -> str:
    """What ``argv`` prints, run as :func:`bwrap_run` runs it."""
    return _run(_bwrap_argv(rootfs, argv, None), "bare bwrap")[1]


def _bwrap_argv(rootfs: Path, argv: list[str], agent_bundle: Path | None) -> list[str]:
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", str(rootfs), "/",
           "--proc", "/proc", "--dev", "/dev"]
    if agent_bundle is not None:
        cmd += ["--ro-bind", str(agent_bundle), MOUNT_POINT]
        for key, value in agent_env(orphan_grace=0).items():
            cmd += ["--setenv", key, value]
    return [*cmd, *argv]


class BareRunsc:
    """Bare ``runsc run`` of a minimal bundle over an image's rootfs.

    Use as a context manager: it holds a temporary directory with one bundle per command.
    """

    def __init__(self, rootfs: Path, agent_bundle: Path | None = None,
                 options: GvisorOptions | None = None) -> None:
        """``options``: the runsc and platform (default: the gvisor runtime's, from the
        environment), so that the bare rows run what the gvisor runtime runs."""
        self.rootfs = rootfs
        self.agent_bundle = agent_bundle
        try:
            runsc, platform = resolve_runsc(options or GvisorOptions.from_env())
        except RunscError as exc:
            raise RuntimeUnavailableError(f"{exc}; to fix: {exc.fix}") from None
        self.runsc = runsc.path
        self.platform = platform.name
        self._tmp: Path | None = None
        self._bundles: dict[tuple[str, ...], Path] = {}
        self._lock = threading.Lock()  # runs come from several threads at once

    def __enter__(self) -> BareRunsc:
        self._tmp = Path(tempfile.mkdtemp(prefix="corral-bench-runsc-"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _bundle(self, argv: list[str]) -> Path:
        """A bundle from ``runsc spec``, pointed at the image's rootfs, read-only.

        A command under ``/.corral`` also gets the agent bundle mounted there, read-only,
        with the agent's environment.
        """
        if self._tmp is None:
            raise InternalError("BareRunsc is used outside its `with` block")
        key = tuple(argv)
        with self._lock:
            return self._bundles.get(key) or self._new_bundle(key, argv, self._tmp)

    def _new_bundle(self, key: tuple[str, ...], argv: list[str], tmp: Path) -> Path:
        bundle = tmp / f"bundle-{len(self._bundles)}"
        bundle.mkdir()
        config = self.config(argv, bundle)
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        self._bundles[key] = bundle
        return bundle

    def config(self, argv: list[str], bundle: Path) -> dict[str, Any]:
        """The OCI config of a bare run of ``argv`` (``runsc spec``, written in ``bundle``)."""
        subprocess.run([self.runsc, "spec", "--bundle", str(bundle), "--", *argv],
                       check=True, capture_output=True, timeout=30)
        config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
        config["root"] = {"path": str(self.rootfs), "readonly": True}
        config["process"]["terminal"] = False
        if argv[0].startswith(MOUNT_POINT + "/") and self.agent_bundle is not None:
            config["mounts"].append({"destination": MOUNT_POINT, "type": "bind",
                                     "source": str(self.agent_bundle),
                                     "options": ["rbind", "ro"]})
            config["process"]["env"] += [
                f"{k}={v}" for k, v in agent_env(orphan_grace=0).items()]
        return config

    def argv(self, state: Path, *command: str) -> list[str]:
        """``runsc`` with this run's global flags and its own ``state`` directory."""
        return [self.runsc, "--root", str(state), "--network=none",
                f"--platform={self.platform}", *command]

    def start_idle(self, argv: list[str], directory: Path, cgroup: SandboxCgroups) -> None:
        """``runsc run --detach`` of ``argv`` in ``cgroup``; returns once it runs.

        Its bundle and state live in ``directory``; ``cgroup`` must exist (made by the
        caller, as Corral's runtime makes it), so its processes can be found and killed.
        """
        bundle = directory / "bundle"
        bundle.mkdir(parents=True)
        config = self.config(argv, bundle)
        config["linux"]["cgroupsPath"] = cgroup.relative_path
        (bundle / "config.json").write_text(json.dumps(config))
        (directory / "state").mkdir()
        cmd = self.argv(directory / "state", "run", "--detach", "--bundle", str(bundle),
                        directory.name)
        # stderr to a file: the detached sandbox keeps it open, a pipe would never end.
        with open(directory / "stderr", "wb") as log:
            started = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=log, timeout=RUN_TIMEOUT, check=False,
                                     preexec_fn=cgroup.joiner(v1=False),
                                     start_new_session=True)
        if started.returncode != 0:
            tail = (directory / "stderr").read_text(errors="replace").strip()[-1000:]
            raise InternalError(f"bare runsc run --detach failed: {tail}")

    def run(self, argv: list[str]) -> float:
        """Time one ``runsc run`` of ``argv`` (create, start, wait, destroy: all of it)."""
        return self._run(argv)[0]

    def output(self, argv: list[str]) -> str:
        """What ``argv`` prints, run as :meth:`run` runs it."""
        return self._run(argv)[1]

    def _run(self, argv: list[str]) -> tuple[float, str]:
        bundle = self._bundle(argv)
        assert self._tmp is not None
        container = f"bench-{secrets.token_hex(6)}"
        state = self._tmp / f"state-{container}"
        state.mkdir()
        cmd = self.argv(state, "run", "--bundle", str(bundle), container)
        try:
            return _run(cmd, f"bare runsc run of {' '.join(argv)[:80]}")
        finally:
            kill_naming(str(state))
            shutil.rmtree(state, ignore_errors=True)


def bwrap_start_idle(rootfs: Path, argv: list[str],
                     cgroup: SandboxCgroups) -> subprocess.Popen[bytes]:
    """``bwrap --unshare-all`` of ``argv`` over ``rootfs``, left running in ``cgroup``."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", str(rootfs), "/",
           "--proc", "/proc", "--dev", "/dev", *argv]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=cgroup.joiner(v1=True),
                            start_new_session=True)


def pss_kib(pids: list[int]) -> int:
    """Proportional set size of these processes, summed from ``/proc/<pid>/smaps_rollup``.

    PSS charges each shared page to the processes mapping it in equal parts, so summing it
    over every process of many sandboxes never counts a page twice.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue  # gone meanwhile, or a kernel thread
    return total


def mem_available_kib() -> int:
    """The host's ``MemAvailable`` (what can be used without swapping), in KiB."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise InternalError("/proc/meminfo has no MemAvailable")


def kill_naming(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker`` (our unique state dir).

    ``runsc run`` normally reaps its sandbox and gofer before it exits; after a timeout or
    a crash they may outlive it, and only their command line ties them to this run.
    """
    needle = marker.encode()
    for _ in range(50):
        pids = list(_pids_naming(needle))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _pids_naming(needle: bytes) -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    yield int(entry)
        except OSError:
            continue
