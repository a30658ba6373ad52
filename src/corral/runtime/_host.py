"""What both local runtimes share: the copy-on-write root, cgroups, teardown and sweeping."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import subprocess
from pathlib import Path

from corral.api.errors import InternalError

from . import _cgroups_unsafe as cgroups
from . import _mounts_unsafe as mounts
from . import _net_unsafe as net
from ._cgroups import CgroupView, leftover_names
from ._mounts import mounts_under
from .agent_bundle import CHANNEL_SOCKET_NAME
from .base import Runtime, RuntimeSandbox, RuntimeState, SandboxSpec, Usage, drop_pipes

log = logging.getLogger(__name__)

MIB = 1024 * 1024
INODES_PER_MIB = 256


def inode_limit(disk_mib: int) -> int:
    return max(4096, min(disk_mib * INODES_PER_MIB, 4_000_000))


def prepare_root(spec: SandboxSpec, userns: mounts.UserNamespace | None,
                 upper_from: Path | None = None) -> Path:
    """Mount the sandbox's root: image (read-only lower) + tmpfs upper of ``disk_mib``.

    ``upper_from`` (gvisor only, no ``userns``): a writable layer :func:`keep_upper` saved,
    copied into the new tmpfs as this sandbox's own (a sandbox restored from a memory
    snapshot: its files exactly as they were when its memory was kept).

    The sandbox's directory is 0700, owned by root (gvisor) or by the sandbox's own root uid
    (namespaces, whose bwrap runs as that uid): no other host user can reach its files.
    Its ``run`` folder (mounted read-only at :data:`CHANNEL_MOUNT_POINT`) is where a
    restarted node binds the socket the agent reconnects to.
    """
    directory = spec.directory
    mounts.make_dir(directory, 0o700, userns)
    disk, root = directory / "disk", directory / "rootfs"
    disk.mkdir()
    root.mkdir()
    mounts.make_dir(channel_dir(spec), 0o700, userns)
    mounts.mount_tmpfs(disk, spec.resources.disk_mib * MIB, inode_limit(spec.resources.disk_mib))
    if upper_from is not None:
        if userns is not None:
            raise InternalError("a saved writable layer is only restored without a user "
                                "namespace")
        _copy_tree(upper_from, disk / "upper", spec.sandbox_id)
    else:
        mounts.make_dir(disk / "upper", 0o755, userns)
    (disk / "work").mkdir()
    if userns is None:
        mounts.mount_overlay([*spec.layers, spec.rootfs], disk / "upper", disk / "work", root)
        return root
    # The image is bound at ``lower`` (so that what is mounted says who uses it); a built
    # image's layers are detached idmapped trees handed to the overlay by descriptor, in
    # no mount table: bwrap reads the table again and again as it starts, and a line a
    # layer made each start measurably slower (docs/benchmarks.md, Images).
    lower = directory / "lower"
    lower.mkdir()
    mounts.bind_idmapped(spec.rootfs, lower, userns.fd)
    trees: list[int] = []
    try:
        for layer in spec.layers:
            trees.append(mounts.idmapped_tree(layer, userns.fd))
        mounts.mount_overlay([*trees, lower], disk / "upper", disk / "work", root)
    finally:
        for fd in trees:
            os.close(fd)
    return root


def copy_changes(spec: SandboxSpec, destination: Path, keep_running: bool = False) -> None:
    """Freeze a running sandbox and copy what it changed in its image (its overlay's upper
    layer, whiteouts and opaque directories included) into the new folder ``destination``.

    The sandbox stays frozen (the caller destroys it next), or with ``keep_running`` is
    thawed once the copy is made. What is copied is the sandbox's own, hostile content,
    copied as it is (``cp -a``: links stay links, nothing is followed); the caller
    neutralises it (:mod:`corral.node.layers`).
    """
    groups = cgroups.SandboxCgroups(spec.cgroup)
    try:
        if not groups.freeze():
            raise InternalError(f"sandbox {spec.sandbox_id}: could not freeze it to copy its "
                                "changes")
        upper = spec.directory / "disk" / "upper"
        destination.mkdir(mode=0o700)
        result = subprocess.run(["cp", "-a", "--", f"{upper}/.", str(destination)],
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=3600)
        if result.returncode != 0:
            raise InternalError(f"sandbox {spec.sandbox_id}: copying its changes failed: "
                                f"{result.stderr.decode(errors='replace')[-2000:]}")
    finally:
        if keep_running:
            groups.thaw()


def saved_upper(spec: SandboxSpec) -> Path:
    """Where a paused sandbox's writable layer waits on disk (see :func:`park_root`)."""
    return spec.directory / "upper"


