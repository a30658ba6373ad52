"""gVisor checkpoint/restore as a way to start pre-warmed interpreters, measured bare.

Two workloads. An idle python (it only marks itself ready): the base cost of pausing a
sandbox to disk and resuming or forking it. And a candidate for "heavy imports already done
at create" besides a warm kernel in a pooled sandbox: one Python that imported numpy, pandas
and matplotlib, checkpointed once and restored into each new sandbox (every restore is an
identical clone: a fork primitive). Measured with bare runsc on the image's rootfs, as the
other bare primitives, for each workload:

* cold: ``runsc run --detach`` of the python until it marked itself ready (a file in its
  ``/dev/shm``, polled with ``runsc exec`` every 20 ms);
* ``runsc checkpoint --image-path`` of that running sandbox (which ends it);
* ``runsc restore --detach`` of the image into a fresh sandbox, then its first command
  (``runsc exec /bin/true``), twice per image: two clones of one checkpoint.

Every sandbox has its own state directory under a temporary folder; whatever still names
that folder is killed and the folder deleted, on errors and Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from corral.api.errors import InternalError

from . import primitives
from .stats import Row, RuntimeResult, Stat

WARM_PYTHON = ["/usr/bin/python3", "-c",
               "import numpy, pandas, matplotlib, time\n"
               "open('/dev/shm/ready', 'w').close()\n"
               "time.sleep(86400)"]
IDLE_PYTHON = ["/usr/bin/python3", "-c",
               "import time\n"
               "open('/dev/shm/ready', 'w').close()\n"
               "time.sleep(86400)"]
#: (row key suffix, what the rows call it, the python it runs)
WORKLOADS = (("_idle", "idle python", IDLE_PYTHON),
             ("", "python, pandas imported", WARM_PYTHON))
READY_TIMEOUT = 180.0
STEP_TIMEOUT = 60.0
CLONES = 2


def measure_checkpoint(rootfs: Path, iterations: int, warmup: int, result: RuntimeResult,
                       progress: Callable[[str], None], stop: threading.Event) -> None:
    """Add the checkpoint/restore rows of each workload to ``result`` (gvisor only); stops
    between rounds once ``stop`` is set."""
    for suffix, name, argv in WORKLOADS:
        if not stop.is_set():
            _measure_workload(rootfs, iterations, warmup, result, progress, stop,
                              suffix, name, argv)


def _measure_workload(rootfs: Path, iterations: int, warmup: int, result: RuntimeResult,
                      progress: Callable[[str], None], stop: threading.Event,
                      suffix: str, name: str, argv: list[str]) -> None:
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("cold", "checkpoint", "restore", "first", "clone")}
    sizes: list[float] = []
    with _workdir() as work, primitives.BareRunsc(rootfs) as runsc:
        bundle = work / "bundle"
        bundle.mkdir()
        config = runsc.config(argv, bundle)
        (bundle / "config.json").write_text(json.dumps(config))
        rounds = warmup + iterations
        for i in range(rounds):
            if stop.is_set():
                return
            step = f"warm-up {i + 1}/{warmup}" if i < warmup else f"{i + 1 - warmup}/{iterations}"
            progress(f"gvisor: runsc checkpoint/restore of an {name}, {step}"
                     if name.startswith("idle") else
                     f"gvisor: runsc checkpoint/restore of a {name}, {step}")
            measured = _one_round(runsc, bundle, work / f"round-{i}")
            if i >= warmup:
                for key, value in measured.items():
                    if key == "image_mib":
                        sizes.append(value)
                    else:
                        samples[key].append(value)
    cold = Stat(tuple(samples["cold"]))
    cold_label = f"runsc run python3 → ready ({name})"
    result.rows += [
        Row(f"checkpoint{suffix}", f"runsc checkpoint ({name})",
            Stat(tuple(samples["checkpoint"])), extra={"image_mib": max(sizes)}),
        Row(f"restore{suffix}", f"runsc restore ({name}; detached, running)",
            Stat(tuple(samples["restore"]))),
        Row(f"restore_first_command{suffix}", f"runsc restore → first command ({name})",
            Stat(tuple(samples["first"])), cold_label, cold),
        Row(f"restore_clone{suffix}",
            f"restore of the same checkpoint, clone {CLONES} → first command ({name})",
            Stat(tuple(samples["clone"])), cold_label, cold),
    ]


def _one_round(runsc: primitives.BareRunsc, bundle: Path, work: Path) -> dict[str, float]:
    """Start, checkpoint, and restore ``CLONES`` times; every sandbox killed at the end."""
    work.mkdir()
    image = work / "image"
    image.mkdir()
    found: dict[str, float] = {}
    try:
        state = work / "state-0"
        state.mkdir()
        started = time.perf_counter()
        _run(runsc.argv(state, "run", "--detach", "--bundle", str(bundle), "warm-0"),
             "runsc run --detach")
        _wait_ready(runsc, state, "warm-0")
        found["cold"] = time.perf_counter() - started
        started = time.perf_counter()
        _run(runsc.argv(state, "checkpoint", "--image-path", str(image), "warm-0"),
             "runsc checkpoint")
        found["checkpoint"] = time.perf_counter() - started
        found["image_mib"] = sum(p.stat().st_size for p in image.iterdir()) / (1024 * 1024)
        for clone in range(1, CLONES + 1):
            state = work / f"state-{clone}"
            state.mkdir()
            container = f"clone-{clone}"
            started = time.perf_counter()
            _run(runsc.argv(state, "restore", "--detach", "--image-path", str(image),
                            "--bundle", str(bundle), container), "runsc restore")
            restored = time.perf_counter()
            _run(runsc.argv(state, "exec", container, "/bin/true"), "runsc exec")
            answered = time.perf_counter()
            _run(runsc.argv(state, "exec", container, "/bin/test", "-e", "/dev/shm/ready"),
                 "checking the restored python's state")
            if clone == 1:
                found["restore"] = restored - started
                found["first"] = answered - started
            else:
                found["clone"] = answered - started
        return found
    finally:
        primitives.kill_naming(str(work))


def _wait_ready(runsc: primitives.BareRunsc, state: Path, container: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    probe = runsc.argv(state, "exec", container, "/bin/test", "-e", "/dev/shm/ready")
    while time.monotonic() < deadline:
        if subprocess.run(probe, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=STEP_TIMEOUT).returncode == 0:
            return
        time.sleep(0.02)
    raise InternalError(f"the bare python was not ready within {READY_TIMEOUT:g} s")


def _run(argv: list[str], what: str) -> None:
    # stderr to a file: a detached sandbox keeps it open, a pipe would never end.
    with tempfile.TemporaryFile() as log:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=log, timeout=STEP_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise InternalError(f"{what} did not finish within {STEP_TIMEOUT:g} s") from exc
        if done.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip()[-1000:]
            raise InternalError(f"{what} failed (exit status {done.returncode}): {tail}")


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-checkpoint-"))
    try:
        yield work
    finally:
        primitives.kill_naming(str(work))
        shutil.rmtree(work, ignore_errors=True)
