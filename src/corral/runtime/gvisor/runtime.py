"""The ``gvisor`` runtime: runsc (a user-space kernel) with one OCI bundle per sandbox.

The sandbox's syscalls are served by gVisor's Sentry, not the host kernel; the Sentry
itself runs under a tight seccomp filter. Host-side it gets the same copy-on-write root
and cgroups as every sandbox. Each sandbox has its own runsc state directory, so teardown
is ``cgroup.kill`` plus deleting that directory: it never runs ``runsc delete``, which is
slow (~2 s) and unreliable in parallel.

Which runsc and which platform: :mod:`.runsc` (the pinned build ``scripts/install``
fetches, systrap where it works). Sandboxes get ``--network=none`` (loopback only), but
those with a network policy: netstack on their slot's namespace (``--network=sandbox``).

Pausing is a checkpoint to disk (:meth:`GvisorRuntime.pause`): the sandbox's memory goes to
``<sandbox dir>/snapshot/`` and its writable layer to ``<sandbox dir>/upper/``; nothing of it
runs, stays mounted or holds memory, and it survives a node restart and a reboot. A resume
mounts its root again and restores it with new pipes (docs/pause.md). The measurements and
the traps that shaped both are in docs/research/pause-resume.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from corral.api.errors import InternalError, InvalidArgumentError, RuntimeUnavailableError

from .. import _cgroups_unsafe as cgroups
from .._cgroups import CPU_PERIOD_US, CgroupView
from .._cgroups import check_host as check_cgroups
from .._mounts import mounts_under
from .._host import (HostRuntime, channel_dir, drop_parked, keep_upper, park_root,
                     prepare_root, saved_upper, teardown, unmount_root, unpark_root)
from ..agent_bundle import CHANNEL_MOUNT_POINT, MOUNT_POINT, agent_command, agent_env
from ..gpu import SANDBOX_BIN_DIR, SANDBOX_LIB_DIR
from ..base import (Availability, RuntimeSandbox, RuntimeState, SandboxSpec, Weakening,
                    drop_pipes, widen_pipes)
from .runsc import INSTALL_COMMAND, PINNED_VERSION, GvisorOptions, Platform, Runsc, RunscError
from .runsc import locate as locate_runsc
from .runsc import nvproxy_drivers
from .runsc import resolve as resolve_runsc

log = logging.getLogger(__name__)

# The Sentry, gofer and ptrace stubs are host tasks that count toward the pids cgroup: an
# idle python sandbox holds ~34 and gVisor panics when the limit is hit, so the host limit
# is the sandbox's own plus a generous allowance for gVisor itself.
GVISOR_TASK_ALLOWANCE = 512
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_SETFCAP",
    "CAP_AUDIT_WRITE",
]
#: Added to the set above only by a :class:`Weakening` with ``all_capabilities``.
WEAKENED_EXTRA_CAPABILITIES = [
    "CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_MKNOD",
    "CAP_DAC_READ_SEARCH", "CAP_SYS_MODULE",
]
#: Seconds a checkpoint or a restore may take (one of a sandbox with a kernel: ~0.3-0.8 s).
CHECKPOINT_TIMEOUT = 300.0
RESTORE_TIMEOUT = 300.0
#: Seconds a quick runsc command (state, pause, resume) may take.
RUNSC_TIMEOUT = 60.0
MASKED_PATHS = ["/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]


def oci_spec(spec: SandboxSpec, weakening: Weakening | None = None) -> dict[str, Any]:
    """The OCI runtime spec for one sandbox; the agent is its only initial process.

    ``weakening``: for the security suite only (see :class:`Weakening`).
    """
    weak = weakening or Weakening()
    res = spec.resources
    env = [f"{k}={v}" for k, v in agent_env(spec.orphan_grace).items()]
    granted = CAPABILITIES + (WEAKENED_EXTRA_CAPABILITIES if weak.all_capabilities else [])
    caps = {k: granted for k in ("bounding", "effective", "permitted")}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": agent_command(),
            "env": env, "cwd": "/", "capabilities": caps, "noNewPrivileges": True,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536}],
        },
        "root": {"path": str(spec.directory / "rootfs"), "readonly": False},
        "hostname": "sandbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": MOUNT_POINT, "type": "bind", "source": str(spec.agent_bundle),
             "options": ["rbind", "ro", "nosuid", "nodev"]},
            {"destination": CHANNEL_MOUNT_POINT, "type": "bind",
             "source": str(channel_dir(spec)),
             "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]},
            # Volumes: the host folder each is mounted at, served by the gofer (never
            # directfs), revalidated on every access (--file-access-mounts=shared), so
            # sandboxes sharing one, and the node's file API, see each other's writes.
            *({"destination": volume.target, "type": "bind", "source": str(volume.source),
               "options": ["rbind", "ro" if volume.read_only else "rw", "nosuid", "nodev"]}
              for volume in spec.volumes),
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
            + [{"type": "network", **({"path": str(spec.netns)} if spec.netns else {})}],
            "cgroupsPath": CgroupView(spec.cgroup).relative_path,
            "resources": {
                "memory": {"limit": res.memory_mib * 1024 * 1024},
                "pids": {"limit": res.pids + GVISOR_TASK_ALLOWANCE},
                "cpu": {"quota": int(res.cpus * CPU_PERIOD_US),
                        "period": CPU_PERIOD_US},
            },
            "maskedPaths": MASKED_PATHS,
        },
    } | ({} if spec.gpu is None else _gpu_spec(spec))


def _gpu_spec(spec: SandboxSpec) -> dict[str, Any]:
    """What ``--nvproxy`` reads: the GPUs' device nodes (linux.devices, and allowed in the
    devices cgroup), the driver's libraries and tools bound read-only, and the env NVIDIA's
    hooks use. The Sentry opens the device nodes; the sandbox's ioctls reach the driver only
    through nvproxy's filter."""
    gpu = spec.gpu
    assert gpu is not None  # noqa: S101 - only called with one
    base = oci_spec(dataclasses.replace(spec, gpu=None))
    devices = [{"path": d.path, "type": "c", "major": d.major, "minor": d.minor,
                "fileMode": 0o666, "uid": 0, "gid": 0} for d in gpu.devices]
    binds = [{"destination": f"{SANDBOX_LIB_DIR}/{name}", "type": "bind", "source": source,
              "options": ["rbind", "ro", "nosuid", "nodev"]} for source, name in gpu.libraries]
    binds += [{"destination": f"{SANDBOX_BIN_DIR}/{name}", "type": "bind", "source": source,
               "options": ["rbind", "ro", "nosuid", "nodev"]} for source, name in gpu.tools]
    linux = dict(base["linux"])
    linux["devices"] = devices
    linux["resources"] = {**linux["resources"], "devices": [
        {"allow": False, "access": "rwm"},
        *({"allow": True, "type": "c", "major": d.major, "minor": d.minor, "access": "rw"}
          for d in gpu.devices)]}
    minors = ",".join(str(d.minor) for d in gpu.devices if d.path.rsplit("nvidia", 1)[-1]
                      .isdigit())
    env = [e for e in base["process"]["env"] if not e.startswith("NVIDIA_VISIBLE_DEVICES=")]
    env += [f"NVIDIA_VISIBLE_DEVICES={minors}", f"LD_LIBRARY_PATH={SANDBOX_LIB_DIR}"]
    return {"mounts": [*base["mounts"], *binds], "linux": linux,
            "process": {**base["process"], "env": env}}


