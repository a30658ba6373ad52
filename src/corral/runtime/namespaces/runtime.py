"""The ``namespaces`` runtime: bubblewrap in a user namespace, cgroups, seccomp.

Layers, outermost first:

* cgroups v1 (memory, pids, cpu) and v2 (for ``cgroup.kill``) — limits, and a clean kill.
* a user namespace mapping sandbox uids 0..65535 to a host range of their own
  (``100000 + slot * 65536``): sandbox root is an unprivileged host uid, distinct per
  sandbox, and the image is seen through an idmapped mount so its files still belong to
  sandbox root.
* bubblewrap: new mount, pid, network (loopback only), ipc, uts and cgroup namespaces;
  the overlay root; a fresh ``/proc`` (its files that describe the host's hardware and
  kernel masked, see :data:`MASKED_PROC_FILES`) and minimal ``/dev``; no ``/sys``.
* capabilities cut to Docker's default set (namespaced: they grant nothing on the host),
  no-new-privileges, and a seccomp filter (:mod:`._seccomp`).

The kernel is shared with the host: this is a weaker wall than gVisor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import stat
import threading
from pathlib import Path

from corral.api.errors import InternalError, InvalidArgumentError, ResourceExhaustedError

from .. import _cgroups_unsafe as cgroups
from .. import _mounts_unsafe as mounts
from .. import _net_unsafe as net
from .._cgroups import ROOT as CGROUP_ROOT
from .._cgroups import CgroupView
from .._cgroups import check_host as check_cgroups
from .._host import HostRuntime, channel_dir, check_alive, prepare_root, teardown
from ..agent_bundle import CHANNEL_MOUNT_POINT, MOUNT_POINT, agent_command, agent_env
from ..gpu import SANDBOX_BIN_DIR, SANDBOX_LIB_DIR, DriverFiles
from ..base import (Availability, RuntimeSandbox, RuntimeState, SandboxSpec, Weakening,
                    widen_pipes)
from . import _seccomp

UID_BASE = 100_000
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
SLOT_DIR = Path("/run/corral/uid-slots")
MAX_SLOTS = 30_000
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_SETFCAP",
    "CAP_AUDIT_WRITE",
)
#: /proc files masked (unreadable) in every sandbox: Docker's masked paths, and those that
#: describe the host's hardware, kernel build, devices, disks and other tenants' activity
#: (kernel symbols, interrupts by device, I/O memory map, boot command line, config.gz,
#: global file locks, swap devices, ...). A fresh /proc is the host kernel's, not
#: namespaced like gVisor's. Some stay readable because programs rely on them: cpuinfo,
#: meminfo, stat, loadavg, uptime, version, vmstat (SECURITY.md, "Known limits").
MASKED_PROC_FILES = (
    "kcore", "keys", "key-users", "timer_list", "timer_stats", "sched_debug",
    "latency_stats", "kallsyms", "config.gz", "cmdline", "iomem", "ioports", "interrupts",
    "softirqs", "kpagecount", "kpageflags", "kpagecgroup", "slabinfo", "vmallocinfo",
    "pagetypeinfo", "zoneinfo", "buddyinfo", "kmsg", "modules", "mtrr", "dma", "partitions",
    "diskstats", "misc", "consoles", "devices", "fb", "locks", "swaps",
)  # fmt: skip
#: /proc folders replaced by an empty read-only tmpfs.
MASKED_PROC_DIRS = ("acpi", "scsi", "asound", "driver", "dynamic_debug")


def proc_mask_args(gpu: bool = False) -> list[str]:
    """bwrap arguments masking the host's /proc entries above (those this kernel has).

    A GPU sandbox (``gpu``) sees the NVIDIA driver's own folder, ``/proc/driver/nvidia``,
    read-only inside the masked ``/proc/driver``: CUDA and NVML read the driver's
    parameters and GPU list there, as they do in containers (SECURITY.md, "GPUs").

    Files get the host's ``/dev/null`` bound over them: bwrap mounts it ``nodev``, so the
    sandbox cannot even open it. A sandbox cannot lift a mask: ``umount`` needs
    CAP_SYS_ADMIN and is refused by seccomp as well.
    """
    args: list[str] = []
    for name in MASKED_PROC_FILES:
        if os.path.lexists(f"/proc/{name}") and not os.path.isdir(f"/proc/{name}"):
            args += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    for name in MASKED_PROC_DIRS:
        if os.path.isdir(f"/proc/{name}"):
            args += ["--tmpfs", f"/proc/{name}"]
            if gpu and name == "driver":
                args += ["--ro-bind-try", "/proc/driver/nvidia", "/proc/driver/nvidia"]
            args += ["--remount-ro", f"/proc/{name}"]
    return args


def gpu_args(gpu: DriverFiles) -> list[str]:
    """bwrap arguments giving a sandbox its GPUs: their device nodes (``--dev-bind``: the
    sandbox opens them as they are on the host; no other device of the host is there, and
    the devices cgroup refuses any other), the driver's libraries and tools read-only in
    :data:`SANDBOX_LIB_DIR` and :data:`SANDBOX_BIN_DIR` with their soname links, and its
    firmware folder read-only."""
    args: list[str] = []
    for device in gpu.devices:
        args += ["--dev-bind", device.path, "/dev/" + device.path.rsplit("/", 1)[-1]]
    for source, name in gpu.libraries:
        args += ["--ro-bind", source, f"{SANDBOX_LIB_DIR}/{name}"]
    for name, target in gpu.links:
        args += ["--symlink", target, f"{SANDBOX_LIB_DIR}/{name}"]
    for source, name in gpu.tools:
        args += ["--ro-bind", source, f"{SANDBOX_BIN_DIR}/{name}"]
    if gpu.firmware is not None:
        args += ["--ro-bind", gpu.firmware, "/lib/firmware/nvidia/" + Path(gpu.firmware).name]
    return args


def uid_base(files: tuple[Path, ...] = SUBID_FILES) -> int:
    """The first host uid of slot 0: above every range /etc/subuid and /etc/subgid hand out.

    Those ranges belong to rootless containers of host users; a sandbox sharing one would
    share file ownership with them. Rounded up to a whole range.
    """
    end = UID_BASE
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                end = max(end, int(parts[1]) + int(parts[2]))
    ranges = -(-end // mounts.UID_RANGE)
    return ranges * mounts.UID_RANGE


def volumes_dir(spec: SandboxSpec) -> Path:
    """Where a sandbox's volumes are bound, idmapped, on the host (``<n>``, by position)."""
    return spec.directory / "volumes"


