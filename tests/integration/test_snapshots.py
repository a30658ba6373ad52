"""A running sandbox's files kept as an image (``snapshot_filesystem``), on both runtimes:
the new image holds what the sandbox changed (deletions and owners included) on its own
image's layers, the sandbox runs on, a command running during the snapshot is not
disturbed, and a sandbox of the new image starts from it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.api.errors import NotFoundError
from corral.node import NodeSettings
from corral.node.sync import SyncNode

from ..conftest import IMAGE_DIR, sandbox_data_dir


@pytest.fixture(scope="module")
def node(python_image: str) -> Iterator[SyncNode]:
    with sandbox_data_dir("corral-snapshots-") as data_dir:
        with SyncNode(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as n:
            yield n


def test_a_running_sandboxs_files_become_an_image(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime, env={"ONLY_THIS_SANDBOX": "1"})
    try:
        sb.commands.run("echo one > /work/a; rm /etc/hostname; mkdir /home/user/d; "
                        "echo mine > /home/user/d/f; chown -R user:user /home/user/d; "
                        "head -c 5000000 /dev/urandom > /work/blob; md5sum /work/blob "
                        "> /work/blob.md5")
        ticking = sb.commands.start("i=0; while [ $i -lt 40 ]; do echo $i >> /work/ticks; "
                                    "i=$((i+1)); sleep 0.05; done")
        first = node.snapshot_filesystem(sb.id)
        assert ticking.wait().exit_code == 0  # frozen for the copy only, then on
        assert sb.commands.run("wc -l < /work/ticks").stdout == "40\n"
        sb.commands.run("echo two > /work/a")
        second = node.snapshot_filesystem(sb.id)
        assert first.id != second.id and len(second.layers) == len(first.layers) == 1
        assert first.steps[-1] == f"SNAPSHOT of sandbox {sb.id}"
        assert dict(first.env) == dict(node.node.images.get("python").env)  # not the create env
    finally:
        sb.kill()
    copy = node.create(first.id, runtime=runtime)
    try:
        out = copy.commands.run("cat /work/a; test -e /etc/hostname || echo gone; "
                                "stat -c %U:%G /home/user/d/f; md5sum -c /work/blob.md5; "
                                "echo [$ONLY_THIS_SANDBOX]")
        assert out.stdout == "one\ngone\nuser:user\n/work/blob: OK\n[]\n", out
    finally:
        copy.kill()
    later = node.create(second.id, runtime=runtime)
    try:
        assert later.commands.run("cat /work/a").stdout == "two\n"
    finally:
        later.kill()


def test_a_stopped_sandbox_has_no_files_to_keep(node: SyncNode) -> None:
    sb = node.create("python")
    sandbox_id = sb.id
    sb.kill()
    with pytest.raises(NotFoundError, match=sandbox_id):
        node.snapshot_filesystem(sandbox_id)