def park_root(spec: SandboxSpec) -> None:
    """Move a stopped sandbox's writable layer to disk and unmount its root.

    Nothing may run in the sandbox (its checkpoint is taken). The overlay's upper layer is
    copied (``cp -a``: whiteouts, opaque folders, owners and links as they are) into
    :func:`saved_upper`, synced, and the overlay and its tmpfs are unmounted, so a paused
    sandbox holds no memory for its files and survives a reboot. Nothing may touch that
    copy until :func:`unpark_root`: a restored gVisor sandbox trusts what it cached of its
    files, and a host change there is silently overwritten (trap T6 of
    docs/research/pause-resume.md). On failure the root stays mounted as it was.
    """
    saved = saved_upper(spec)
    if saved.exists():  # what an interrupted pause left
        _remove_tree(saved)
    _copy_tree(spec.directory / "disk" / "upper", saved, spec.sandbox_id)
    _sync(saved)
    mounts.unmount_all(spec.directory)


def keep_upper(spec: SandboxSpec, destination: Path) -> None:
    """Copy a sandbox's writable layer into the new folder ``destination`` on disk and sync
    it (a memory snapshot's files). Nothing may write in the sandbox meanwhile (its
    runtime stopped it): a restored gVisor sandbox trusts what it cached of its files."""
    _copy_tree(spec.directory / "disk" / "upper", destination, spec.sandbox_id)
    _sync(destination)


def unpark_root(spec: SandboxSpec) -> None:
    """Mount a paused sandbox's root again as :func:`prepare_root` made it: a tmpfs of its
    disk size holding the saved upper layer, and the overlay over its image. The copy on
    disk stays until :func:`drop_parked`. On failure nothing is left mounted."""
    directory = spec.directory
    disk, root = directory / "disk", directory / "rootfs"
    try:
        mounts.mount_tmpfs(disk, spec.resources.disk_mib * MIB,
                           inode_limit(spec.resources.disk_mib))
        _copy_tree(saved_upper(spec), disk / "upper", spec.sandbox_id)
        (disk / "work").mkdir()
        mounts.mount_overlay([*spec.layers, spec.rootfs], disk / "upper", disk / "work", root)
    except BaseException:
        mounts.unmount_all(directory)
        raise


def unmount_root(spec: SandboxSpec) -> None:
    """Unmount a sandbox's root (its overlay and tmpfs), leaving its directory."""
    mounts.unmount_all(spec.directory)


def drop_parked(spec: SandboxSpec, *extra: Path) -> None:
    """Delete the saved upper layer of a resumed sandbox, and ``extra`` folders of its
    directory (its checkpoint image)."""
    for path in (saved_upper(spec), *extra):
        if path.exists():
            _remove_tree(path)


def _copy_tree(source: Path, destination: Path, sandbox_id: str) -> None:
    result = subprocess.run(["cp", "-a", "--", str(source), str(destination)],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=3600)
    if result.returncode != 0:
        raise InternalError(f"sandbox {sandbox_id}: copying its files to {destination.name} "
                            f"failed: {result.stderr.decode(errors='replace')[-2000:]}")


def _sync(path: Path) -> None:
    """Flush the filesystem holding ``path`` to its disk (syncfs(2), one filesystem)."""
    result = subprocess.run(["sync", "-f", str(path)], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=600)
    if result.returncode != 0:
        raise InternalError(f"syncing {path}: {result.stderr.decode(errors='replace')[-500:]}")


def channel_dir(spec: SandboxSpec) -> Path:
    """The host folder a sandbox sees at :data:`CHANNEL_MOUNT_POINT`."""
    return spec.directory / "run"


def channel_socket(spec: SandboxSpec) -> Path:
    """Where a restarted node listens for the sandbox's agent."""
    return channel_dir(spec) / CHANNEL_SOCKET_NAME


def check_alive(spec: SandboxSpec) -> list[int]:
    """The sandbox's processes, after checking its root is still mounted; raises if gone."""
    root = spec.directory / "rootfs"
    if root not in mounts_under(spec.directory):
        raise InternalError(f"sandbox {spec.sandbox_id}: its root is no longer mounted")
    pids = CgroupView(spec.cgroup).pids()
    if not pids:
        raise InternalError(f"sandbox {spec.sandbox_id}: no process is left in it")
    return pids


def teardown(directory: Path, name: str) -> None:
    """Kill, unmount, uncgroup and delete one sandbox's host state. Idempotent.

    The directory is deleted only once nothing is mounted below it any more: deleting
    through a mount could reach the shared image.
    """
    groups = cgroups.SandboxCgroups(name)
    if not groups.kill():
        log.warning("sandbox %s: processes survived cgroup.kill for 5 s", name)
    mounts.unmount_all(directory)
    left = groups.remove()
    if left:
        log.warning("sandbox %s: could not remove cgroups %s", name, left)
    still_mounted = mounts_under(directory)
    if still_mounted:
        raise InternalError(f"sandbox {name}: refusing to delete {directory}, still mounted: "
                            f"{[str(p) for p in still_mounted]}")
    if directory.exists():
        _remove_tree(directory)


