"""The code interpreter's figures, per runtime, each beside its bare primitive.

* create → first ``run_code("1+1")`` result (a new sandbox: the kernel bridge and an
  ipykernel start on the way), beside create → first ``python3 -c 'print(1+1)'`` command
  on another new sandbox, interleaved in the same run;
* a warm ``run_code("1+1")`` round trip on a running context, beside the kernel's own round
  trip for the same cells (execute request sent → idle status received, timed by the kernel
  bridge inside the sandbox with the Jupyter protocol): the difference is what the agent
  channel, the bridge's JSON lines and the node add.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from corral.api.errors import InternalError
from corral.node import Node

from .stats import Row, RuntimeResult, Stat

SANDBOX_LIFETIME = 600.0
PYTHON_ONE_PLUS_ONE = ["python3", "-c", "print(1+1)"]
JUPYTER_CLIENT = ("/usr/lib/python3/dist-packages/jupyter_client",
                  "/usr/local/lib/python3/dist-packages/jupyter_client")


async def measure_code(node: Node, image: str, rootfs: Path, iterations: int,
                       warm_iterations: int, warmup: int, result: RuntimeResult,
                       progress: Callable[[str], None], cold_warmup: int | None = None) -> None:
    """Add the code interpreter's rows to ``result`` (its runtime's), or a note saying why
    not: the image must have Jupyter (``jupyter_client`` and ``ipykernel``).

    ``cold_warmup``: unrecorded cold starts before the recorded ones (default ``warmup``).
    """
    name = result.runtime
    if not any((rootfs / lib.lstrip("/")).is_dir() for lib in JUPYTER_CLIENT):
        result.notes.append(f"image {image} has no jupyter_client: run_code skipped")
        return
    first: list[float] = []
    command: list[float] = []
    cold = warmup if cold_warmup is None else cold_warmup
    for i in range(cold + iterations):
        progress(f"{name}: create → first run_code, {_step(i, cold, cold + iterations)}")
        code_time = await _create_to_first(node, name, image, code=True)
        command_time = await _create_to_first(node, name, image, code=False)
        if i >= cold:
            first.append(code_time)
            command.append(command_time)
    result.rows.append(Row("create_to_first_run_code", "create → first run_code result",
                           Stat(tuple(first)), "create → first python3 command",
                           Stat(tuple(command))))

    async with await node.create(image, runtime=name, timeout=SANDBOX_LIFETIME) as sandbox:
        trips: list[float] = []
        kernel: list[float] = []
        rounds = warmup * 5 + warm_iterations
        for i in range(rounds):
            if i % 10 == 0:
                progress(f"{name}: warm run_code, {_step(i, warmup * 5, rounds)}")
            started = time.perf_counter()
            execution = await sandbox.code.run("1+1")
            elapsed = time.perf_counter() - started
            inside = sandbox.code.last_kernel_seconds
            if execution.text != "2" or inside is None:
                raise InternalError(f"run_code('1+1') answered {execution!r:.300} in a {name} "
                                    "sandbox")
            if i >= warmup * 5:
                trips.append(elapsed)
                kernel.append(inside)
        result.rows.append(Row("warm_run_code", "warm run_code(\"1+1\") round trip",
                               Stat(tuple(trips)), "kernel round trip (in sandbox)",
                               Stat(tuple(kernel))))


async def _create_to_first(node: Node, runtime: str, image: str, code: bool) -> float:
    started = time.perf_counter()
    sandbox = await node.create(image, runtime=runtime, timeout=SANDBOX_LIFETIME)
    try:
        if code:
            ok = (await sandbox.code.run("1+1")).text == "2"
        else:
            ok = (await sandbox.commands.run(PYTHON_ONE_PLUS_ONE)).stdout == "2\n"
        elapsed = time.perf_counter() - started
    finally:
        await sandbox.kill()
    if not ok:
        raise InternalError(f"1+1 did not answer 2 in a {runtime} sandbox")
    return elapsed


def _step(i: int, warmup: int, rounds: int) -> str:
    if i < warmup:
        return f"warm-up {i + 1}/{warmup}"
    return f"{i + 1 - warmup}/{rounds - warmup}"
