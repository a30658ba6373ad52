"""The image rows: a cold build, a rebuild after changing its last step, and create → first
command from a built image, each beside a bare primitive measured in the same run.

Every build runs on a node of its own (a scratch data dir beside the benchmark's node, so a
fresh built-image store), on the runtime measured, with **no registry**: its settings name
none, so no step sandbox gets a network at all (:meth:`Registries.policy` of nothing is a
disabled policy). The image built has three steps, each of which runs a sandbox and leaves
a layer (:data:`STEPS`): a ``run`` step writing a file, a ``copy`` of a small generated
context (:data:`CONTEXT_FILES` files of :data:`CONTEXT_FILE_BYTES` random bytes, made in a
temporary folder deleted afterwards) and a ``workdir`` step.

* ``image_build_cold``: the three-step build on a node started for it alone (its start and
  stop are not timed), beside three bare runs (``runsc run`` / ``bwrap``) of a shell that
  writes one file and syncs (:data:`BARE_STEP`): a sandbox per step doing a step's work,
  with none of the builder's layer capture (copying the changes out, neutralising them,
  the manifest). Both are summed per round, interleaved round by round.
* ``image_rebuild_last_step``: on one node that built the image, the same build with the
  ``workdir`` step changed (a new path each round), beside one such bare run; the label
  and ``extra`` say how many steps were cached.
* ``image_create_custom``: create → first command (``true``) from the built image (three
  layers), beside the same from the base image (``python``) on the same node, the order
  swapped every round; with ``many_layers``, the same for an image of that many ``run``
  steps (``image_create_custom_<N>_layers``). The first ratio is the figure the images issue
  judges: within 10 %.

Each build runs under :data:`BUILD_TIMEOUT`, each create under :data:`CREATE_TIMEOUT`, and
each measure stops taking rounds once it has run :data:`MEASURE_BUDGET` seconds (with a
note). The scratch nodes, their sandboxes and their data dirs are gone afterwards, on
errors too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from corral.api.errors import InternalError
from corral.api.image_spec import ImageSpec
from corral.node import Node
from corral.node.builder import BuildEvent, Registries
from corral.node.layers import Manifest

from ._scratch import scratch_dir
from .stats import Row, RuntimeResult, Stat, out_of_time, round_label

SANDBOX_LIFETIME = 600.0
#: Longest one build, one create → first command, and one measure's rounds may take (s).
BUILD_TIMEOUT = 300.0
CREATE_TIMEOUT = 120.0
MEASURE_BUDGET = 300.0
#: The generated build context: this many files of this many random bytes, one folder.
CONTEXT_FILES, CONTEXT_FILE_BYTES = 8, 4096
#: No registry: a build step of a node with these settings gets no network.
NO_REGISTRIES = Registries(apt=(), pip=(), npm=())
#: A bare sandbox's share of one step: a file written to its tmpfs, then ``sync``.
BARE_STEP = ["/bin/sh", "-c",
             "mkdir -p /dev/shm/corral-bench && echo built > /dev/shm/corral-bench/built"
             " && sync"]

Progress = Callable[[str], None]
BareRun = Callable[[list[str]], float]


def steps(workdir: str = "/opt/corral-bench/work") -> list[dict[str, object]]:
    """The three steps of the measured image, each a sandbox and a layer."""
    return [
        {"kind": "run", "command": "mkdir -p /opt/corral-bench && echo built > "
                                   "/opt/corral-bench/built"},
        {"kind": "copy", "sources": ["."], "destination": "/opt/corral-bench/app"},
        {"kind": "workdir", "path": workdir},
    ]


def layered_steps(count: int) -> list[dict[str, object]]:
    """``count`` run steps, each writing a file of its own: ``count`` layers."""
    return [{"kind": "run", "command": f"mkdir -p /opt/corral-bench && echo {i} > "
                                       f"/opt/corral-bench/layer-{i}"} for i in range(count)]


@dataclasses.dataclass(frozen=True)
class ImageBench:
    """What the image rows measure with: the base image, counts and the bare primitive.

    ``build_iterations`` 0 leaves out the build rows (the quick suite); ``many_layers`` 0
    the many-layer create row."""

    image: str
    iterations: int
    build_iterations: int
    warmup: int
    many_layers: int
    bare: BareRun
    bare_label: str


async def measure_images(node: Node, bench: ImageBench, result: RuntimeResult,
                         progress: Progress) -> None:
    """Add the ``image_*`` rows to ``result`` (its runtime's); ``node`` is the benchmark's,
    whose settings the scratch nodes copy."""
    with _context() as context:
        if bench.build_iterations > 0:
            await _measure_cold(node, bench, context, result, progress)
        async with build_node(node) as fresh:
            progress(f"{result.runtime}: building a {len(steps())}-step image")
            built, _ = await _build(fresh, steps(), bench.image, context, result.runtime)
            if bench.build_iterations > 0:
                await _measure_rebuild(fresh, bench, context, result, progress)
            await _measure_custom(fresh, bench, built, "image_create_custom", result,
                                  progress)
            if bench.many_layers > 0:
                progress(f"{result.runtime}: building a {bench.many_layers}-layer image")
                many, seconds = await _build(fresh, layered_steps(bench.many_layers),
                                             bench.image, None, result.runtime)
                await _measure_custom(fresh, bench, many,
                                      f"image_create_custom_{bench.many_layers}_layers",
                                      result, progress, {"build_seconds": seconds})


async def _measure_cold(node: Node, bench: ImageBench, context: Path, result: RuntimeResult,
                        progress: Progress) -> None:
    name = result.runtime
    count = len(steps())
    corral: list[float] = []
    bare: list[float] = []
    rounds = bench.warmup + bench.build_iterations
    deadline = time.monotonic() + MEASURE_BUDGET
    for i in range(rounds):
        if out_of_time(deadline, corral, i, rounds, "cold build", result, MEASURE_BUDGET):
            break
        progress(f"{name}: cold image build, {round_label(i, bench.warmup, rounds)}")
        async with build_node(node) as fresh:
            manifest, seconds = await _build(fresh, steps(), bench.image, context, name)
        if len(manifest.layers) != count:
            raise InternalError(f"the {count}-step image has {len(manifest.layers)} layers")
        floor = 0.0
        for _ in range(count):
            floor += await asyncio.to_thread(bench.bare, BARE_STEP)
        if i >= bench.warmup:
            corral.append(seconds)
            bare.append(floor)
    result.rows.append(Row(
        "image_build_cold", f"cold image build, {count} steps (run, copy, workdir)",
        _stat(corral), f"{count} × {bench.bare_label} sh writing a file + sync", _stat(bare),
        extra={"steps": count, "layers": count}))


async def _measure_rebuild(node: Node, bench: ImageBench, context: Path,
                           result: RuntimeResult, progress: Progress) -> None:
    """The build again with its last step changed (a new workdir every round)."""
    name = result.runtime
    count = len(steps())
    corral: list[float] = []
    bare: list[float] = []
    cached: list[int] = []
    rounds = bench.warmup + bench.build_iterations
    deadline = time.monotonic() + MEASURE_BUDGET
    for i in range(rounds):
        if out_of_time(deadline, corral, i, rounds, "rebuild", result, MEASURE_BUDGET):
            break
        progress(f"{name}: image rebuild, last step changed, "
                 f"{round_label(i, bench.warmup, rounds)}")
        events: list[BuildEvent] = []
        _, seconds = await _build(node, steps(f"/opt/corral-bench/work-{i}"), bench.image,
                                  context, name, events.append)
        floor = await asyncio.to_thread(bench.bare, BARE_STEP)
        if i >= bench.warmup:
            corral.append(seconds)
            bare.append(floor)
            cached.append(sum(e.cached for e in events if e.kind == "step"))
    hits = min(cached)
    result.rows.append(Row(
        "image_rebuild_last_step", f"rebuild, last step changed ({hits}/{count} steps cached)",
        _stat(corral), f"{bench.bare_label} sh writing a file + sync", _stat(bare),
        extra={"steps": count, "steps_cached": hits}))


async def _measure_custom(node: Node, bench: ImageBench, image: Manifest, key: str,
                          result: RuntimeResult, progress: Progress,
                          extra: dict[str, float | str] | None = None) -> None:
    """create → first command from ``image`` beside the same from the base image, the
    order swapped every round."""
    name = result.runtime
    layers = len(image.layers)
    samples: tuple[list[float], list[float]] = ([], [])
    refs = (image.id, bench.image)
    rounds = bench.warmup + bench.iterations
    deadline = time.monotonic() + MEASURE_BUDGET
    for i in range(rounds):
        if out_of_time(deadline, samples[0], i, rounds, key, result, MEASURE_BUDGET):
            break
        progress(f"{name}: create → first command, {layers}-layer image, "
                 f"{round_label(i, bench.warmup, rounds)}")
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            elapsed = await _create_to_first(node, name, refs[which])
            if i >= bench.warmup:
                samples[which].append(elapsed)
    result.rows.append(Row(
        key, f"create → first command, built image ({layers} layers)", _stat(samples[0]),
        f"create → first command, {bench.image} image", _stat(samples[1]),
        extra={"layers": layers, **(extra or {})}))


async def _build(node: Node, step_list: list[dict[str, object]], base: str,
                 context: Path | None, runtime: str,
                 on_event: Callable[[BuildEvent], None] | None = None
                 ) -> tuple[Manifest, float]:
    """Build ``step_list`` on ``base``: the manifest and the build's seconds."""
    spec = ImageSpec.model_validate({"base": base, "steps": step_list})
    started = time.perf_counter()
    try:
        async with asyncio.timeout(BUILD_TIMEOUT):
            manifest = await node.build_image(spec, context=context, runtime=runtime,
                                              on_event=on_event)
    except TimeoutError:
        raise InternalError(f"an image build did not finish within {BUILD_TIMEOUT:g} s "
                            f"({runtime})") from None
    return manifest, time.perf_counter() - started


async def _create_to_first(node: Node, runtime: str, image: str) -> float:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CREATE_TIMEOUT):
            sandbox = await node.create(image, runtime=runtime, timeout=SANDBOX_LIFETIME)
            try:
                reply = await sandbox.commands.run(["true"])
                elapsed = time.perf_counter() - started
            finally:
                await asyncio.shield(sandbox.kill())
    except TimeoutError:
        raise InternalError(f"create → first command took over {CREATE_TIMEOUT:g} s "
                            f"({runtime}, image {image[:19]})") from None
    if reply.exit_code != 0:
        raise InternalError(f"`true` exited {reply.exit_code} in a {runtime} sandbox of "
                            f"image {image[:19]}")
    return elapsed


@contextlib.asynccontextmanager
async def build_node(node: Node) -> AsyncIterator[Node]:
    """A node on a fresh scratch data dir (so a fresh built-image store), with ``node``'s
    settings but no pool and no registry; stopped and its data dir deleted afterwards."""
    with scratch_dir("corral-bench-build-", node.settings.image_dir) as data_dir:
        settings = dataclasses.replace(node.settings, data_dir=data_dir, pools=(),
                                       registries=NO_REGISTRIES, orphan_grace=0)
        async with Node(settings) as fresh:
            yield fresh


@contextlib.contextmanager
def _context() -> Iterator[Path]:
    """The build context the copy step takes: small random files, a folder among them."""
    with tempfile.TemporaryDirectory(prefix="corral-bench-context-") as tmp:
        root = Path(tmp)
        (root / "sub").mkdir()
        for i in range(CONTEXT_FILES):
            folder = root / "sub" if i % 2 else root
            (folder / f"file-{i}.bin").write_bytes(os.urandom(CONTEXT_FILE_BYTES))
        yield root


def _stat(samples: list[float]) -> Stat:
    if not samples:
        raise InternalError("an image measure has no samples (iterations must be at least 1)")
    return Stat(tuple(samples))

