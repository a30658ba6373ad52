"""GPUs as a scheduled resource of one node: who holds which, given and taken back.

Each GPU belongs to at most one sandbox at a time (exclusive: GPUs are not shared between
tenants, whose kernels and memory would then sit side by side on one chip). A create that
asks for GPUs takes free ones before its runtime builds anything, or is refused:

* ``invalid_argument`` (400) when this node can never serve it: no GPU, a driver its
  runtime cannot pass through (the error names the driver and runsc's list), no GPU of
  the model asked for, more GPUs than the node has. Retrying does not help.
* ``resource_exhausted`` (429) when the GPUs exist but other sandboxes hold them: stop one,
  or retry later.

A sandbox gives its GPUs back when it stops (for any reason) and when it pauses; a resume
takes the same GPUs again (their device nodes are bound into it) or fails, leaving it
paused, saying which sandbox holds them. A node that adopts its predecessor's sandboxes
takes their GPUs as their records name them (:meth:`GpuScheduler.adopt`), before any new
create can.
"""

from __future__ import annotations

import threading
from pathlib import Path

from corral.api.errors import InvalidArgumentError, ResourceExhaustedError
from corral.api.resources import Resources
from corral.runtime import Availability, Runtime
from corral.runtime.gpu import DriverFiles, Gpu, GpuHost, driver_files

#: The key of a sandbox's runtime handle ``extra`` (and so its record) naming its GPUs'
#: minor numbers.
EXTRA_KEY = "gpus"


class GpuScheduler:
    """The GPUs of one node (:func:`corral.runtime.gpu.discover`'s, or a test's) and their
    holders. Thread-safe; every method is cheap (no I/O but :meth:`acquire`'s file scan)."""

    def __init__(self, host: GpuHost, root: Path = Path("/")) -> None:
        self.host = host
        self._root = root
        self._lock = threading.Lock()
        #: minor number -> the sandbox holding it
        self._holders: dict[int, str] = {}

    def holders(self) -> dict[int, str]:
        """Which sandbox holds which GPU (by minor number), now."""
        with self._lock:
            return dict(self._holders)

    def held_by(self, sandbox_id: str) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(m for m, s in self._holders.items() if s == sandbox_id))

    def check(self, resources: Resources, runtime: Runtime) -> list[Gpu]:
        """The GPUs that could ever serve ``resources`` on ``runtime`` here; raises
        InvalidArgumentError saying why none can."""
        host = self.host
        if not host.present:
            raise InvalidArgumentError(f"this node has no GPU a sandbox can be given: "
                                       f"{host.reason}; ask for gpu 0, or use a node with one")
        assert host.driver is not None  # noqa: S101 - present GPUs come with a driver
        problem = runtime.gpu_problem(host.driver)
        if problem is not None:
            raise InvalidArgumentError(f"the {runtime.name} runtime cannot give this sandbox "
                                       f"a GPU: {problem}")
        model = resources.gpu_model
        matching = [g for g in host.gpus
                    if model is None or model.casefold() in g.name.casefold()]
        names = ", ".join(sorted({g.name for g in host.gpus}))
        if not matching:
            raise InvalidArgumentError(f"this node has no {model} GPU (it has: {names})")
        if len(matching) < resources.gpus:
            raise InvalidArgumentError(
                f"gpu asks for {resources.gpus}{' ' + model if model else ''} GPUs; this node "
                f"has {len(matching)} ({names})")
        return matching

    def acquire(self, sandbox_id: str, resources: Resources, runtime: Runtime
                ) -> tuple[tuple[int, ...], DriverFiles] | None:
        """Give ``sandbox_id`` the GPUs ``resources`` asks for (None when it asks for none):
        their minor numbers and the files its runtime binds in. Undo with :meth:`release`."""
        if resources.gpus == 0:
            return None
        matching = self.check(resources, runtime)
        with self._lock:
            free = [g for g in matching if g.minor not in self._holders]
            if len(free) < resources.gpus:
                busy = len({self._holders[g.minor] for g in matching
                            if g.minor in self._holders})
                raise ResourceExhaustedError(
                    f"gpu: {len(matching) - len(free)} of this node's {len(matching)} "
                    f"matching GPUs are held by {busy} other sandbox(es) and {resources.gpus} "
                    "are asked for; stop or pause one of them, or retry later")
            taken = tuple(g.minor for g in free[:resources.gpus])
            for minor in taken:
                self._holders[minor] = sandbox_id
        try:
            return taken, self.files(taken)
        except BaseException:
            self.release(sandbox_id)
            raise

    def files(self, minors: tuple[int, ...]) -> DriverFiles:
        """What a sandbox holding the GPUs ``minors`` is given (the driver's files now)."""
        assert self.host.driver is not None  # noqa: S101 - only called for present GPUs
        gpus = tuple(g for g in self.host.gpus if g.minor in minors)
        try:
            return driver_files(gpus, self.host.driver, self._root)
        except OSError as exc:
            raise InvalidArgumentError(f"the GPU's driver files cannot be read: {exc}; "
                                       "check the driver's installation (`corral doctor`)"
                                       ) from exc

    def take_back(self, sandbox_id: str, minors: tuple[int, ...]) -> None:
        """Hold ``minors`` for ``sandbox_id`` again (a resume, an adoption); raises
        ResourceExhaustedError naming the holder if another sandbox holds one of them."""
        with self._lock:
            for minor in minors:
                holder = self._holders.get(minor)
                if holder is not None and holder != sandbox_id:
                    raise ResourceExhaustedError(
                        f"sandbox {sandbox_id}'s GPU (/dev/nvidia{minor}) is held by "
                        f"{holder} since its pause; it stays paused: stop {holder} or "
                        "wait for it to end, then resume again")
            for minor in minors:
                self._holders[minor] = sandbox_id

    adopt = take_back

    def release(self, sandbox_id: str) -> tuple[int, ...]:
        """Give back every GPU ``sandbox_id`` holds; returns their minor numbers."""
        with self._lock:
            given = tuple(m for m, s in self._holders.items() if s == sandbox_id)
            for minor in given:
                del self._holders[minor]
        return given


