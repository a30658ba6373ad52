"""Volumes on a node, over both runtimes: shared by sandboxes at once (of either runtime),
outliving them and the node, read-only mounts, the quota, the file API without a sandbox,
owners on disk, removal, and the checks a create's mounts go through before anything
starts. The hostile cases are in tests/security/test_volumes.py."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from corral.node import NodeSettings, SandboxState, SyncNode, SyncNodeSandbox
from corral.node.volumes import MAX_SANDBOX_VOLUMES, MAX_SIZE_MIB, MIN_SIZE_MIB, VolumeMount
from corral.runtime.host import make_volume_fs, mount_volume, volume_mounted

from ..conftest import IMAGE_DIR, WORKING, sandbox_data_dir

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def node(python_image: str) -> Iterator[SyncNode]:
    with sandbox_data_dir("corral-test-volumes-") as data_dir:
        with SyncNode(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as n:
            yield n


def cleanup(node: SyncNode, volume_id: str) -> None:
    """Kill what mounts the volume, then remove it."""
    for sandbox_id in node.volume_users(volume_id):
        node.get(sandbox_id).kill()
    if node.volumes.exists(volume_id):
        node.remove_volume(volume_id)


@pytest.fixture
def volume(node: SyncNode) -> Iterator[str]:
    """A new 32 MiB volume of the module's node, removed after the test."""
    info = node.volumes.create(32)
    yield info.id
    cleanup(node, info.id)


def py(sb: SyncNodeSandbox, code: str, user: str | None = None) -> str:
    """Run ``code`` on the sandbox's python3 and return what it printed (it must succeed)."""
    result = sb.commands.run(["python3", "-c", code], user=user, timeout=120)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def mounted(node: SyncNode, runtime: str, volume_id: str, path: str = "/data",
            read_only: bool = False) -> SyncNodeSandbox:
    return node.create("python", runtime=runtime, timeout=600,
                       volumes=[VolumeMount(volume_id, path, read_only)])


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def loop_backs(image: Path) -> bool:
    """Whether any loop device is still backed by ``image``."""
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() in (str(image), f"{image} (deleted)"):
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(set(WORKING) != {"gvisor", "namespaces"},
                    reason="needs both runtimes working on this host")
def test_sandboxes_of_both_runtimes_share_a_volume_at_once(node: SyncNode, volume: str) -> None:
    gvisor = mounted(node, "gvisor", volume, "/data")
    bwrap = mounted(node, "namespaces", volume, "/mnt/shared")
    assert sorted(node.volume_users(volume)) == sorted([gvisor.id, bwrap.id])
    assert gvisor.volumes == (VolumeMount(volume, "/data"),)

    # Each sees what the other just wrote, both ways, without remounting or waiting.
    py(gvisor, "open('/data/from-gvisor', 'w').write('one')")
    assert py(bwrap, "print(open('/mnt/shared/from-gvisor').read())") == "one\n"
    py(bwrap, "open('/mnt/shared/from-gvisor', 'a').write(' two')")
    py(bwrap, "import os; os.makedirs('/mnt/shared/d/e'); "
              "open('/mnt/shared/d/e/f', 'w').write('3')")
    assert py(gvisor, "print(open('/data/from-gvisor').read(), open('/data/d/e/f').read())"
              ) == "one two 3\n"

    # Owners: a file the image's user (uid 1000) makes is uid 1000 on disk and in the other
    # sandbox, whichever runtime made it; root's is 0.
    py(gvisor, "import os; os.mkdir('/data/home'); os.chown('/data/home', 1000, 1000)")
    py(bwrap, "open('/mnt/shared/home/by-bwrap', 'w').write('b')", user="user")
    py(gvisor, "open('/data/home/by-gvisor', 'w').write('g')", user="user")
    host = node.node.volumes.root / volume
    for name in ("by-bwrap", "by-gvisor"):
        st = os.stat(host / "home" / name)
        assert (st.st_uid, st.st_gid) == (1000, 1000), name
        assert node.volumes.stat(volume, f"/home/{name}").uid == 1000
    assert os.stat(host / "from-gvisor").st_uid == 0
    owners = ("import os; print([os.stat('{d}/home/' + n).st_uid "
              "for n in ('by-bwrap', 'by-gvisor')])")
    assert py(gvisor, owners.replace("{d}", "/data")) == "[1000, 1000]\n"
    assert py(bwrap, owners.replace("{d}", "/mnt/shared")) == "[1000, 1000]\n"
    # The user can write its own folder, and not one root made (the volume's own root is
    # 01777, like /tmp).
    denied = "import os\ntry:\n    open('{d}/d/no', 'w')\nexcept OSError as e:\n    print(e.errno)"
    assert py(gvisor, denied.replace("{d}", "/data"), user="user") == "13\n"
    assert py(bwrap, denied.replace("{d}", "/mnt/shared"), user="user") == "13\n"