def _check_traversable(directory: Path) -> None:
    """Sandbox root maps to an unprivileged host uid, which must reach the sandbox's root."""
    for folder in [directory, *directory.parents]:
        try:
            mode = folder.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & stat.S_IXOTH:
            raise InvalidArgumentError(
                f"{folder} (mode {stat.S_IMODE(mode):o}) is not searchable by other users, so "
                "namespaces sandboxes under it cannot reach their root; use a data dir outside "
                f"it or run `chmod o+x {folder}`")


class _Slots:
    """Host uid ranges handed to live sandboxes, one range each, host-wide.

    A slot is held by an exclusive ``flock`` on ``/run/corral/uid-slots/<n>``, so two nodes
    on one host (or a node and its crashed predecessor's leftovers) never share a range.
    The sandbox's agent inherits the locked descriptor (read-only: the file is host root's,
    mode 0600, so sandbox code cannot reopen it), so the lock lasts exactly as long as the
    sandbox, whether or not the node that made it is still there.
    """

    def __init__(self, directory: Path = SLOT_DIR) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}

    def take(self) -> int:
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            for slot in range(MAX_SLOTS):
                if slot in self._held:
                    continue
                fd = os.open(self._directory / str(slot),
                             os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held[slot] = fd
                return slot
        raise ResourceExhaustedError("no free uid range for another namespaces sandbox")

    def fd(self, slot: int) -> int:
        """The node's locked descriptor of a slot it took (-1 for an adopted slot)."""
        with self._lock:
            return self._held[slot]

    def adopt(self, slot: int, pids: list[int]) -> None:
        """Count a slot held by a running sandbox (one of ``pids``) as this node's."""
        path = str(self._directory / str(slot))
        holders = []
        for pid in pids:
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                            holders.append(pid)
        if not holders:
            raise InternalError(f"no process of the sandbox holds uid slot {slot}")
        with self._lock:
            if slot in self._held:
                raise InternalError(f"uid slot {slot} is already in use by another sandbox")
            self._held[slot] = -1

    def give(self, slot: int) -> None:
        with self._lock:
            fd = self._held.pop(slot, None)
        if fd is not None and fd >= 0:
            os.close(fd)


class NamespacesRuntime(HostRuntime):
    name = "namespaces"
    strength = 1

    def __init__(self, weakening: Weakening | None = None) -> None:
        """``weakening``: for the security suite only (see :class:`Weakening`)."""
        self._weakening = weakening or Weakening()
        self._slots = _Slots()
        self._base = uid_base()
        if self._base + MAX_SLOTS * mounts.UID_RANGE >= 2**32 - 1:
            raise InternalError(f"uid base {self._base} leaves no room for sandbox uid ranges")
        # One user namespace per slot, made on first use and reused by the slot's later
        # sandboxes: a namespace holds nothing but its id map, and the slot's previous
        # sandbox is gone (every process killed) before the slot is handed out again.
        self._namespaces: dict[int, mounts.UserNamespace] = {}
        self._namespaces_lock = threading.Lock()

    def _userns(self, base: int) -> mounts.UserNamespace:
        with self._namespaces_lock:
            userns = self._namespaces.get(base)
            if userns is None:
                userns = self._namespaces[base] = mounts.UserNamespace(base)
            return userns

    def check(self) -> Availability:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return Availability(False, "bubblewrap is not installed",
                                "apt-get install bubblewrap")
        if shutil.which("unshare") is None:
            return Availability(False, "unshare (util-linux) is not installed",
                                "apt-get install util-linux")
        problem = check_cgroups()
        if problem:
            return Availability(False, problem, "run as root on a host with cgroups mounted")
        try:
            userns = mounts.UserNamespace(uid_base())
            userns.close()
        except OSError as exc:
            return Availability(False, f"cannot create user namespaces: {exc}",
                                "sysctl -w kernel.unprivileged_userns_clone=1 "
                                "and user.max_user_namespaces > 0")
        try:
            _seccomp.build_filter_bpf()
        except Exception as exc:  # noqa: BLE001 - any failure means "unavailable"
            return Availability(False, f"cannot build the seccomp filter: {exc}",
                                "apt-get install libseccomp2")
        return Availability(True, f"bubblewrap ({bwrap}), user namespaces, cgroups, seccomp")

    def gpu_problem(self, driver: str) -> str | None:
        """The device nodes and the driver's files are bound in (as NVIDIA's container
        toolkit does); the v1 devices cgroup keeps the sandbox to those devices."""
        if not (CGROUP_ROOT / "devices" / "devices.allow").exists():
            return ("the cgroup v1 devices controller is not mounted, so a sandbox could "
                    "not be kept to its own GPU's device nodes")
        return None

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        _check_traversable(spec.directory.parent)
        slot = self._slots.take()
        sandbox = RuntimeSandbox(spec=spec, extra={"slot": slot})
        try:
            await asyncio.to_thread(self._prepare, sandbox, self._base + slot * mounts.UID_RANGE)
        except BaseException as exc:
            self._slots.give(slot)
            await asyncio.to_thread(teardown, spec.directory, spec.cgroup)
            if isinstance(exc, OSError):
                raise InternalError(f"preparing sandbox {spec.sandbox_id}: {exc}") from exc
            raise
        return sandbox

    def _prepare(self, sandbox: RuntimeSandbox, base: int) -> None:
        spec = sandbox.spec
        userns = self._userns(base)
        prepare_root(spec, userns)
        if spec.volumes:
            # Each volume through an idmapped clone of its tree: the sandbox's uid n
            # (host base + n) reads and writes uid n on disk, as under gvisor, so two
            # sandboxes of either runtime agree on who owns what.
            mounts.make_dir(volumes_dir(spec), 0o700, userns)
            for index, volume in enumerate(spec.volumes):
                point = volumes_dir(spec) / str(index)
                point.mkdir(mode=0o700)
                mounts.bind_idmapped(volume.source, point, userns.fd,
                                     read_only=volume.read_only)
        res = spec.resources
        groups = cgroups.SandboxCgroups(spec.cgroup)
        groups.create(res.memory_mib, res.cpus, res.pids)
        if spec.gpu is not None:
            groups.limit_devices([(d.major, d.minor) for d in spec.gpu.devices])

    async def start(self, sandbox: RuntimeSandbox) -> asyncio.subprocess.Process:
        spec = sandbox.spec
        slot = sandbox.extra["slot"]
        assert isinstance(slot, int)
        userns = self._userns(self._base + slot * mounts.UID_RANGE)
        join = cgroups.SandboxCgroups(spec.cgroup).joiner(v1=True)
        devices_procs = (str(CGROUP_ROOT / "devices" / "corral" / spec.cgroup / "cgroup.procs")
                         if spec.gpu is not None else None)
        userns_fd = userns.fd
        slot_fd = self._slots.fd(slot)
        weak = self._weakening
        seccomp_fd = -1 if weak.no_seccomp else _seccomp.filter_fd()
        netns_fd = net.open_netns(spec.netns) if spec.netns is not None else -1

        def pre_exec() -> None:
            join()  # while still host root: cgroup files belong to the host
            if devices_procs is not None:
                fd = os.open(devices_procs, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            if netns_fd >= 0:  # the policy's namespace; bwrap then makes none of its own
                net.enter(netns_fd)
                os.close(netns_fd)
            mounts.enter_userns(userns_fd)
            os.close(userns_fd)  # joined: the sandbox must not inherit a handle on it

        # No --die-with-parent: the sandbox outlives a node restart (the agent ends it if
        # no node comes back). The agent inherits the uid slot's lock (see _Slots).
        argv = ["bwrap", "--unshare-ipc", "--unshare-pid",
                *(["--unshare-net"] if netns_fd < 0 else []), "--unshare-uts",
                "--unshare-cgroup-try", "--new-session", "--as-pid-1",
                "--hostname", "sandbox", "--bind", str(spec.directory / "rootfs"), "/",
                "--proc", "/proc",
                *([] if weak.unmasked_proc else proc_mask_args(spec.gpu is not None)),
                "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
                "--ro-bind", str(spec.agent_bundle), MOUNT_POINT,
                "--ro-bind", str(channel_dir(spec)), CHANNEL_MOUNT_POINT]
        for index, volume in enumerate(spec.volumes):  # bwrap adds nosuid and nodev
            argv += ["--ro-bind" if volume.read_only else "--bind",
                     str(volumes_dir(spec) / str(index)), volume.target]
        if spec.gpu is not None:
            argv += gpu_args(spec.gpu)
        argv += ["--chdir", "/"]
        if weak.all_capabilities:
            argv += ["--cap-add", "ALL"]
        else:
            argv += ["--cap-drop", "ALL"]
            for cap in CAPABILITIES:
                argv += ["--cap-add", cap]
        if seccomp_fd >= 0:
            argv += ["--seccomp", str(seccomp_fd)]
        argv += ["--clearenv"]
        for key, value in agent_env(spec.orphan_grace).items():
            argv += ["--setenv", key, value]
        if spec.gpu is not None:
            argv += ["--setenv", "NVIDIA_VISIBLE_DEVICES", "all"]
        argv += ["--", *agent_command()]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, preexec_fn=pre_exec, start_new_session=True,
                pass_fds=(slot_fd,) if seccomp_fd < 0 else (seccomp_fd, slot_fd),
                limit=1024 * 1024)
        except OSError as exc:
            raise InternalError(f"starting bubblewrap for {spec.sandbox_id}: {exc}") from exc
        finally:
            if seccomp_fd >= 0:
                os.close(seccomp_fd)
            if netns_fd >= 0:
                os.close(netns_fd)
        widen_pipes(process)
        sandbox.process = process
        sandbox.state = RuntimeState.RUNNING
        return process

    async def adopt(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        slot = extra.get("slot")
        if not isinstance(slot, int) or not 0 <= slot < MAX_SLOTS:
            raise InternalError(f"sandbox {spec.sandbox_id}: no valid uid slot recorded")
        pids = await asyncio.to_thread(check_alive, spec)
        await asyncio.to_thread(self._slots.adopt, slot, pids)
        return RuntimeSandbox(spec=spec, state=RuntimeState.RUNNING, extra={"slot": slot})

    async def release(self, sandbox: RuntimeSandbox) -> None:
        await super().release(sandbox)
        slot = sandbox.extra.get("slot")
        if isinstance(slot, int):
            self._slots.give(slot)  # the sandbox's agent still holds the lock

    # -- pausing: the cgroup v2 freezer ----------------------------------------------------

    durable_pause = False

    def check_pause(self, sandbox: RuntimeSandbox) -> None:
        return None  # every namespaces sandbox can be frozen

    async def pause(self, sandbox: RuntimeSandbox) -> None:
        """Freeze every process of the sandbox where it is (``cgroup.freeze``).

        A frozen sandbox uses no CPU but keeps everything else: its memory stays charged
        (the host has no swap, and nothing reclaims a frozen group's memory), its mounts,
        uid slot and network stay taken. It survives a node restart (the next node adopts
        it paused: its cgroup stays frozen), not a reboot of the host. Thawing takes well
        under a millisecond (docs/pause.md).
        """
        groups = cgroups.SandboxCgroups(sandbox.spec.cgroup)
        if not await asyncio.to_thread(groups.freeze):
            await asyncio.to_thread(groups.thaw)
            raise InternalError(f"sandbox {sandbox.spec.sandbox_id}: its processes could not "
                                "be frozen within 5 s; it runs on")
        sandbox.state = RuntimeState.PAUSED

    async def resume(self, sandbox: RuntimeSandbox) -> None:
        """Thaw it: the processes run on, over the channel they had."""
        await asyncio.to_thread(cgroups.SandboxCgroups(sandbox.spec.cgroup).thaw)
        sandbox.state = RuntimeState.RUNNING

    async def finish_pause(self, spec: SandboxSpec, extra: dict[str, object]
                           ) -> RuntimeSandbox | None:
        """Frozen: its pause got done (the node died before recording it); else it runs
        (its agent waits for the next node)."""
        unified = CgroupView(spec.cgroup).unified
        try:
            frozen = unified is not None and "frozen 1" in await asyncio.to_thread(
                (unified / "cgroup.events").read_text)
        except FileNotFoundError:
            frozen = False
        return await self.adopt_paused(spec, extra) if frozen else None

    async def adopt_paused(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        sandbox = await self.adopt(spec, extra)  # frozen processes are alive processes
        sandbox.state = RuntimeState.PAUSED
        return sandbox

    async def destroy(self, sandbox: RuntimeSandbox) -> None:
        await super().destroy(sandbox)
        slot = sandbox.extra.pop("slot", None)
        if isinstance(slot, int):
            self._slots.give(slot)
