"""NVIDIA GPUs on this host: which there are, and what a sandbox needs to use one.

Read only; nothing here opens a GPU for work or writes anything. Two sources:

* NVML (``nvidia-ml-py``, imported as ``pynvml``): names, UUIDs, memory, minor numbers,
  utilisation. Optional: without it (or without the driver's ``libnvidia-ml.so``) the
  GPUs are found from their device nodes alone, named by their minor number.
* the host's files: ``/dev/nvidia*`` device nodes, ``/proc/driver/nvidia/version`` for the
  driver version, and the driver's user-space libraries, found as the NVIDIA container
  toolkit finds them: every ``lib*.so.<driver version>`` in the library folders that
  ``/etc/ld.so.conf`` names (the driver installs each of its libraries under its own
  version, which nothing else uses), with the soname links beside them.

Every function takes the host's root folder, so tests build a fake driver tree in a
temporary folder and read it as they would ``/``.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The device nodes every GPU sandbox needs, whichever GPUs it has (those present).
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
#: The driver's own command-line tools a sandbox gets (those present): the toolkit's
#: utility set, less the daemons (persistenced, cuda-mps-server) a tenant must not run.
DRIVER_TOOLS = ("nvidia-smi", "nvidia-debugdump")
#: Library folders searched beside those /etc/ld.so.conf names (glibc's built-in ones,
#: and where NVIDIA's container images and cloud images put the driver).
DEFAULT_LIBRARY_DIRS = ("lib", "lib64", "usr/lib", "usr/lib64", "usr/lib/x86_64-linux-gnu",
                        "usr/lib/aarch64-linux-gnu", "usr/local/nvidia/lib64",
                        "usr/local/nvidia/lib")
TOOL_DIRS = ("usr/bin", "usr/local/bin", "usr/local/nvidia/bin", "bin")
#: Where a sandbox sees the driver's libraries and tools (the paths NVIDIA's device
#: plugins use); :data:`SANDBOX_ENV` puts them on its search paths.
SANDBOX_LIB_DIR = "/usr/local/nvidia/lib64"
SANDBOX_BIN_DIR = "/usr/local/nvidia/bin"
SANDBOX_ENV = {"LD_LIBRARY_PATH": SANDBOX_LIB_DIR,
               "PATH": f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:"
                       f"{SANDBOX_BIN_DIR}",
               "NVIDIA_VISIBLE_DEVICES": "all"}
#: Bounds on what is read from the host (a driver tree is a few hundred files).
MAX_LIBRARIES = 512
MAX_CONF_FILES = 64
_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")
_GPU_NODE = re.compile(r"^nvidia(\d+)$")
NVIDIA_MAJOR = 195


@dataclass(frozen=True)
class Gpu:
    """One GPU: ``index`` is its position here (NVML's), ``minor`` its ``/dev/nvidia<N>``."""

    index: int
    minor: int
    name: str
    uuid: str = ""
    memory_mib: int = 0


@dataclass(frozen=True)
class GpuHost:
    """What :func:`discover` found. ``reason`` says why there is no GPU, when there is none."""

    gpus: tuple[Gpu, ...] = ()
    driver: str | None = None
    reason: str = ""
    source: str = "none"

    @property
    def present(self) -> bool:
        return bool(self.gpus)


@dataclass(frozen=True)
class DeviceNode:
    """A character device a sandbox gets: its host path and numbers."""

    path: str
    major: int
    minor: int


@dataclass(frozen=True)
class DriverFiles:
    """What one GPU sandbox is given: device nodes, and the driver's files read-only.

    ``libraries`` maps each host file to its name in :data:`SANDBOX_LIB_DIR`; ``links``
    are the soname links (``libcuda.so.1 -> libcuda.so.580.159.04``) made there;
    ``tools`` map host programs into :data:`SANDBOX_BIN_DIR`; ``firmware`` is the
    driver's GSP firmware folder, seen at its own path (the kernel module reads it, but
    the toolkit mounts it and some tools look for it).
    """

    devices: tuple[DeviceNode, ...]
    libraries: tuple[tuple[str, str], ...]
    links: tuple[tuple[str, str], ...] = ()
    tools: tuple[tuple[str, str], ...] = ()
    firmware: str | None = None


def sandbox_env(env: dict[str, str]) -> dict[str, str]:
    """A GPU sandbox's environment: ``env`` (the image's and the request's) with the
    driver's tools last on ``PATH``, its libraries first on ``LD_LIBRARY_PATH``, and
    :data:`SANDBOX_ENV` where unset."""
    merged = {**SANDBOX_ENV, **env}
    if SANDBOX_BIN_DIR not in merged["PATH"].split(":"):
        merged["PATH"] = f"{merged['PATH']}:{SANDBOX_BIN_DIR}".lstrip(":")
    # The driver's libraries first: an image's own libcuda (of another driver version)
    # cannot talk to the host's kernel module.
    libs = [p for p in merged["LD_LIBRARY_PATH"].split(":") if p and p != SANDBOX_LIB_DIR]
    merged["LD_LIBRARY_PATH"] = ":".join([SANDBOX_LIB_DIR, *libs])
    return merged


def driver_version(root: Path = Path("/")) -> str | None:
    """The loaded kernel module's version (``580.159.04``), or None without one."""
    try:
        text = (root / "proc/driver/nvidia/version").read_text(errors="replace")[:4096]
    except OSError:
        return None
    match = _VERSION.search(text)
    return match.group(1) if match else None


def _char_device(path: Path) -> DeviceNode | None:
    try:
        info = path.stat()
    except OSError:
        return None
    if stat.S_ISCHR(info.st_mode):
        return DeviceNode(str(path), os.major(info.st_rdev), os.minor(info.st_rdev))
    if stat.S_ISREG(info.st_mode):  # a test's stand-in: numbered by its name
        found = _GPU_NODE.match(path.name)
        return DeviceNode(str(path), NVIDIA_MAJOR, int(found.group(1)) if found else 255)
    return None


def gpu_minors(root: Path = Path("/")) -> list[int]:
    """The minor numbers of the ``/dev/nvidia<N>`` nodes present, in order."""
    try:
        names = os.listdir(root / "dev")
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _GPU_NODE.match(n)))