def _remove_tree(directory: Path) -> None:
    """rmtree that never leaves the directory's filesystem (belt and braces)."""
    device = directory.stat().st_dev

    def onerror(function: object, path: str, excinfo: object) -> None:
        log.warning("could not remove %s", path)

    for root, dirs, _ in os.walk(directory):
        for name in dirs:
            child = os.path.join(root, name)
            if os.lstat(child).st_dev != device:
                raise InternalError(f"refusing to delete {directory}: {child} is a mount point")
    shutil.rmtree(directory, onerror=onerror)


def destroy_network(extra: dict[str, object]) -> None:
    """Remove the network namespace, veth pair and rules a runtime handle's ``extra``
    records (see :mod:`corral.node.network`); nothing if it records none."""
    recorded = extra.get("net")
    if not isinstance(recorded, dict):
        return
    index, name = recorded.get("index"), recorded.get("netns")
    if not isinstance(index, int) or not isinstance(name, str):
        log.error("a sandbox's recorded network %r is not one; nothing removed", recorded)
        return
    net.destroy(net.SandboxNet(index=index, netns=name, gateway=_ANY, address=_ANY))


_ANY = ipaddress.IPv4Address(0)


def sweep_networks(node_key: str, keep: set[int]) -> list[int]:
    """Remove the network namespaces (and their veths and rules) a dead node of this key
    left behind, but those in ``keep``. Returns the slots swept."""
    swept = [i for i in net.leftovers(node_key) if i not in keep]
    for index in swept:
        try:
            net.destroy(net.SandboxNet(index=index, netns=f"corral-{node_key}-{index}",
                                       gateway=_ANY, address=_ANY))
        except (OSError, InternalError) as exc:
            log.error("could not sweep the network of slot %d: %s", index, exc)
    return swept


def sweep(sandboxes_dir: Path, node_key: str, keep: set[str]) -> list[str]:
    """Tear down sandboxes a dead node left behind (its cgroups, mounts, directories).

    Only this node's own sandboxes are touched: their cgroups sit under ``node_key`` and
    their directories under ``sandboxes_dir``. Returns the sandbox ids swept.
    """
    names = leftover_names(node_key)
    if sandboxes_dir.is_dir():
        names.update(p.name for p in sandboxes_dir.iterdir() if p.is_dir())
    swept = sorted(names - keep)
    for name in swept:
        try:
            teardown(sandboxes_dir / name, f"{node_key}/{name}")
        except InternalError as exc:
            log.error("could not sweep sandbox %s: %s", name, exc)
    return swept


class HostRuntime(Runtime):
    """A runtime whose sandboxes are host processes in cgroups over an overlay root."""

    async def destroy(self, sandbox: RuntimeSandbox) -> None:
        if sandbox.state is RuntimeState.DESTROYED:
            return
        spec = sandbox.spec
        await asyncio.to_thread(teardown, spec.directory, spec.cgroup)
        await asyncio.to_thread(destroy_network, sandbox.extra)
        if sandbox.process is not None:
            # Closing the transport kills the process if needed and closes its pipes: on
            # Python 3.11, wait() would otherwise hang on a pipe left full and unread by a
            # channel that was shut because the agent flooded it.
            transport = getattr(sandbox.process, "_transport", None)
            if transport is not None:
                transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sandbox.process.wait(), 5)
        sandbox.state = RuntimeState.DESTROYED

    async def adopt(self, spec: SandboxSpec, extra: dict[str, object]) -> RuntimeSandbox:
        await asyncio.to_thread(check_alive, spec)
        return RuntimeSandbox(spec=spec, state=RuntimeState.RUNNING, extra=dict(extra))

    async def release(self, sandbox: RuntimeSandbox) -> None:
        # The runtime's process (runsc or bwrap) lives in its own session and cgroup; the
        # node closes its pipes to it and goes.
        drop_pipes(sandbox)

    def counters(self, sandbox: RuntimeSandbox) -> tuple[int, int]:
        groups = CgroupView(sandbox.spec.cgroup)
        return groups.oom_kills(), groups.pids_hits()

    def usage(self, sandbox: RuntimeSandbox) -> Usage:
        groups = CgroupView(sandbox.spec.cgroup)
        used, cache, limit = groups.memory()
        try:
            disk = os.statvfs(sandbox.spec.directory / "disk")
            disk_total = disk.f_blocks * disk.f_frsize
            disk_used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
        except OSError:  # stopping: its layer is gone
            disk_total = disk_used = 0
        return Usage(cpu_seconds=groups.cpu_seconds(), memory_bytes=used,
                     memory_cache_bytes=cache, memory_limit_bytes=limit,
                     disk_used_bytes=disk_used, disk_total_bytes=disk_total,
                     pids=groups.pids_current())

    def limit_hit(self, sandbox: RuntimeSandbox, since: tuple[int, int]) -> str | None:
        oom, pids = self.counters(sandbox)
        if oom > since[0]:
            return f"killed: memory limit {sandbox.spec.resources.memory_mib} MiB"
        if pids > since[1]:
            return f"pids limit {sandbox.spec.resources.pids} reached"
        return None

