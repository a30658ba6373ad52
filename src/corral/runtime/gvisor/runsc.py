"""Which runsc the gvisor runtime runs, on which platform, and why.

The binary: ``scripts/install`` fetches a pinned gVisor build (Debian trixie's ``runsc``
package, :data:`PINNED_VERSION`, checked against its sha256) into :data:`MANAGED`, next to
nothing of the system's; when that failed, the system's ``runsc`` (Debian bookworm's 2022
build) is used, with a warning. ``CORRAL_RUNSC`` names another binary.

The platform: ``systrap`` (syscalls trapped by seccomp and patched in place: 10-100x cheaper
than ``ptrace`` when a CPU is free) wherever a one-time probe runs a no-op sandbox on it;
``ptrace`` otherwise (the 2022 build knows no systrap). ``CORRAL_GVISOR_PLATFORM`` (or
``corral serve --gvisor-platform``) forces one; a platform that fails its probe is refused
with the probe's words. ``kvm`` is not offered: on hosts whose ``/dev/kvm`` cannot boot a
guest (this project's machines) runsc hangs on it and leaves cgroups and files behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from corral.api.errors import InvalidArgumentError

#: Where ``scripts/install`` puts the pinned runsc.
MANAGED = Path("/usr/local/lib/corral/gvisor/runsc")
#: The version ``scripts/install`` fetches (``runsc --version`` says it).
PINNED_VERSION = "0.0~20240729.0"
#: The command that installs it.
INSTALL_COMMAND = "scripts/install"
PLATFORMS = ("systrap", "ptrace")
#: Tried in this order when no platform is forced.
PREFERENCE = ("systrap", "ptrace")
#: Seconds a probe may take (a working platform answers in well under one).
PROBE_TIMEOUT = 20.0
_REFUSED = {"kvm": "kvm is not offered: runsc hangs on it on hosts whose KVM cannot boot a "
                   "guest, leaving cgroups and files behind"}


@dataclass(frozen=True)
class GvisorOptions:
    """The gvisor runtime's settings. Read once, at start.

    Attributes:
        runsc: the runsc binary (``CORRAL_RUNSC``); default: the pinned one
            ``scripts/install`` fetched, else ``runsc`` on PATH.
        platform: ``systrap`` or ``ptrace`` (``CORRAL_GVISOR_PLATFORM``); default: the first
            of :data:`PREFERENCE` whose probe passes.
    """

    runsc: str | None = None
    platform: str | None = None

    def __post_init__(self) -> None:
        if self.platform is not None and self.platform not in PLATFORMS:
            why = _REFUSED.get(self.platform, f"unknown gVisor platform {self.platform!r:.40}")
            raise InvalidArgumentError(f"{why}; choose one of: {', '.join(PLATFORMS)}")

    @classmethod
    def from_env(cls) -> GvisorOptions:
        return cls(runsc=os.environ.get("CORRAL_RUNSC") or None,
                   platform=os.environ.get("CORRAL_GVISOR_PLATFORM") or None)


@dataclass(frozen=True)
class Runsc:
    """A runsc binary that answered ``--version``."""

    path: str
    version: str
    #: The pinned build ``scripts/install`` manages.
    managed: bool

    @property
    def pinned(self) -> bool:
        return self.version == PINNED_VERSION

    def knows(self, flag: str) -> bool:
        """Whether this build has the global flag ``flag`` (``runsc flags``); raises
        :class:`RunscError` when the build cannot list its flags (a wall that depends on a
        flag must never be dropped because a listing failed)."""
        return flag in _flags(self.path)


@dataclass(frozen=True)
class Platform:
    """The platform chosen, and why (and why not the others)."""

    name: str
    why: str


class RunscError(Exception):
    """No usable runsc, or no usable platform; the message says what is wrong, ``fix``
    what to do."""

    def __init__(self, message: str, fix: str = INSTALL_COMMAND) -> None:
        super().__init__(message)
        self.fix = fix


def locate(explicit: str | None = None) -> Runsc:
    """The runsc to use: ``explicit``, else the managed one, else ``runsc`` on PATH."""
    managed = explicit is None and os.path.lexists(MANAGED)
    name = explicit or (str(MANAGED) if managed else "runsc")
    path = shutil.which(name)
    if path is None:
        what = "is missing or not executable" if "/" in name else "is not installed"
        raise RunscError(f"runsc (gVisor) {name} {what}; run {INSTALL_COMMAND}")
    return Runsc(path=path, version=_version(path), managed=managed)


def resolve(options: GvisorOptions) -> tuple[Runsc, Platform]:
    """The binary and the platform ``options`` ask for; raises :class:`RunscError`."""
    runsc = locate(options.runsc)
    runsc.knows("directfs")  # the flags the runtime depends on are listed now, or never
    return runsc, choose(runsc, options.platform)


@functools.cache
def _version(path: str) -> str:
    """``runsc --version``'s version; a binary that cannot say it is corrupt or foreign."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunscError(f"{path} does not run ({exc}); reinstall it: {INSTALL_COMMAND}"
                         ) from None
    first = done.stdout.splitlines()[0] if done.stdout else ""
    if done.returncode != 0 or not first.startswith("runsc version "):
        raise RunscError(f"{path} is not a working runsc (it said {first or done.stderr!r:.80}); "
                         f"reinstall it: {INSTALL_COMMAND}")
    return first.removeprefix("runsc version ").strip()


