"""The E2B rows: create → first command and the exec round trip through the unmodified
``e2b`` SDK, beside the same through Corral's own SDK, on the benchmark's ``corral serve``.

The E2B SDK cannot share Corral's environment (it pins another ``httpx``), so it runs in a
virtualenv of its own (:data:`E2B_VERSION`, made on first use under the user's cache dir,
or the Python named by ``CORRAL_BENCH_E2B_PYTHON``) as a driver process
(:mod:`corral.bench._e2b_driver`) that the benchmark steps round by round: each round
times Corral's SDK, then the E2B SDK, so host noise weighs on both. Both run the same
command, ``bash -l -c true`` (what every E2B ``commands.run`` runs), as ``user`` in
``/home/user`` (E2B's default), in the same image on the server's default runtime. The
ratio is E2B / Corral: the cost of the compatibility layer (Connect framing, the
background start it needs) and of the E2B SDK's own client.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from corral.api.errors import InternalError
from corral.sdk import AsyncSandbox

from .stats import Row, RuntimeResult, Stat, round_label

#: The ``e2b`` release the rows drive (the newest the compatibility tests pin).
E2B_VERSION: Final = "2.63.0"
PYTHON_ENV: Final = "CORRAL_BENCH_E2B_PYTHON"
#: The command both SDKs run: E2B's ``commands.run(COMMAND)`` runs ``bash -l -c COMMAND``,
#: so Corral's side runs :data:`ARGV`, as the same user.
COMMAND: Final = "true"
ARGV: Final = ("/bin/bash", "-l", "-c", COMMAND)
_DRIVER: Final = Path(__file__).with_name("_e2b_driver.py")
_INSTALL_TIMEOUT: Final = 600.0
_ANSWER_TIMEOUT: Final = 120.0
_LIFETIME: Final = 600.0


async def measure_e2b(url: str, key: str, image: str, runtime: str, iterations: int,
                      exec_iterations: int, warmup: int, result: RuntimeResult,
                      progress: Callable[[str], None]) -> None:
    """Add ``e2b_create_first`` and ``e2b_exec`` to ``result``, measured on the server at
    ``url`` (``key``: a key in E2B's form), or a note saying why not."""
    try:
        python = await asyncio.to_thread(e2b_python, progress)
    except InternalError as exc:
        result.notes.append(f"E2B rows skipped: {exc}")
        return
    local = ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get("NO_PROXY")]))
    env = {**os.environ, "E2B_API_URL": f"{url}/e2b", "E2B_SANDBOX_URL": f"{url}/e2b",
           "E2B_API_KEY": key, "NO_PROXY": local, "no_proxy": local}
    driver = _Driver(await asyncio.create_subprocess_exec(
        python, "-I", str(_DRIVER), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    try:
        ours: list[float] = []
        theirs: list[float] = []
        exec_row: Row | None = None
        for i in range(warmup + iterations):
            progress(f"{runtime}: create → first command, Corral SDK and E2B SDK, "
                     + round_label(i, warmup, warmup + iterations))
            started = time.perf_counter()
            sandbox = await AsyncSandbox.create(image, runtime=runtime, timeout=_LIFETIME,
                                                url=url, api_key=key)
            try:
                await _run(sandbox)
                seconds = time.perf_counter() - started
                last = i == warmup + iterations - 1
                e2b = await driver.ask({"op": "create", "template": image, "cmd": COMMAND})
                if i >= warmup:
                    ours.append(seconds)
                    theirs.append(e2b)
                if last:  # the exec rounds reuse the last pair
                    exec_row = await _exec_rounds(sandbox, driver, runtime, exec_iterations,
                                                  warmup * 5, progress)
            finally:
                await sandbox.kill()
                await driver.ask({"op": "kill"})
    finally:
        await driver.close()
    if not theirs or exec_row is None:
        raise InternalError("the E2B rows have no samples (iterations must be at least 1)")
    result.rows.append(Row("e2b_create_first", "create → first command via the E2B SDK",
                           Stat(tuple(theirs)), "the same via Corral's SDK", Stat(tuple(ours))))
    result.rows.append(exec_row)


async def _exec_rounds(sandbox: AsyncSandbox, driver: _Driver, runtime: str, iterations: int,
                       warmup: int, progress: Callable[[str], None]) -> Row:
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(warmup + iterations):
        if i % 10 == 0:
            progress(f"{runtime}: exec via the Corral SDK and the E2B SDK, "
                     + round_label(i, warmup, warmup + iterations))
        started = time.perf_counter()
        await _run(sandbox)
        seconds = time.perf_counter() - started
        e2b = await driver.ask({"op": "exec"})
        if i >= warmup:
            ours.append(seconds)
            theirs.append(e2b)
    return Row("e2b_exec", "exec round trip via the E2B SDK", Stat(tuple(theirs)),
               "the same via Corral's SDK", Stat(tuple(ours)))


async def _run(sandbox: AsyncSandbox) -> None:
    ran = await sandbox.commands.run(list(ARGV), user="user", cwd="/home/user")
    if ran.exit_code != 0:
        raise InternalError(f"{' '.join(ARGV)} exited {ran.exit_code} via Corral's SDK")


class _Driver:
    """The E2B driver process: one JSON request line in, one answer line out."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, request: dict[str, Any]) -> float:
        """Send ``request``; the seconds it measured (0 for ``kill``)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), _ANSWER_TIMEOUT)
        if not line:
            raise InternalError(f"the E2B driver ended (exit {await self.process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise InternalError(f"the E2B SDK failed on {request['op']}: {answer['error']}")
        if answer.get("exit_code", 0) != 0:
            raise InternalError(f"{' '.join(ARGV)} exited {answer['exit_code']} via the E2B "
                                "SDK")
        return float(answer.get("seconds", 0.0))

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def e2b_python(progress: Callable[[str], None]) -> str:
    """The Python of a virtualenv holding ``e2b==E2B_VERSION``: ``CORRAL_BENCH_E2B_PYTHON``
    if set, else one under the user's cache dir, made (from PyPI) if missing."""
    given = os.environ.get(PYTHON_ENV)
    if given:
        if not os.access(given, os.X_OK):
            raise InternalError(f"{PYTHON_ENV}={given} is not an executable Python")
        return given
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "corral" / "bench" / f"e2b-{E2B_VERSION}"
    python = venv / "bin" / "python"
    if python.exists():
        return str(python)
    progress(f"installing e2b {E2B_VERSION} from PyPI into {venv} (once)")
    building = venv.with_name(f"{venv.name}.{os.getpid()}.tmp")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True,
                       capture_output=True, timeout=_INSTALL_TIMEOUT)
        subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", f"e2b=={E2B_VERSION}"], check=True,
                       capture_output=True, timeout=_INSTALL_TIMEOUT)
        os.replace(building, venv)  # whole or not at all; ``python -m`` works once moved
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise InternalError(f"could not install e2b {E2B_VERSION} (offline? set {PYTHON_ENV} "
                            f"to a Python that has it): {exc} {detail[-300:]!r}") from None
    return str(python)
