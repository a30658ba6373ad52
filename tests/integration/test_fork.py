"""Memory snapshots and forks of real sandboxes (docs/snapshots.md).

gVisor: a running sandbox's memory, processes, kernels and files are kept while it runs on;
sandboxes restored from the snapshot (or made by a fork) continue from that instant, each
with its own id, channel and files. namespaces: a clear ``unsupported`` error, nothing
changed. Snapshots outlive their node, and one that is gone says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.errors import (
    InvalidArgumentError,
    NotFoundError,
    RuntimeUnavailableError,
    SandboxNotRunningError,
)
from corral.node import NodeSettings, SandboxState, SyncNode, SyncNodeSandbox

from ..conftest import IMAGE_DIR, WORKING, sandbox_data_dir
from .test_pause import COUNTER, counter, runs_on, wait_for

gvisor_only = pytest.mark.skipif("gvisor" not in WORKING, reason="gVisor does not work here")
#: 100 MB of float64s in a DataFrame, and a checksum a copy must give back.
DATAFRAME = ("import numpy as np, pandas as pd\n"
             "df = pd.DataFrame(np.random.default_rng(7).random((1_250_000, 10)))\n"
             "int(df.memory_usage(index=False).sum())")
CHECKSUM = "float(df.values.sum())"


@pytest.fixture
def own_data_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-fork-") as path:
        yield path


def _started(node: SyncNode) -> SyncNodeSandbox:
    sb = node.create("python", runtime="gvisor", timeout=600, metadata={"role": "source"})
    sb.commands.run_background(["sh", "-c", COUNTER])
    wait_for(lambda: sb.files.exists("/work/counter"), 60)
    return sb


@gvisor_only
def test_a_snapshot_restores_memory_processes_and_files(node: SyncNode) -> None:
    sb = _started(node)
    clone: SyncNodeSandbox | None = None
    try:
        secret = sb.code.run("import secrets; token = secrets.token_hex(16); token").text
        sb.files.write("/work/before", b"written before the snapshot")
        at = counter(sb)
        snapshot = node.snapshot(sb.id)
        assert snapshot.sandbox_id == sb.id and snapshot.size_bytes > 0
        assert snapshot.id in {s.id for s in node.list_snapshots()}
        # The source runs on, kernel and all.
        runs_on(sb, at)
        assert sb.code.run("token").text == secret
        sb.files.write("/work/after", b"the source's, after the snapshot")

        clone = node.create_from_snapshot(snapshot.id, timeout=300)
        assert clone.id != sb.id and clone.state is SandboxState.RUNNING
        assert clone.info.metadata == {"role": "source"}  # the source's labels by default
        assert clone.code.run("token").text == secret  # its kernel, with its variables
        assert clone.files.read("/work/before") == b"written before the snapshot"
        assert not clone.files.exists("/work/after")  # files of the snapshot's instant
        # The counting shell came along, and counts on from where the snapshot was.
        first = counter(clone)
        assert first >= at
        runs_on(clone, first)
        # Their files are their own from here on.
        clone.files.write("/work/before", b"the clone's")
        assert sb.files.read("/work/before") == b"written before the snapshot"
        assert clone.commands.run("cat /work/before").stdout == "the clone's"
        # A second sandbox from the same snapshot, while the first runs.
        with node.create_from_snapshot(snapshot.id, metadata={"role": "second"}) as again:
            assert again.info.metadata == {"role": "second"}
            assert again.code.run("token").text == secret
        node.remove_snapshot(snapshot.id)
        with pytest.raises(NotFoundError, match=snapshot.id):
            node.create_from_snapshot(snapshot.id)
        assert snapshot.id not in {s.id for s in node.list_snapshots()}
        assert clone.code.run("token").text == secret  # its copies run on without it
    finally:
        sb.kill()
        if clone is not None:
            clone.kill()


@gvisor_only
def test_a_fork_of_a_kernel_holding_a_100_mb_dataframe(node: SyncNode) -> None:
    sb = node.create("python", runtime="gvisor", timeout=600)
    clones: list[SyncNodeSandbox] = []
    try:
        built = sb.code.run(DATAFRAME, timeout=300)
        assert built.error is None, built.error
        assert int(built.text) == 100_000_000
        checksum = sb.code.run(CHECKSUM).text
        started = time.monotonic()
        clones = node.fork(sb.id, 5)
        took = time.monotonic() - started
        assert len({c.id for c in clones} | {sb.id}) == 6
        for clone in clones:
            assert clone.code.run(CHECKSUM).text == checksum
        # Each copy's memory is its own: a change in one is in no other.
        assert clones[0].code.run("df.iloc[:, 0] = 0.0").error is None
        assert clones[0].code.run(CHECKSUM).text != checksum
        assert clones[1].code.run(CHECKSUM).text == checksum
        assert sb.code.run(CHECKSUM).text == checksum
        assert not node.list_snapshots()  # a fork keeps no snapshot
        print(f"\nfork of a 100 MB DataFrame into 5: {took:.2f} s")
    finally:
        sb.kill()
        for clone in clones:
            clone.kill()


def test_namespaces_cannot_keep_memory(node: SyncNode) -> None:
    if "namespaces" not in WORKING:
        pytest.skip("the namespaces runtime does not work here")
    with node.create("python", runtime="namespaces") as sb:
        sb.files.write("/work/kept", b"still here")
        with pytest.raises(RuntimeUnavailableError, match="filesystem snapshot"):
            node.snapshot(sb.id)
        with pytest.raises(RuntimeUnavailableError):
            node.fork(sb.id, 2)
        assert sb.commands.run("cat /work/kept").stdout == "still here"
        assert not node.list_snapshots()


@gvisor_only
def test_bad_requests_say_so_and_change_nothing(node: SyncNode) -> None:
    with node.create("python", runtime="gvisor") as sb:
        for count in (0, 17, -1, True):
            with pytest.raises(InvalidArgumentError, match="1 to 16 copies"):
                node.fork(sb.id, count)
        for bad in ("snap-0000000000000000", "../etc", "snap-" + "0" * 200):
            with pytest.raises(NotFoundError):
                node.create_from_snapshot(bad)
            with pytest.raises(NotFoundError):
                node.remove_snapshot(bad)
        node.pause(sb.id)
        with pytest.raises(SandboxNotRunningError, match="paused"):
            node.snapshot(sb.id)
        node.resume(sb.id)
        assert sb.commands.run("true").exit_code == 0
        assert not node.list_snapshots()


@gvisor_only
def test_a_snapshot_outlives_its_node(own_data_dir: Path) -> None:
    settings = NodeSettings(data_dir=own_data_dir, image_dir=IMAGE_DIR)
    with SyncNode(settings) as first:
        sb = first.create("python", runtime="gvisor")
        sb.code.run("kept = 'across a node restart'")
        snapshot = first.snapshot(sb.id)
        sb.kill()
        # What a snapshot cut short by a crash leaves: a folder with no snapshot.json.
        (own_data_dir / "snapshots" / "snap-00000000000000ff" / "image").mkdir(parents=True)
    with SyncNode(settings) as second:
        assert [s.id for s in second.list_snapshots()] == [snapshot.id]
        assert not (own_data_dir / "snapshots" / "snap-00000000000000ff").exists()
        with second.create_from_snapshot(snapshot.id) as clone:
            assert clone.code.run("kept").text == "'across a node restart'"
        # A description tampered with is refused, not trusted.
        meta = own_data_dir / "snapshots" / snapshot.id / "snapshot.json"
        body = json.loads(meta.read_text())
        body["sandbox"]["resources"]["memory_mib"] = "lots"
        meta.write_text(json.dumps(body))
        with pytest.raises(Exception, match="unreadable"):
            second.create_from_snapshot(snapshot.id)
        second.remove_snapshot(snapshot.id)
        assert not second.list_snapshots()


#: A node in a process of its own that dies taking a snapshot: the sandbox is stopped by
#: ``runsc pause`` and its files are being copied when it says "cut" and hangs.
DYING_SNAPSHOT = """
import sys, time
from pathlib import Path
from corral.node import NodeSettings, SyncNode
from corral.runtime.gvisor import runtime as gvisor