def test_a_volume_outlives_its_sandboxes(node: SyncNode, runtime: str, volume: str) -> None:
    first = mounted(node, runtime, volume, "/work/data")
    py(first, "import os; os.makedirs('/work/data/run'); "
              "open('/work/data/run/result.txt', 'w').write('kept')")
    first.kill()
    assert node.volume_users(volume) == []
    # No sandbox now: the file API reads it.
    assert b"".join(node.volumes.read_stream(volume, "run/result.txt")) == b"kept"
    assert node.volumes.get(volume).used_bytes > 0
    second = mounted(node, runtime, volume, "/elsewhere")
    assert py(second, "print(open('/elsewhere/run/result.txt').read())") == "kept\n"
    second.kill()


def test_read_only_mounts_refuse_writes_while_another_writes(node: SyncNode, runtime: str,
                                                            volume: str) -> None:
    writer = mounted(node, runtime, volume, "/data")
    reader = mounted(node, runtime, volume, "/data", read_only=True)
    py(writer, "open('/data/note', 'w').write('v1')")
    attempt = ("import os\nfor how in (lambda: open('/data/note', 'w'), "
               "lambda: open('/data/new', 'w'), lambda: os.mkdir('/data/dir'), "
               "lambda: os.remove('/data/note')):\n"
               "    try:\n        how()\n        print('wrote')\n"
               "    except OSError as e:\n        print(e.errno)")
    assert py(reader, attempt).split() == ["30"] * 4  # EROFS, each time
    py(writer, "open('/data/note', 'w').write('v2')")
    assert py(reader, "print(open('/data/note').read())") == "v2\n"
    assert node.volumes.stat(volume, "/note").size == 2


def test_the_quota_gives_enospc_in_the_sandbox_and_from_the_file_api(node: SyncNode,
                                                                     runtime: str) -> None:
    info = node.volumes.create(MIN_SIZE_MIB)
    try:
        sb = mounted(node, runtime, info.id)
        fill = ("import errno\nf = open('/data/big', 'wb')\nwritten = 0\ntry:\n"
                "    while written < 64 * 2**20:\n"
                "        written += f.write(b'x' * 2**20)\n        f.flush()\n"
                "except OSError as e:\n    print('errno', e.errno, written // 2**20)\n"
                "else:\n    print('wrote it all')")
        out = py(sb, fill).split()
        assert out[:2] == ["errno", "28"], out  # ENOSPC
        assert 8 <= int(out[2]) < MIN_SIZE_MIB
        assert node.volumes.get(info.id).used_bytes > 8 * MIB

        # The host's writes hit the same wall; a failed write leaves the old file whole.
        node.volumes.write(info.id, "/keep", [b"old content"])
        with pytest.raises(ResourceExhaustedError, match="full"):
            node.volumes.write(info.id, "/keep", (b"y" * MIB for _ in range(32)))
        assert b"".join(node.volumes.read_stream(info.id, "/keep")) == b"old content"
        assert [e.name for e in node.volumes.list_dir(info.id, "/")] == ["big", "keep"]

        # Room again once the big file goes.
        py(sb, "import os; os.remove('/data/big')")
        assert node.volumes.write(info.id, "/fits", (b"z" * MIB for _ in range(4))) == 4 * MIB
        assert py(sb, "import os; print(os.path.getsize('/data/fits'))") == f"{4 * MIB}\n"
        sb.kill()
    finally:
        cleanup(node, info.id)