def file_flags(runsc: Runsc, weakening: Weakening | None = None) -> list[str]:
    """How the Sentry reaches the sandbox's root, the same on every build.

    ``--overlay2=none``: the host-side overlay (the image under a tmpfs of the disk size,
    see :mod:`.._host`) is the sandbox's one copy-on-write layer, as on the 2022 build; the
    newer build's default (``root:self``) would add a second, in-memory one inside it. And
    ``--directfs=false`` where the build has it: the gofer keeps opening host files for the
    Sentry, so the Sentry holds no host file descriptors of its own. With directfs, the
    20240729 build lets sandbox code truncate files of a *read-only* bind mount (the agent
    bundle, shared by every sandbox of the node: measured here, see SECURITY.md), and it
    made no measurable difference to speed. ``--file-access-mounts=shared``: bind mounts
    (volumes) may change under the sandbox (another sandbox, the node's file API), so the
    Sentry revalidates what it cached of them instead of trusting it.
    """
    flags = ["--overlay2=none"]
    if runsc.knows("file-access-mounts"):  # the default on both builds; said, not assumed
        flags.append("--file-access-mounts=shared")
    if runsc.knows("directfs"):
        weak = weakening is not None and weakening.gvisor_directfs
        flags.append(f"--directfs={'true' if weak else 'false'}")
    return flags


