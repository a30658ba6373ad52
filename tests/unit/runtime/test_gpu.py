"""GPU discovery and the driver's files a sandbox is given, from fake driver trees and from
this host (which has no GPU: discovery must say so, not fail), and runsc's nvproxy list
from the pinned runsc itself."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from pathlib import Path

import pytest

from corral.api.resources import Resources
from corral.runtime import SandboxSpec, gpu
from corral.runtime.gvisor.runsc import MANAGED, GvisorOptions, nvproxy_drivers
from corral.runtime.gvisor.runtime import GvisorRuntime, oci_spec
from tests.fakes.gpu import DRIVER, make_driver_tree

pytestmark = pytest.mark.rootless


def test_an_empty_root_has_no_gpu_and_says_why(tmp_path: Path) -> None:
    found = gpu.discover(tmp_path)
    assert not found.present and found.driver is None
    assert "no NVIDIA driver is loaded" in found.reason


def test_a_driver_without_device_nodes_says_so(tmp_path: Path) -> None:
    make_driver_tree(tmp_path, gpus=0)
    found = gpu.discover(tmp_path)
    assert not found.present and found.driver == DRIVER
    assert f"driver {DRIVER} is loaded but no /dev/nvidia<N>" in found.reason


def test_device_nodes_without_a_driver_say_so(tmp_path: Path) -> None:
    make_driver_tree(tmp_path)
    (tmp_path / "proc/driver/nvidia/version").unlink()
    found = gpu.discover(tmp_path)
    assert not found.present and "no NVIDIA driver is loaded" in found.reason


def test_a_fake_tree_is_found_from_its_device_nodes(tmp_path: Path) -> None:
    make_driver_tree(tmp_path, gpus=3)
    (tmp_path / "dev/nvidia-caps").mkdir()  # not a GPU
    found = gpu.discover(tmp_path)
    assert found.present and found.driver == DRIVER
    assert [(g.index, g.minor, g.name) for g in found.gpus] == [
        (0, 0, "nvidia0"), (1, 1, "nvidia1"), (2, 2, "nvidia2")]


def test_this_host_has_no_gpu_and_discovery_says_why() -> None:
    """The machines the tests run on have no NVIDIA GPU; where one has, this fails and the
    GPU tests with real devices (docs/gpu.md, scripts/gpu-check) are the ones to run."""
    found = gpu.discover()
    assert not found.present, f"this host has GPUs: {found}; run scripts/gpu-check"
    assert found.reason


@pytest.mark.parametrize("text,version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.12  Wed Aug 30 2023\n",
     "535.104.12"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build\n",
     "580.159.04"),
    ("NVRM version: something else entirely\n", None),
    ("", None),
])
def test_the_driver_version_is_read_from_the_module(tmp_path: Path, text: str,
                                                    version: str | None) -> None:
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text(text)
    assert gpu.driver_version(tmp_path) == version


def test_library_dirs_follow_ld_so_conf_includes_without_looping(tmp_path: Path) -> None:
    make_driver_tree(tmp_path)
    dirs = [str(p.relative_to(tmp_path)) for p in gpu.library_dirs(tmp_path)]
    assert dirs[0] == "opt/nvidia/lib"  # named by the config, before the defaults
    assert "usr/lib/x86_64-linux-gnu" in dirs and len(dirs) == len(set(dirs))


def test_the_driver_files_are_its_own_versioned_libraries_and_their_links(
        tmp_path: Path) -> None:
    host = make_driver_tree(tmp_path, gpus=2)
    files = gpu.driver_files(host.gpus[1:], DRIVER, tmp_path)
    assert [Path(d.path).name for d in files.devices] == ["nvidiactl", "nvidia-uvm",
                                                          "nvidia1"]
    assert files.devices[-1].minor == 1 and files.devices[-1].major == gpu.NVIDIA_MAJOR
    assert {name for _, name in files.libraries} == {
        f"libcuda.so.{DRIVER}", f"libnvidia-ml.so.{DRIVER}",
        f"libnvidia-ptxjitcompiler.so.{DRIVER}"}
    assert all(Path(source).is_relative_to(tmp_path) for source, _ in files.libraries)
    assert dict(files.links) == {
        "libcuda.so.1": f"libcuda.so.{DRIVER}",
        "libnvidia-ml.so.1": f"libnvidia-ml.so.{DRIVER}",
        "libnvidia-ptxjitcompiler.so.1": f"libnvidia-ptxjitcompiler.so.{DRIVER}"}
    assert [name for _, name in files.tools] == ["nvidia-smi"]
    assert files.firmware == str(tmp_path / "lib/firmware/nvidia" / DRIVER)


def test_a_gpu_sandbox_env_appends_the_drivers_folders_to_the_images() -> None:
    assert gpu.sandbox_env({})["LD_LIBRARY_PATH"] == gpu.SANDBOX_LIB_DIR
    env = gpu.sandbox_env({"PATH": "/opt/conda/bin:/usr/bin", "LD_LIBRARY_PATH": "/opt/x",
                           "NVIDIA_VISIBLE_DEVICES": "0"})
    assert env["PATH"] == f"/opt/conda/bin:/usr/bin:{gpu.SANDBOX_BIN_DIR}"
    assert env["LD_LIBRARY_PATH"] == f"{gpu.SANDBOX_LIB_DIR}:/opt/x"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "0"
    assert gpu.sandbox_env(env) == env  # once only


def test_a_missing_gpu_node_is_an_error(tmp_path: Path) -> None:
    host = make_driver_tree(tmp_path, gpus=1)
    os.unlink(tmp_path / "dev/nvidia0")
    with pytest.raises(FileNotFoundError, match="/dev/nvidia0"):
        gpu.driver_files(host.gpus, DRIVER, tmp_path)


def test_no_nvml_readings_without_nvml() -> None:
    assert gpu.usage((0,)) == {} and gpu.usage(()) == {}


@pytest.mark.skipif(not MANAGED.exists(), reason="the pinned runsc is not installed "
                    "(scripts/install)")
def test_the_pinned_runsc_lists_its_nvproxy_drivers() -> None:
    listed = nvproxy_drivers(str(MANAGED))
    assert set(listed) == {"535.104.12", "535.129.03", "535.154.05", "535.161.07",
                           "550.54.14", "550.54.15", "550.90.07"}
    assert "580.159.04" not in listed


@pytest.mark.skipif(not MANAGED.exists(), reason="the pinned runsc is not installed "
                    "(scripts/install)")
def test_gvisor_names_the_driver_and_runscs_list_when_it_cannot_pass_a_gpu() -> None:
    runtime = GvisorRuntime(GvisorOptions(runsc=str(MANAGED)))
    problem = runtime.gpu_problem("580.159.04")
    assert problem is not None
    assert "driver 580.159.04 is not in runsc's nvproxy list" in problem
    assert "550.90.07" in problem and "535.104.12" in problem
    assert runtime.gpu_problem("550.90.07") is None


def test_gvisor_without_runsc_says_so() -> None:
    problem = GvisorRuntime(GvisorOptions(runsc="/nonexistent/runsc")).gpu_problem("550.90.07")
    assert problem is not None and problem.startswith("gVisor is not available here")


def test_gvisors_spec_for_a_gpu_sandbox_names_its_devices_and_binds(tmp_path: Path) -> None:
    (tmp_path / "host").mkdir()
    host = make_driver_tree(tmp_path / "host", gpus=2)
    files = gpu.driver_files(host.gpus[1:], DRIVER, tmp_path / "host")
    spec = SandboxSpec(sandbox_id="sbx-0123456789abcdef", cgroup="n/sbx-0123456789abcdef",
                       rootfs=tmp_path, resources=Resources(gpus=1), agent_bundle=tmp_path,
                       directory=tmp_path / "sbx", gpu=files)
    oci = oci_spec(spec)
    assert [d["path"].rsplit("/", 1)[1] for d in oci["linux"]["devices"]] == [
        "nvidiactl", "nvidia-uvm", "nvidia1"]
    rules = oci["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"} and len(rules) == 4
    binds = {m["destination"]: m for m in oci["mounts"]}
    lib = binds[f"{gpu.SANDBOX_LIB_DIR}/libcuda.so.{DRIVER}"]
    assert "ro" in lib["options"] and lib["source"].startswith(str(tmp_path))
    assert "NVIDIA_VISIBLE_DEVICES=1" in oci["process"]["env"]
    plain = oci_spec(dataclasses.replace(spec, gpu=None))
    assert "devices" not in plain["linux"] and "devices" not in plain["linux"]["resources"]


def test_only_a_gpu_sandbox_sees_the_drivers_proc_folder() -> None:
    from corral.runtime.namespaces.runtime import proc_mask_args

    bind = ["--ro-bind-try", "/proc/driver/nvidia", "/proc/driver/nvidia"]
    plain, with_gpu = proc_mask_args(), proc_mask_args(gpu=True)
    assert not any(plain[i:i + 3] == bind for i in range(len(plain)))
    if os.path.isdir("/proc/driver"):  # masked on this kernel: the bind sits inside it
        at = next(i for i in range(len(with_gpu)) if with_gpu[i:i + 3] == bind)
        assert with_gpu[at - 2:at] == ["--tmpfs", "/proc/driver"]
        assert with_gpu[at + 3:at + 5] == ["--remount-ro", "/proc/driver"]


class _FakeNvml(types.ModuleType):
    """A stand-in for ``pynvml`` (NVML cannot run without a GPU): two H200s, minors 0, 1."""

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.nvmlInit = self.nvmlShutdown = lambda: None
        self.nvmlSystemGetDriverVersion = lambda: b"580.159.04"
        self.nvmlDeviceGetCount = lambda: 2
        self.nvmlDeviceGetHandleByIndex = lambda i: i
        self.nvmlDeviceGetName = lambda h: "NVIDIA H200"
        self.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
        self.nvmlDeviceGetMinorNumber = lambda h: h
        self.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
            total=143771 * 2**20, used=(h + 1) * 2**30)
        self.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 * h)


def test_nvml_names_the_gpus_and_its_driver_fills_in_for_proc(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    found = gpu.discover()  # this host: no /dev/nvidia<N>, no /proc/driver/nvidia
    assert not found.present and found.driver == "580.159.04"
    assert found.reason == "NVML lists GPUs but none has a /dev/nvidia<N> node"
    readings = gpu.usage((1,))
    assert set(readings) == {1} and readings[1].utilization_percent == 40
    assert readings[1].memory_used_bytes == 2 * 2**30


def test_an_nvml_that_fails_is_no_gpu_and_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _FakeNvml()

    def refuse() -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    broken.nvmlInit = refuse
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert not gpu.discover().present and gpu.usage((0,)) == {}