def test_the_file_api_and_sandboxes_see_each_others_files(node: SyncNode, runtime: str,
                                                          volume: str) -> None:
    sb = mounted(node, runtime, volume, "/data")
    # Host -> sandbox, while it runs: content, mode, owner, folders made on the way.
    payload = os.urandom(3 * MIB + 123)
    size = node.volumes.write(volume, "in/deep/blob.bin",
                              (payload[i:i + 65536] for i in range(0, len(payload), 65536)))
    assert size == len(payload)
    node.volumes.write(volume, "/in/script.sh", [b"#!/bin/sh\necho ran\n"], mode=0o750)
    assert py(sb, "import hashlib; print(hashlib.sha256("
                  "open('/data/in/deep/blob.bin', 'rb').read()).hexdigest())"
              ) == __import__("hashlib").sha256(payload).hexdigest() + "\n"
    assert sb.commands.run("/data/in/script.sh").stdout == "ran\n"  # not noexec
    assert py(sb, "import os; s = os.stat('/data/in/script.sh'); "
                  "print(oct(s.st_mode & 0o7777), s.st_uid, s.st_gid)") == "0o750 0 0\n"
    assert node.volumes.mkdir(volume, "/made") is True
    assert node.volumes.mkdir(volume, "made") is False
    assert py(sb, "import os; print(os.path.isdir('/data/made'))") == "True\n"

    # Sandbox -> host: what it writes, as whom, and links described, not followed.
    py(sb, "import os; os.mkdir('/data/u'); os.chown('/data/u', 1000, 1000)")
    py(sb, "open('/data/u/mine.txt', 'w').write('by user')", user="user")
    py(sb, "import os; os.symlink('/etc/passwd', '/data/u/link')")
    assert b"".join(node.volumes.read_stream(volume, "/u/mine.txt")) == b"by user"
    mine = node.volumes.stat(volume, "/u/mine.txt")
    assert (mine.type, mine.uid, mine.gid, mine.size, mine.name) == ("file", 1000, 1000, 7,
                                                                    "mine.txt")
    link = node.volumes.stat(volume, "/u/link")
    assert (link.type, link.target) == ("symlink", "/etc/passwd")
    listed = {e.path: e for e in node.volumes.list_dir(volume, "/", depth=3)}
    assert {"/in", "/in/deep", "/in/deep/blob.bin", "/in/script.sh", "/made", "/u",
            "/u/mine.txt", "/u/link"} == set(listed)
    assert [e.path for e in node.volumes.list_dir(volume, "/in")] == ["/in/deep",
                                                                     "/in/script.sh"]
    assert node.volumes.stat(volume, "/").type == "dir"

    # Removal both ways.
    node.volumes.remove_path(volume, "/u/mine.txt")
    assert py(sb, "import os; print(os.path.exists('/data/u/mine.txt'))") == "False\n"
    with pytest.raises(InvalidArgumentError, match="recursive"):
        node.volumes.remove_path(volume, "/in")
    node.volumes.remove_path(volume, "/in", recursive=True)
    assert py(sb, "import os; print(sorted(os.listdir('/data')))") == "['made', 'u']\n"
    for missing in (lambda: node.volumes.stat(volume, "/in"),
                    lambda: node.volumes.read_stream(volume, "/in/script.sh"),
                    lambda: node.volumes.remove_path(volume, "/nothing")):
        with pytest.raises(NotFoundError) as raised:
            missing()
        assert volume in raised.value.message  # errors name the volume and the path
        assert "'/in" in raised.value.message or "'/nothing'" in raised.value.message
    with pytest.raises(InvalidArgumentError, match="folder"):
        node.volumes.read_stream(volume, "/made")
    with pytest.raises(InvalidArgumentError, match="root"):
        node.volumes.remove_path(volume, "/", recursive=True)


def test_remove_refuses_a_volume_in_use_and_works_after(node: SyncNode, runtime: str) -> None:
    volume_id = node.volumes.create(MIN_SIZE_MIB).id
    image = node.node.volumes.root / f"{volume_id}.img"
    sb = mounted(node, runtime, volume_id)
    with pytest.raises(InvalidArgumentError, match=f"in use by 1 sandbox.*{sb.id}"):
        node.remove_volume(volume_id)
    assert node.volumes.exists(volume_id) and py(sb, "open('/data/x', 'w')") == ""
    sb.kill()
    assert node.volume_users(volume_id) == []
    node.remove_volume(volume_id)
    assert not node.volumes.exists(volume_id) and not image.exists()
    assert volume_id not in [v.id for v in node.volumes.list()]
    assert not (node.node.volumes.root / volume_id).exists()
    wait_for(lambda: not loop_backs(image), 10)  # its loop device went with it
    for call in (lambda: node.volumes.get(volume_id), lambda: node.remove_volume(volume_id),
                 lambda: node.volumes.stat(volume_id, "/"),
                 lambda: mounted(node, runtime, volume_id)):
        with pytest.raises(NotFoundError):
            call()


@pytest.mark.parametrize(("mounts", "error"), [
    ([("/",)], "cannot be mounted at /"),
    ([("data",)], "absolute"),
    ([("/proc/x",)], "/proc"),
    ([("/dev",)], "/dev"),
    ([("/sys/fs",)], "/sys"),
    ([("/.corral/bin",)], "/.corral"),
    ([("/.corral-run",)], "/.corral-run"),
    ([("/a/../b",)], "not normal"),
    ([("/a/",)], "not normal"),
    ([("//a",)], "not normal"),
    ([("/a\nb",)], "control"),
    ([("/data",), ("/data",)], "two volumes"),
    ([("/data",), ("/data/inner",)], "nested"),
    ([(f"/v{i}",) for i in range(MAX_SANDBOX_VOLUMES + 1)], "at most 16"),
    ([("/data", "vol-123")], "not a volume id"),
    ([("/data", "../../etc")], "not a volume id"),
])
def test_bad_mounts_are_refused_before_anything_starts(node: SyncNode, volume: str,
                                                       mounts: list[tuple[str, ...]],
                                                       error: str) -> None:
    before = set(os.listdir(node.node.sandboxes_dir))
    given = [VolumeMount(m[1] if len(m) > 1 else volume, m[0]) for m in mounts]
    with pytest.raises(InvalidArgumentError, match=error):
        node.create("python", volumes=given)
    assert set(os.listdir(node.node.sandboxes_dir)) == before
    assert node.volume_users(volume) == []


