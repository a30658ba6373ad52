"""A namespaces sandbox given a GPU from a fake driver tree: real character devices with the
NVIDIA major number (no driver answers them: opening one fails with ENXIO once the devices
cgroup lets it through, EPERM where it does not), the driver's libraries and tools bound
read-only with their soname links, the devices cgroup allowing only those devices.

What a real GPU does in one (nvidia-smi, a CUDA matrix product) is scripts/gpu-check's,
on a machine that has one (docs/gpu.md)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError
from corral.api.resources import Resources
from corral.node import NodeSettings, SyncNode
from corral.runtime.gpu import NVIDIA_MAJOR
from tests.conftest import IMAGE_DIR, WORKING, sandbox_data_dir
from tests.fakes.gpu import DRIVER, make_driver_tree

pytestmark = pytest.mark.skipif("namespaces" not in WORKING,
                                reason="the namespaces runtime does not work here")

OPEN = """
import errno, os, sys
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR))
        print(path, "opened")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
"""


@pytest.fixture(scope="module")
def gpu_node(python_image: str) -> Iterator[tuple[SyncNode, Path]]:
    with tempfile.TemporaryDirectory(prefix="corral-gpu-tree-") as tmp, \
            sandbox_data_dir("corral-gpu-test-") as data:
        os.chmod(tmp, 0o755)
        host = make_driver_tree(Path(tmp), gpus=2, char_devices=True)
        with SyncNode(NodeSettings(data_dir=data, image_dir=IMAGE_DIR), gpus=host,
                      gpu_root=Path(tmp)) as node:
            yield node, Path(tmp)


def test_the_sandbox_gets_its_gpu_and_the_drivers_files_read_only(
        gpu_node: tuple[SyncNode, Path]) -> None:
    node, _ = gpu_node
    sb = node.create("python", runtime="namespaces", resources=Resources.parse(gpu=1),
                     timeout=300)
    try:
        listing = sb.commands.run("ls /dev").stdout.split()
        assert {"nvidia0", "nvidiactl", "nvidia-uvm"} <= set(listing)
        assert "nvidia1" not in listing  # the other GPU is someone else's
        # No driver answers these numbers: ENXIO means the devices cgroup let it through.
        opened = sb.commands.run(["python3", "-c", OPEN, "/dev/nvidia0", "/dev/nvidiactl"])
        assert opened.stdout.split("\n")[:2] == ["/dev/nvidia0 ENXIO", "/dev/nvidiactl ENXIO"]
        lib = sb.commands.run("cat /usr/local/nvidia/lib64/libcuda.so.1")
        assert lib.stdout == f"fake libcuda.so.{DRIVER}\n"
        assert sb.commands.run("nvidia-smi").stdout == "fake nvidia-smi\n"
        wrote = sb.commands.run(f"echo x > /usr/local/nvidia/lib64/libcuda.so.{DRIVER}")
        assert wrote.exit_code != 0 and "Read-only file system" in wrote.stderr
        firmware = sb.commands.run(f"ls /lib/firmware/nvidia/{DRIVER}")
        assert firmware.stdout == "gsp_ga10x.bin\n"
        assert sb.commands.run("echo $LD_LIBRARY_PATH").stdout.startswith("/usr/local/nvidia/lib64")
    finally:
        sb.kill()


def test_the_devices_cgroup_holds_the_sandbox_to_its_devices(
        gpu_node: tuple[SyncNode, Path]) -> None:
    node, _ = gpu_node
    sb = node.create("python", runtime="namespaces", resources=Resources.parse(gpu=1),
                     timeout=300)
    try:
        cgroup = Path("/sys/fs/cgroup/devices/corral") / node.node.settings.node_key / sb.id
        rules = (cgroup / "devices.list").read_text().split("\n")
        assert "a *:* rwm" not in rules and f"c {NVIDIA_MAJOR}:0 rw" in rules
        assert f"c {NVIDIA_MAJOR}:1 rw" not in rules
        pid = sb.commands.run("echo $$").stdout.strip()
        assert pid  # its processes are in it:
        assert (cgroup / "cgroup.procs").read_text().strip()
        (cgroup / "devices.deny").write_text(f"c {NVIDIA_MAJOR}:0 rw")
        opened = sb.commands.run(["python3", "-c", OPEN, "/dev/nvidia0", "/dev/null"])
        assert opened.stdout.split("\n")[:2] == ["/dev/nvidia0 EPERM", "/dev/null opened"]
    finally:
        sb.kill()
    assert not cgroup.exists()


def test_a_sandbox_without_a_gpu_has_no_nvidia_device(gpu_node: tuple[SyncNode, Path]) -> None:
    node, _ = gpu_node
    sb = node.create("python", runtime="namespaces", timeout=300)
    try:
        assert "nvidia" not in sb.commands.run("ls /dev").stdout
        assert sb.commands.run("test -e /usr/local/nvidia").exit_code != 0
    finally:
        sb.kill()


@pytest.mark.skipif("gvisor" not in WORKING, reason="the gvisor runtime does not work here")
def test_gvisor_refuses_a_driver_outside_runscs_nvproxy_list(
        gpu_node: tuple[SyncNode, Path]) -> None:
    node, _ = gpu_node
    with pytest.raises(InvalidArgumentError) as refused:
        node.create("python", runtime="gvisor", resources=Resources.parse(gpu=1))
    message = refused.value.message
    assert f"driver {DRIVER} is not in runsc's nvproxy list" in message
    assert "550.90.07" in message and "use the namespaces runtime" in message
    assert node.node.gpus.holders() == {}