def _nvml_gpus() -> tuple[list[Gpu] | None, str]:
    """GPUs as NVML reports them, or None and why NVML cannot be asked; the reason is
    ``driver <version>`` when NVML answered (the driver version it reports)."""
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError and OSError alike: no NVML here
        return None, f"NVML did not start ({exc})"
    try:
        gpus = []
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        for index in range(min(int(pynvml.nvmlDeviceGetCount()), 64)):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(Gpu(index=index, minor=int(pynvml.nvmlDeviceGetMinorNumber(handle)),
                            name=_text(name), uuid=_text(uuid),
                            memory_mib=int(memory.total) // (1024 * 1024)))
        return gpus, f"driver {driver}"
    except Exception as exc:  # noqa: BLE001
        return None, f"NVML failed listing GPUs ({exc})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 - already shut down: nothing to undo
            pass


def _text(value: Any) -> str:
    return (value.decode(errors="replace") if isinstance(value, bytes) else str(value))[:96]


def discover(root: Path = Path("/"), *, nvml: bool = True) -> GpuHost:
    """The GPUs of the host whose root folder is ``root``. Never raises: no GPU, and why.

    NVML is asked only when ``nvml`` and ``root`` is ``/`` (it reads the real host).
    """
    driver = driver_version(root)
    minors = gpu_minors(root)
    if nvml and root == Path("/"):
        gpus, why = _nvml_gpus()
        if driver is None and why.startswith("driver "):  # no /proc/driver (a gVisor host)
            driver = why.removeprefix("driver ") or None
        if gpus and driver is not None:
            present = [g for g in gpus if g.minor in minors]
            return GpuHost(tuple(present), driver, "" if present else
                           "NVML lists GPUs but none has a /dev/nvidia<N> node", "nvml")
    else:
        why = "NVML not asked"
    if not minors:
        if driver is None:
            return GpuHost((), None, "no NVIDIA driver is loaded (/proc/driver/nvidia/version "
                           "is missing) and no /dev/nvidia<N> device node exists")
        return GpuHost((), driver, f"driver {driver} is loaded but no /dev/nvidia<N> device "
                       "node exists (run nvidia-modprobe, or `nvidia-smi` once as root)")
    if driver is None:
        return GpuHost((), None, "/dev/nvidia<N> nodes exist but no NVIDIA driver is loaded "
                       "(/proc/driver/nvidia/version is missing)")
    gpus = [Gpu(index=i, minor=m, name=f"nvidia{m}") for i, m in enumerate(minors)]
    return GpuHost(tuple(gpus), driver, "", f"device nodes ({why})")


def library_dirs(root: Path = Path("/")) -> list[Path]:
    """The folders the dynamic linker searches, under ``root``: those ``etc/ld.so.conf``
    names (its ``include`` globs followed, bounded), then glibc's and NVIDIA's usual ones."""
    seen: list[str] = []
    pending = [root / "etc/ld.so.conf"]
    read = 0
    while pending and read < MAX_CONF_FILES:
        conf = pending.pop(0)
        read += 1
        try:
            lines = conf.read_text(errors="replace")[:65536].splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line.startswith("include"):
                pattern = line.split(None, 1)[1] if len(line.split(None, 1)) == 2 else ""
                if pattern.startswith("/"):
                    pending += [Path(p) for p in sorted(glob.glob(
                        str(root / pattern.lstrip("/"))))[:MAX_CONF_FILES]]
            elif line.startswith("/"):
                seen.append(line.lstrip("/").rstrip("/"))
    seen += DEFAULT_LIBRARY_DIRS
    result: list[Path] = []
    for relative in seen:
        path = root / relative
        if path.is_dir() and path.resolve() not in {p.resolve() for p in result}:
            result.append(path)
    return result


def driver_files(gpus: tuple[Gpu, ...], driver: str, root: Path = Path("/")) -> DriverFiles:
    """The device nodes and driver files a sandbox given ``gpus`` needs (host paths)."""
    devices = []
    for name in CONTROL_DEVICES:
        node = _char_device(root / "dev" / name)
        if node is not None:
            devices.append(node)
    for gpu in gpus:
        node = _char_device(root / "dev" / f"nvidia{gpu.minor}")
        if node is None:
            raise FileNotFoundError(f"/dev/nvidia{gpu.minor} is missing")
        devices.append(node)
    suffix = f".so.{driver}"
    libraries: dict[str, str] = {}
    links: dict[str, str] = {}
    for folder in library_dirs(root):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if (name.startswith("lib") and name.endswith(suffix) and name not in libraries.values()
                    and len(libraries) < MAX_LIBRARIES and (folder / name).is_file()
                    and not (folder / name).is_symlink()):
                libraries[str(folder / name)] = name
        for name in names:  # soname links to a library found: libcuda.so.1 -> ...
            path = folder / name
            if name.startswith("lib") and path.is_symlink() and name not in links:
                target = os.readlink(path)
                if "/" not in target and target.endswith(suffix) and \
                        str(folder / target) in libraries:
                    links[name] = target
    tools: dict[str, str] = {}
    for name in DRIVER_TOOLS:
        for tool_dir in TOOL_DIRS:
            tool = root / tool_dir / name
            if tool.is_file() and name not in tools.values():
                tools[str(tool.resolve())] = name
                break
    firmware = root / "lib/firmware/nvidia" / driver
    return DriverFiles(devices=tuple(devices), libraries=tuple(sorted(libraries.items())),
                       links=tuple(sorted(links.items())), tools=tuple(sorted(tools.items())),
                       firmware=str(firmware) if firmware.is_dir() else None)


@dataclass(frozen=True)
class GpuUsage:
    """One GPU's load now: percent of time a kernel ran, and memory in use."""

    utilization_percent: int
    memory_used_bytes: int
    memory_total_bytes: int


def usage(minors: tuple[int, ...]) -> dict[int, GpuUsage]:
    """NVML's readings of the GPUs with these minor numbers; empty without NVML."""
    if not minors:
        return {}
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: no readings
        return {}
    result = {}
    try:
        for index in range(min(int(pynvml.nvmlDeviceGetCount()), 64)):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            minor = int(pynvml.nvmlDeviceGetMinorNumber(handle))
            if minor in minors:
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                result[minor] = GpuUsage(int(rates.gpu), int(memory.used), int(memory.total))
    except Exception:  # noqa: BLE001, S110 - a reading that fails is left out
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110
            pass
    return result