class GvisorRuntime(HostRuntime):
    name = "gvisor"
    strength = 2

    def __init__(self, options: GvisorOptions | None = None,
                 weakening: Weakening | None = None) -> None:
        """``options``: which runsc and platform (default: from the environment, see
        :class:`GvisorOptions`); ``weakening``: for the security suite only (see
        :class:`Weakening`)."""
        self.options = options or GvisorOptions.from_env()
        self._weakening = weakening or Weakening()
        self._chosen: tuple[Runsc, Platform] | None = None

    def chosen(self) -> tuple[Runsc, Platform]:
        """The runsc binary and platform this runtime uses (found and probed once).

        Raises RuntimeUnavailableError saying what to do when there is none.
        """
        if self._chosen is None:
            try:
                self._chosen = resolve_runsc(self.options)
            except RunscError as exc:
                raise RuntimeUnavailableError(f"{exc}; to fix: {exc.fix}") from None
        return self._chosen

    def check(self) -> Availability:
        problem = check_cgroups()
        if problem:
            return Availability(False, problem, "run as root on a host with cgroups mounted")
        try:
            runsc, platform = resolve_runsc(self.options)
        except RunscError as exc:
            return Availability(False, str(exc), exc.fix)
        self._chosen = runsc, platform
        detail = (f"runsc {runsc.version} ({runsc.path}), platform {platform.name} "
                  f"({platform.why})")
        if not runsc.pinned and self.options.runsc is None:
            detail += (f"; not the pinned {PINNED_VERSION}: {INSTALL_COMMAND} fetches it "
                       "(faster, and `ls -l` works)")
        return Availability(True, detail)

    def gpu_problem(self, driver: str) -> str | None:
        """nvproxy passes a GPU through only for the drivers its runsc build lists."""
        try:
            runsc = locate_runsc(self.options.runsc)
            supported = nvproxy_drivers(runsc.path)
        except RunscError as exc:
            return f"gVisor is not available here: {exc}"
        if not supported:
            return f"runsc {runsc.version} ({runsc.path}) has no nvproxy"
        if driver not in supported:
            return (f"driver {driver} is not in runsc's nvproxy list ({runsc.version} "
                    f"supports {', '.join(supported)}); use the namespaces runtime, or "
                    "a driver from that list")
        return None

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        await asyncio.to_thread(self.chosen)  # no runsc, no platform: say so before any work
        sandbox = RuntimeSandbox(spec=spec)
        try:
            await asyncio.to_thread(self._prepare, spec)
        except OSError as exc:
            await asyncio.to_thread(teardown, spec.directory, spec.cgroup)
            raise InternalError(f"preparing sandbox {spec.sandbox_id}: {exc}") from exc
        except BaseException:
            await asyncio.to_thread(teardown, spec.directory, spec.cgroup)
            raise
        return sandbox

    def _prepare(self, spec: SandboxSpec, upper_from: Path | None = None) -> None:
        prepare_root(spec, userns=None, upper_from=upper_from)
        bundle = spec.directory / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(oci_spec(spec, self._weakening)))
        (spec.directory / "state").mkdir()
        # The cgroups are made and limited here, not by runsc: runsc deletes cgroups it made
        # as soon as the sandbox exits, taking the OOM and pids counters that say why with
        # them; it joins (and leaves alone) cgroups that already exist.
        res = spec.resources
        cgroups.SandboxCgroups(spec.cgroup).create(res.memory_mib, res.cpus,
                                                    res.pids + GVISOR_TASK_ALLOWANCE)

    def _argv(self, spec: SandboxSpec) -> list[str]:
        # --detach: the sandbox does not die with `runsc run` (or the node); runsc returns
        # once it started, and the agent's stdio stays the channel.
        return self._command(spec, "run", "--detach", "--bundle",
                             str(spec.directory / "bundle"), spec.sandbox_id)

    def _command(self, spec: SandboxSpec, *subcommand: str) -> list[str]:
        """A runsc command line for the sandbox: its global flags (the same for every
        subcommand: run, checkpoint, restore), then ``subcommand``."""
        # --host-uds=open: the agent may connect to host sockets it can see, and it sees
        # one: the socket a restarted node binds in the read-only run folder. Creating host
        # sockets stays refused.
        runsc, platform = self.chosen()
        directory = spec.directory
        # --net-disconnect-ok (networked only; it is read at `run`, never later): open or
        # TIME_WAIT connections do not block a checkpoint (pause, fork) but are dropped.
        argv = [runsc.path, "--root", str(directory / "state"),
                "--network=sandbox" if spec.netns else "--network=none",
                *(["--net-disconnect-ok"] if spec.netns and runsc.knows("net-disconnect-ok")
                  else []),
                f"--platform={platform.name}", *file_flags(runsc, self._weakening),
                "--host-uds=open", *(["--net-raw"] if self._weakening.gvisor_net_raw else []),
                *(["--nvproxy"] if spec.gpu is not None else []),
                *subcommand]
        if spec.netns is None:
            return argv
        if not runsc.pinned:
            raise InvalidArgumentError(
                f"network policies on the gvisor runtime need runsc {PINNED_VERSION} (this "
                f"node runs {runsc.version}); {INSTALL_COMMAND} fetches it")
        # Netstack on the policy's namespace (its path is in the OCI spec: never without
        # one, or runsc would take over the host's interfaces). runsc 20240729 refuses to
        # start it when /proc/sys/net/core/rmem_default is readable, which this kernel
        # shows in every namespace: runsc runs in a mount namespace of its own with a
        # tmpfs over /proc/sys/net (see docs/network.md).
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o size=4k,mode=555 corral-hide /proc/sys/net && exec "$0" "$@"',
                *argv]

    async def start(self, sandbox: RuntimeSandbox) -> asyncio.subprocess.Process:
        spec = sandbox.spec
        join = cgroups.SandboxCgroups(spec.cgroup).joiner(v1=False)
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv(spec), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                preexec_fn=join, start_new_session=True, limit=1024 * 1024)
        except OSError as exc:
            raise InternalError(f"starting runsc for {spec.sandbox_id}: {exc}") from exc
        widen_pipes(process)
        sandbox.process = process
        sandbox.state = RuntimeState.RUNNING
        return process

    # -- pausing: a checkpoint to disk (see the module docstring) -------------------------

    durable_pause = True

    def check_pause(self, sandbox: RuntimeSandbox) -> None:
        """Every sandbox can be checkpointed but one whose handle records a network without
        naming its namespace: its restore would come back without its network, and one
        with a GPU: a checkpoint cannot hold what the GPU holds (runsc 20240729 refuses)."""
        if sandbox.spec.gpu is not None:
            raise RuntimeUnavailableError(
                f"sandbox {sandbox.spec.sandbox_id} has a GPU, and gVisor cannot checkpoint "
                "a sandbox's GPU state (memory, contexts); it runs on unpaused: kill it "
                "when done, or use the namespaces runtime, whose pause freezes it in place")
        if sandbox.spec.netns is None and "net" in sandbox.extra:
            raise RuntimeUnavailableError(
                f"sandbox {sandbox.spec.sandbox_id} has a network policy, but this node does "
                "not know its network namespace, which its restore needs; it runs on "
                "unpaused: kill it and start a new one to be able to pause it")

    async def pause(self, sandbox: RuntimeSandbox) -> None:
        """Checkpoint the sandbox to disk and take down its host side but its directory.

        ``runsc checkpoint --compression=none --direct`` (uncompressed: 2-5x faster than
        flate, at ~4x the disk; ``--direct``: the image's page cache is not charged to the
        sandbox, trap T4) ends the sandbox once its memory is saved. Then its writable
        layer goes to disk (:func:`.._host.park_root`), its runsc state directory is emptied
        (never ``runsc delete``: slow, and its state cannot be trusted after a checkpoint,
        trap T3) and its cgroups are removed. A failed checkpoint leaves the handle
        RUNNING: the sandbox may run on (the node finds out by greeting its agent).

        A networked sandbox (netstack on its slot's namespace) is checkpointed through the
        same ``/proc/sys/net`` wrapper as its ``run`` (:meth:`_command`). It was started
        with ``--net-disconnect-ok``, so its open and TIME_WAIT connections do not block
        the checkpoint: they are dropped. Its slot stays as it is while paused (the node's,
        see :mod:`corral.node.network`).
        """
        spec = sandbox.spec
        image = _image_dir(spec)
        await asyncio.to_thread(_fresh_dir, image)
        argv = self._command(spec, "checkpoint", "--compression=none", "--direct",
                             "--image-path", str(image), spec.sandbox_id)
        code, said = await _run(argv, CHECKPOINT_TIMEOUT)
        if code != 0:
            raise InternalError(f"checkpointing sandbox {spec.sandbox_id} failed (runsc "
                                f"exit status {code}): {said}")
        sandbox.state = RuntimeState.PAUSED  # its processes are gone: no way back but resume
        drop_pipes(sandbox)  # to its runsc run, long exited
        try:
            await asyncio.to_thread(self._park, spec)
        except OSError as exc:
            raise InternalError(f"saving paused sandbox {spec.sandbox_id}: {exc}") from exc

    def _park(self, spec: SandboxSpec) -> None:
        groups = cgroups.SandboxCgroups(spec.cgroup)
        if not groups.kill():  # what the checkpoint left (the gofer exits with the Sentry)
            raise InternalError(f"sandbox {spec.sandbox_id}: processes survived its checkpoint")
        park_root(spec)
        _empty(spec.directory / "state")
        left = groups.remove()
        if left:
            raise InternalError(f"sandbox {spec.sandbox_id}: could not remove cgroups {left}")

    async def resume(self, sandbox: RuntimeSandbox) -> asyncio.subprocess.Process:
        """Mount the sandbox's root again (its writable layer back in a tmpfs of its disk
        size), make its cgroups, and ``runsc restore --detach --direct`` it with new pipes:
        its agent's stdin/stdout are re-bound to them, and it waits there for the node's
        ``hello``. On failure everything is taken down again and it stays paused.

        A networked sandbox is restored into the same namespace, whose address and route
        the node has put back by now (runsc takes them over again, as at ``run``), so it
        keeps its address; its connections from before the pause are gone."""
        spec = sandbox.spec
        await asyncio.to_thread(self.chosen)
        try:
            await asyncio.to_thread(self._unpark, spec)
        except OSError as exc:
            raise InternalError(f"mounting paused sandbox {spec.sandbox_id}: {exc}") from exc
        try:
            process = await self._restore(spec, _image_dir(spec))
        except InternalError as exc:
            await asyncio.to_thread(self._repark, spec)
            raise InternalError(f"{exc.message}; it is still paused") from exc
        sandbox.process = process
        sandbox.state = RuntimeState.RUNNING
        await asyncio.to_thread(drop_parked, spec, _image_dir(spec))
        return process

    async def _restore(self, spec: SandboxSpec, image: Path) -> asyncio.subprocess.Process:
        """``runsc restore --detach --direct`` the checkpoint in ``image`` as sandbox
        ``spec`` (its root mounted, its cgroups made), with new pipes for its agent."""
        argv = self._command(spec, "restore", "--detach", "--direct", "--image-path",
                             str(image), "--bundle", str(spec.directory / "bundle"),
                             spec.sandbox_id)
        join = cgroups.SandboxCgroups(spec.cgroup).joiner(v1=False)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, preexec_fn=join, start_new_session=True,
                limit=1024 * 1024)
        except OSError as exc:
            raise InternalError(f"starting runsc for {spec.sandbox_id}: {exc}") from exc
        # `restore --detach` returns once the sandbox runs; its pipes stay open (the restored
        # sandbox holds them), so what it said is read without waiting for their end.
        code = await _exit_status(process, RESTORE_TIMEOUT)
        if code != 0:
            said = await _available(process.stderr)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            transport = getattr(process, "_transport", None)
            if transport is not None:
                transport.close()
            what = "timed out" if code is None else f"failed (runsc exit status {code})"
            raise InternalError(f"restoring sandbox {spec.sandbox_id} {what}: {said}")
        widen_pipes(process)
        return process

    # -- memory snapshots: a checkpoint that lets the sandbox run on -----------------------

    def check_snapshot(self, sandbox: RuntimeSandbox) -> None:
        self.check_pause(sandbox)  # what a checkpoint of it needs (its namespace known)

    async def snapshot(self, sandbox: RuntimeSandbox, destination: Path) -> None:
        """``runsc pause`` (every task stopped: nothing writes while its files are copied),
        its writable layer copied to ``destination/upper`` and synced, ``runsc checkpoint
        --leave-running --compression=none --direct`` into ``destination/image``, then
        ``runsc resume``. The sandbox stands still for all of it (docs/research/
        pause-resume.md §3: ~0.3-0.45 s with a kernel); a clone restored from it continues
        from that instant with files of that instant (copying while it ran would let the
        clone overwrite what its source wrote meanwhile, trap T6)."""
        spec = sandbox.spec
        image = destination / "image"
        await asyncio.to_thread(image.mkdir, 0o700, True)
        code, said = await _run(self._command(spec, "pause", spec.sandbox_id),
                                CHECKPOINT_TIMEOUT)
        if code != 0:
            raise InternalError(f"stopping sandbox {spec.sandbox_id} for a snapshot failed "
                                f"(runsc exit status {code}): {said}")
        try:
            try:
                await asyncio.to_thread(keep_upper, spec, destination / "upper")
            except OSError as exc:
                raise InternalError(f"saving sandbox {spec.sandbox_id}'s files: {exc}") from exc
            code, said = await _run(self._command(
                spec, "checkpoint", "--leave-running", "--compression=none", "--direct",
                "--image-path", str(image), spec.sandbox_id), CHECKPOINT_TIMEOUT)
            if code != 0:
                raise InternalError(f"checkpointing sandbox {spec.sandbox_id} failed (runsc "
                                    f"exit status {code}): {said}")
        finally:
            code, said = await _run(self._command(spec, "resume", spec.sandbox_id),
                                    CHECKPOINT_TIMEOUT)
            if code != 0:  # it stands still for good (not RUNNING): the node destroys it
                sandbox.state = RuntimeState.PAUSED
                raise InternalError(f"sandbox {spec.sandbox_id} did not run on after its "
                                    f"snapshot (runsc exit status {code}): {said}")

    async def restore(self, spec: SandboxSpec, source: Path) -> RuntimeSandbox:
        """A new sandbox from :meth:`snapshot`'s ``source``: its root prepared with the
        saved writable layer, a bundle of its own (its paths, its cgroup), and ``runsc
        restore`` of the saved image with new pipes."""
        await asyncio.to_thread(self.chosen)
        sandbox = RuntimeSandbox(spec=spec)
        try:
            await asyncio.to_thread(self._prepare, spec, source / "upper")
            sandbox.process = await self._restore(spec, source / "image")
        except OSError as exc:
            await asyncio.to_thread(teardown, spec.directory, spec.cgroup)
            raise InternalError(f"restoring sandbox {spec.sandbox_id}: {exc}") from exc
        except BaseException:
            await asyncio.to_thread(teardown, spec.directory, spec.cgroup)
            raise
        sandbox.state = RuntimeState.RUNNING
        return sandbox

    def _unpark(self, spec: SandboxSpec) -> None:
        res = spec.resources
        cgroups.SandboxCgroups(spec.cgroup).create(res.memory_mib, res.cpus,
                                                    res.pids + GVISOR_TASK_ALLOWANCE)
        try:
            unpark_root(spec)
        except BaseException:
            self._repark(spec)
            raise

    def _repark(self, spec: SandboxSpec) -> None:
        """Back to paused after a resume that failed: whatever runs killed, the root
        unmounted (its saved layer and image untouched), state and cgroups gone."""
        groups = cgroups.SandboxCgroups(spec.cgroup)
        groups.kill()
        unmount_root(spec)
        _empty(spec.directory / "state")
        groups.remove()

    async def adopt(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        """As every runtime, and: a sandbox a node left stopped by ``runsc pause`` (it died
        taking a snapshot, between the pause and the resume) is let run on first, so that
        its agent can meet the new node."""
        sandbox = await super().adopt(spec, extra)
        code, said = await _run(self._command(spec, "state", spec.sandbox_id), RUNSC_TIMEOUT)
        try:
            status = json.loads(said).get("status") if code == 0 else None
        except (ValueError, AttributeError):
            status = None
        if status == "paused":
            code, said = await _run(self._command(spec, "resume", spec.sandbox_id),
                                    RUNSC_TIMEOUT)
            if code != 0:
                raise InternalError(f"sandbox {spec.sandbox_id} was left stopped by a snapshot "
                                    f"cut short, and `runsc resume` failed: {said}")
            log.warning("sandbox %s: left stopped by a snapshot cut short; let run on",
                        spec.sandbox_id)
        return sandbox

    async def finish_pause(self, spec: SandboxSpec, extra: dict[str, object]
                           ) -> RuntimeSandbox | None:
        """The dead node's ``runsc checkpoint`` runs on in a session of its own: wait for it
        (up to :data:`CHECKPOINT_TIMEOUT`). A sandbox still running then was not
        checkpointed (None); one gone with its image written was, and its writable layer is
        parked as :meth:`pause` would have (unless that was done already)."""
        def finish() -> RuntimeSandbox | None:
            deadline = time.monotonic() + CHECKPOINT_TIMEOUT
            while _checkpointing(spec) and time.monotonic() < deadline:
                time.sleep(0.1)
            if CgroupView(spec.cgroup).pids():
                return None
            if not (_image_dir(spec) / "checkpoint.img").is_file():
                raise InternalError(f"sandbox {spec.sandbox_id}: its pause was cut short "
                                    "and its checkpoint is missing")
            if mounts_under(spec.directory):
                self._park(spec)  # its layer still in its tmpfs: the node died before
            elif not saved_upper(spec).is_dir():
                raise InternalError(f"sandbox {spec.sandbox_id}: its pause was cut short "
                                    "and its files were not saved")
            return RuntimeSandbox(spec=spec, state=RuntimeState.PAUSED, extra=dict(extra))
        return await asyncio.to_thread(finish)

    async def adopt_paused(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        def check() -> None:
            missing = [p.name for p in (_image_dir(spec) / "checkpoint.img", saved_upper(spec))
                       if not p.exists()]
            if missing:
                raise InternalError(f"sandbox {spec.sandbox_id}: its saved state is "
                                    f"incomplete (no {', '.join(missing)})")
            if CgroupView(spec.cgroup).pids():
                raise InternalError(f"sandbox {spec.sandbox_id}: it runs, yet its record "
                                    "says paused (a resume was cut short)")
            self._repark(spec)  # what a resume cut short left: mounts, runsc state, cgroups
        await asyncio.to_thread(check)
        return RuntimeSandbox(spec=spec, state=RuntimeState.PAUSED, extra=dict(extra))


def _checkpointing(spec: SandboxSpec) -> bool:
    """Whether a ``runsc checkpoint`` of the sandbox runs (any process's argv names its
    state folder and ``checkpoint``)."""
    state = str(spec.directory / "state")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"checkpoint" in argv and state.encode() in argv:
            return True
    return False


def _image_dir(spec: SandboxSpec) -> Path:
    """Where a paused sandbox's checkpoint image is."""
    return spec.directory / "snapshot"


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)


def _empty(folder: Path) -> None:
    """Empty runsc's state folder (a restore into a stale one is refused, trap T3)."""
    if folder.is_dir():
        for child in folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


async def _run(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """Run a runsc command to its end; its exit status (None: killed at the timeout) and
    the end of what it said."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return None, f"no answer within {timeout:g} s"
    return process.returncode, out.decode(errors="replace").strip()[-2000:]


async def _exit_status(process: asyncio.subprocess.Process, timeout: float) -> int | None:
    """The exit status of a process whose pipes another process holds; None at the timeout.

    ``Process.wait()`` is no use here: on Python 3.11 it returns only once every pipe of
    the process is closed, and a restored sandbox keeps them open. The child watcher sets
    the status as soon as the process exits.
    """
    deadline = time.monotonic() + timeout
    while process.returncode is None and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return process.returncode


async def _available(stream: asyncio.StreamReader | None, wait: float = 0.5) -> str:
    """What ``stream`` holds now (a pipe another process may keep open), within ``wait``."""
    said = bytearray()
    if stream is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while chunk := await stream.read(4096):
                    said += chunk
                    if len(said) > 16384:
                        break
    return said.decode(errors="replace").strip()[-2000:]
