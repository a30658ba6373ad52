"""Regression tests for findings of the security review: each failed before its fix."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import InvalidArgumentError, NotFoundError
from corral.api.errors import AlreadyExistsError
from corral.node import NodeSettings, SandboxState, SyncNode, SyncNodeSandbox
from corral.node.images import BUILTIN_IMAGES, ImageStore, _mounts_using
from corral.runtime.host import mounts_under

from ..conftest import IMAGE_DIR, sandbox_data_dir


def _mount_options(point: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(point):
                return set(fields[5].split(","))
    raise AssertionError(f"{point} is not mounted")


def test_sandbox_files_are_unreachable_and_inert_on_the_host(node: SyncNode,
                                                             sandbox: SyncNodeSandbox) -> None:
    """A setuid file written in a sandbox must never run with privilege on the host."""
    sandbox.commands.run("cp /usr/bin/id /work/suid-id && chmod 4755 /work/suid-id")
    directory = node.node.sandboxes_dir / sandbox.id
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    rootfs = directory / "rootfs"
    assert {"nosuid", "nodev"} <= _mount_options(rootfs)
    assert {"nosuid", "nodev"} <= _mount_options(directory / "disk")
    lower = directory / "lower"
    if lower.exists():  # namespaces: the idmapped image is read-only too
        assert {"ro", "nosuid", "nodev"} <= _mount_options(lower)
        with pytest.raises(OSError):
            (lower / "etc" / "planted").write_text("x")


def test_a_symlinked_data_dir_never_deletes_through_mounts(runtime: str,
                                                           python_image: str) -> None:
    with sandbox_data_dir("corral-link-") as tmp:
        real = tmp / "real"
        real.mkdir(mode=0o711)
        link = tmp / "link"
        link.symlink_to(real)
        before = sum(1 for _ in (IMAGE_DIR).glob("python-*/rootfs/etc/*"))
        with SyncNode(NodeSettings(data_dir=link, image_dir=IMAGE_DIR)) as n:
            sb = n.create("python", runtime=runtime)
            sb.files.write("/work/x", "x")
            sb.kill()
            assert not mounts_under(real)
        assert sum(1 for _ in (IMAGE_DIR).glob("python-*/rootfs/etc/*")) == before > 0


def test_hostile_sized_requests_get_errors_and_the_sandbox_lives(sandbox: SyncNodeSandbox) -> None:
    # The agent's error echoes the 30 KB name; it used to overflow the reply and kill it.
    with pytest.raises((NotFoundError, InvalidArgumentError)) as caught:
        sandbox.commands.run(["\u0100" * 10000])
    assert len(caught.value.message) <= 2000
    with pytest.raises(InvalidArgumentError, match="too large"):
        sandbox.commands.run(["echo", "x" * 2_000_000])
    entries = sandbox.files.list("/usr", depth=3)
    assert len(entries) > 1000
    assert sandbox.commands.run("echo alive").stdout == "alive\n"


def test_cancelled_run_does_not_leave_the_command_running(node: SyncNode,
                                                          sandbox: SyncNodeSandbox) -> None:
    inner = node.node.get(sandbox.id)

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(inner.commands.run("yes > /dev/null", timeout=None), 0.5)

    node._portal.call(give_up)
    deadline = time.monotonic() + 10  # the kill was delivered; the exit is reaped just after
    while sandbox.commands.list() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.commands.list() == []


def test_cancelled_create_leaves_nothing(node: SyncNode, runtime: str) -> None:
    before = set(p.name for p in node.node.sandboxes_dir.iterdir())

    async def give_up() -> None:
        cancelled = 0
        for delay in (0.001, 0.003, 0.01):
            try:
                made = await asyncio.wait_for(node.node.create("python", runtime=runtime), delay)
            except TimeoutError:
                cancelled += 1
            else:
                await made.kill()
        assert cancelled
        # What an abandoned start made is stopped in the background, once the start ends.
        for _ in range(400):
            left = set(p.name for p in node.node.sandboxes_dir.iterdir()) - before
            live = [s for s in node.node.list() if s.state is not SandboxState.STOPPED]
            if not left and not live:
                break
            await asyncio.sleep(0.05)

    node._portal.call(give_up)
    assert node.node.list() == []
    assert set(p.name for p in node.node.sandboxes_dir.iterdir()) == before


@pytest.fixture
def second_node(python_image: str) -> Iterator[SyncNode]:
    with sandbox_data_dir("corral-second-") as tmp:
        with SyncNode(NodeSettings(data_dir=tmp, image_dir=IMAGE_DIR)) as n:
            yield n


def test_two_nodes_never_share_a_uid_range(node: SyncNode, second_node: SyncNode) -> None:
    a = node.create("python", runtime="namespaces")
    b = second_node.create("python", runtime="namespaces")
    try:
        maps = {sb.commands.run("cat /proc/self/uid_map").stdout.split()[1] for sb in (a, b)}
        assert len(maps) == 2
    finally:
        a.kill()
        b.kill()


def test_an_image_in_use_cannot_be_removed(node: SyncNode, sandbox: SyncNodeSandbox,
                                           tmp_path: Path) -> None:
    # The running sandbox's image is seen as in use (checked without removing anything)...
    assert _mounts_using(node.node.images.get("python").rootfs) >= 1
    # ...and removal of an image in use is refused (a throwaway image, bind-mounted).
    store = ImageStore(tmp_path / "images")
    built = tmp_path / "images" / f"minimal-{BUILTIN_IMAGES['minimal'].cache_key()}"
    (built / "rootfs" / "etc").mkdir(parents=True)
    (built / "image.json").write_text("{}")
    target = tmp_path / "mnt"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(built / "rootfs"), str(target)], check=True)
    try:
        with pytest.raises(AlreadyExistsError, match="in use"):
            store.remove("minimal")
        assert (built / "rootfs" / "etc").is_dir()
    finally:
        subprocess.run(["umount", str(target)], check=True)