def copy_and_die(spec, destination):
    print("cut", flush=True)
    time.sleep(3600)

gvisor.keep_upper = copy_and_die
node = SyncNode(NodeSettings(data_dir=Path(sys.argv[1]), image_dir=Path(sys.argv[2])))
sb = node.create("python", runtime="gvisor", timeout=600)
sb.files.write("/work/note", b"before the snapshot")
sb.commands.run_background(["sh", "-c", sys.argv[3]])
while not sb.files.exists("/work/counter"):
    time.sleep(0.05)
print(sb.id, flush=True)
node.snapshot(sb.id)
"""


@gvisor_only
def test_a_node_dying_mid_snapshot_leaves_the_sandbox_running(own_data_dir: Path) -> None:
    """The next node lets the sandbox ``runsc pause`` left stopped run on, adopts it, and
    removes the snapshot that was never finished."""
    process = subprocess.Popen([sys.executable, "-c", DYING_SNAPSHOT, str(own_data_dir),
                                str(IMAGE_DIR), COUNTER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        sandbox_id = process.stdout.readline().strip()
        assert sandbox_id.startswith("sbx-"), sandbox_id
        assert process.stdout.readline().strip() == "cut"
    finally:
        process.kill()
        process.wait(timeout=60)
    assert len(list((own_data_dir / "snapshots").iterdir())) == 1  # begun, never finished
    with SyncNode(NodeSettings(data_dir=own_data_dir, image_dir=IMAGE_DIR)) as second:
        assert second.lost == {}
        sb = second.get(sandbox_id)
        assert sb.state is SandboxState.RUNNING
        assert sb.files.read("/work/note") == b"before the snapshot"
        runs_on(sb, counter(sb))
        assert not second.list_snapshots()
        assert not list((own_data_dir / "snapshots").iterdir())
        sb.kill()