@functools.cache  # a failure raises, and is not cached
def _flags(path: str) -> frozenset[str]:
    try:
        done = subprocess.run([path, "flags"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunscError(f"{path} cannot list its flags ({exc}); reinstall it: "
                         f"{INSTALL_COMMAND}") from None
    listing = done.stdout + done.stderr  # the Go flag package prints to stderr
    found = frozenset(line.split()[0].lstrip("-") for line in listing.splitlines()
                      if line.startswith("  -"))
    if "platform" not in found:
        raise RunscError(f"{path} listed no flags it is known to have; reinstall it: "
                         f"{INSTALL_COMMAND}")
    return found


@functools.cache  # a failure raises, and is not cached
def nvproxy_drivers(path: str) -> tuple[str, ...]:
    """The NVIDIA driver versions this runsc's nvproxy supports
    (``runsc nvproxy list-supported-drivers``); empty for a build without nvproxy."""
    if "nvproxy" not in _flags(path):
        return ()
    try:
        done = subprocess.run([path, "nvproxy", "list-supported-drivers"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunscError(f"{path} cannot list nvproxy's drivers ({exc})") from None
    if done.returncode != 0:
        return ()
    versions = [line.strip() for line in done.stdout.splitlines()[:256]]
    return tuple(sorted((v for v in versions if v and v.replace(".", "").isdigit()),
                        key=lambda v: tuple(int(p) for p in v.split("."))))


_PASSED: set[tuple[str, str]] = set()


def probe(path: str, platform: str) -> str | None:
    """Run a no-op sandbox on ``platform``: None if it works, else what went wrong.

    ``runsc do``, no network, no cgroups, a private state dir, its own process group (all
    of it killed at the timeout); ~0.1-0.3 s. A pass is remembered for the process; a
    failure is tried again next time (a busy host can time a probe out).
    """
    if (path, platform) in _PASSED:
        return None
    with tempfile.TemporaryDirectory(prefix="corral-probe-") as state:
        argv = [path, "--root", state, f"--platform={platform}", "--network=none",
                "--ignore-cgroups", "do", "/bin/true"]
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)
        except OSError as exc:
            return str(exc)
        try:
            _, stderr = process.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return f"no answer within {PROBE_TIMEOUT:g} s"
    if process.returncode == 0:
        _PASSED.add((path, platform))
        return None
    lines = [line for line in stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit status {process.returncode}")[:300]


def choose(runsc: Runsc, forced: str | None) -> Platform:
    """The platform to run sandboxes on (see the module docstring)."""
    if forced is not None:
        problem = probe(runsc.path, forced)
        if problem is not None:
            raise RunscError(f"gVisor platform {forced} (CORRAL_GVISOR_PLATFORM) does not work "
                             f"with runsc {runsc.version}: {problem}",
                             "unset CORRAL_GVISOR_PLATFORM (or --gvisor-platform) to let "
                             "Corral choose, or force another")
        return Platform(forced, "forced by CORRAL_GVISOR_PLATFORM / --gvisor-platform")
    refused: list[str] = []
    for name in PREFERENCE:
        problem = probe(runsc.path, name)
        if problem is None:
            why = "its probe passed" + (f"; not {', '.join(refused)}" if refused else "")
            return Platform(name, why)
        refused.append(f"{name}: {problem}")
    raise RunscError(f"no gVisor platform works with runsc {runsc.version}: "
                     + "; ".join(refused))