def test_unknown_volumes_and_sizes_are_refused(node: SyncNode) -> None:
    before = set(os.listdir(node.node.sandboxes_dir))
    with pytest.raises(NotFoundError, match="no volume vol-0123456789abcdef"):
        node.create("python", volumes=[VolumeMount("vol-0123456789abcdef", "/data")])
    assert set(os.listdir(node.node.sandboxes_dir)) == before
    for size in (0, MIN_SIZE_MIB - 1, MAX_SIZE_MIB + 1, True, 16.0, "16"):
        with pytest.raises(InvalidArgumentError, match="size"):
            node.volumes.create(size)  # type: ignore[arg-type]
    for bad in ("vol-123", "../x", "", "VOL-0123456789ABCDEF"):
        with pytest.raises(InvalidArgumentError):
            node.volumes.get(bad)
        with pytest.raises(InvalidArgumentError):
            node.remove_volume(bad)
    with pytest.raises(NotFoundError):
        node.volumes.write("vol-0123456789abcdef", "/x", [b"x"])


@pytest.mark.parametrize("detach", [False, True], ids=["closed", "detached"])
def test_a_volume_survives_a_node_restart(runtime: str, python_image: str,
                                          detach: bool) -> None:
    with sandbox_data_dir("corral-volumes-restart-") as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)
        folder = data_dir / "volumes"
        first = SyncNode(settings)
        try:
            volume_id = first.volumes.create(MIN_SIZE_MIB).id
            sb = mounted(first, runtime, volume_id)
            py(sb, "open('/data/before', 'w').write('written before the restart')")
            kept = sb.id
        finally:
            first.close(detach=detach)
        # The node's own mount is gone either way; a released sandbox keeps its own.
        assert not volume_mounted(folder / volume_id)

        with SyncNode(settings) as second:
            assert volume_mounted(folder / volume_id)  # mounted again at start
            assert [v.id for v in second.volumes.list()] == [volume_id]
            assert b"".join(second.volumes.read_stream(volume_id, "/before")
                            ) == b"written before the restart"
            fresh = mounted(second, runtime, volume_id, "/again")
            assert py(fresh, "print(open('/again/before').read())") == \
                "written before the restart\n"
            if detach:  # adopted, with its volume: one filesystem, seen alike by all
                adopted = second.get(kept)
                assert adopted.state is SandboxState.RUNNING
                assert adopted.volumes == (VolumeMount(volume_id, "/data"),)
                assert second.volume_users(volume_id) == sorted([kept, fresh.id])
                py(adopted, "open('/data/after', 'w').write('by the adopted one')")
                assert py(fresh, "print(open('/again/after').read())") == \
                    "by the adopted one\n"
                second.volumes.write(volume_id, "/from-host", [b"host"])
                assert py(adopted, "print(open('/data/from-host').read())") == "host\n"
            else:
                assert second.lost == {} and second.volume_users(volume_id) == [fresh.id]
            with pytest.raises(InvalidArgumentError, match="in use"):
                second.remove_volume(volume_id)
            for sandbox_id in second.volume_users(volume_id):
                second.get(sandbox_id).kill()
            second.remove_volume(volume_id)
            assert second.volumes.list() == []


def test_what_an_interrupted_create_left_is_cleared_at_start(python_image: str) -> None:
    with sandbox_data_dir("corral-volumes-leftovers-") as data_dir:
        settings = NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)
        with SyncNode(settings) as first:
            kept = first.volumes.create(MIN_SIZE_MIB).id
            first.volumes.write(kept, "/note", [b"kept"])
        folder = data_dir / "volumes"
        # A create cut short after mkfs, after the mount, and before anything.
        stray, half = "vol-00000000000000aa", "vol-00000000000000bb"
        make_volume_fs(folder / f".{stray}.img", MIN_SIZE_MIB)
        make_volume_fs(folder / f"{half}.img", MIN_SIZE_MIB)
        (folder / half).mkdir(mode=0o700)
        mount_volume(folder / f"{half}.img", folder / half)
        (folder / f".{half}.json").write_text("{")
        with SyncNode(settings) as second:
            assert sorted(os.listdir(folder)) == sorted([kept, f"{kept}.img", f"{kept}.json"])
            assert not volume_mounted(folder / half)
            assert [v.id for v in second.volumes.list()] == [kept]
            assert b"".join(second.volumes.read_stream(kept, "/note")) == b"kept"
        wait_for(lambda: not loop_backs(folder / f"{half}.img"), 10)