def doctor_rows(host: GpuHost, runtimes: dict[str, tuple[Runtime, Availability]]
             ) -> list[tuple[str, str]]:
    """The GPUs table: each GPU, the driver, and per runtime whether a sandbox can be
    given one here and, if not, why (the words a create with ``gpu`` would get)."""
    if not host.present:
        return [("GPUs", f"none: {host.reason}"),
                *((f"{name} sandboxes", "no GPU here") for name in runtimes)]
    rows = [(f"GPU {g.index}", f"{g.name}" + (f", {g.memory_mib} MiB" if g.memory_mib else "")
             + f", /dev/nvidia{g.minor}" + (f", {g.uuid}" if g.uuid else ""))
            for g in host.gpus]
    rows.append(("driver", f"{host.driver} (found through {host.source})"))
    assert host.driver is not None  # noqa: S101 - present GPUs come with a driver
    for name, (runtime, status) in runtimes.items():
        problem = (runtime.gpu_problem(host.driver) if status.ok
                   else f"the runtime does not work here ({status.detail})")
        rows.append((f"{name} sandboxes", "[green]can have a GPU[/]" if problem is None
                     else f"[red]cannot have a GPU[/]: {problem}"))
    return rows


def recorded(extra: dict[str, object]) -> tuple[int, ...]:
    """The GPUs a sandbox's handle ``extra`` (or record) names; () for none or garbage."""
    value = extra.get(EXTRA_KEY)
    if not isinstance(value, list) or len(value) > 64:
        return ()
    return tuple(m for m in value if isinstance(m, int) and not isinstance(m, bool)
                 and 0 <= m < 256)
