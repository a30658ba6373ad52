"""An exec round trip through the HTTP API, beside the same exec through the in-process node.

The benchmark starts a real ``corral serve`` — its own process, uvicorn on 127.0.0.1 and a
free port, plain HTTP — on a temporary data dir with a fresh API key, and drives it with the
SDK (:class:`corral.AsyncSandbox`), as a user's program would. Each iteration runs ``true``
in a sandbox on that server, then ``true`` in a sandbox of the benchmark's own node (the
in-process engine, no HTTP), so host noise weighs on both; the ratio is HTTP / in-process.

The exposed-port rows (:mod:`corral.bench.ports`) are measured on the same server.

The server is stopped with SIGTERM (its node stops its sandboxes); whatever a server that
had to be killed left behind is swept before its data dir is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from corral.api.errors import InternalError
from corral.node import Node
from corral.runtime import available_runtimes
from corral.sdk import AsyncSandbox
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url

from ._scratch import remove_data_dir
from .e2b import measure_e2b
from .ports import measure_ports
from .stats import Row, RuntimeResult, Stat

if TYPE_CHECKING:
    from .suite import BenchConfig

SANDBOX_LIFETIME = 600.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
START_TRIES = 3
#: The server's own settings come from its flags; these variables of ours must not reach it
#: (another database, TLS, a key), except the cgroup tuning switch.
_KEPT_ENV = ("CORRAL_TUNE_CGROUPS",)
_SERVE = "from corral.cli import main; main()"


@dataclass(frozen=True)
class ApiServer:
    """A benchmark's server: its URL, the key of tenant ``bench``, and one key per other
    tenant it was asked for."""

    url: str
    key: str
    others: dict[str, str] = field(default_factory=dict)


async def measure_api(node: Node, config: BenchConfig, result: RuntimeResult,
                      progress: Callable[[str], None]) -> None:
    """Add the rows that need a server to ``result`` (``api_exec``, the ``port_*`` rows,
    and on the server's default runtime the ``e2b_*`` rows), all on one ``corral serve``."""
    progress(f"{result.runtime}: starting corral serve for the HTTP API and port rows")
    async with api_server(node.settings.image_dir) as server:
        await measure_api_exec(node, server, config, result, progress)
        await measure_ports(server, config, result, progress)
        if result.runtime == default_runtime():  # the one an E2B create gets
            await measure_e2b(server.url, server.key, config.image, result.runtime,
                              config.iterations, config.exec_iterations, config.warmup,
                              result, progress)
        else:
            result.notes.append("E2B rows: measured on the default runtime only (E2B's "
                                "create cannot pick one)")


async def measure_api_exec(node: Node, server: ApiServer, config: BenchConfig,
                           result: RuntimeResult, progress: Callable[[str], None]) -> None:
    """Add the ``api_exec`` row to ``result``: ``true`` via HTTP beside ``true`` in-process."""
    name = result.runtime
    remote = await AsyncSandbox.create(config.image, runtime=name,
                                       timeout=SANDBOX_LIFETIME, url=server.url,
                                       api_key=server.key)
    async with remote, await node.create(config.image, runtime=name,
                                         timeout=SANDBOX_LIFETIME) as local:
        http: list[float] = []
        inproc: list[float] = []
        warmup = config.warmup * 5
        rounds = warmup + config.exec_iterations
        for i in range(rounds):
            if i % 10 == 0:
                progress(f"{name}: exec via the HTTP API, "
                         + (f"warm-up {i + 1}/{warmup}" if i < warmup
                            else f"{i + 1 - warmup}/{rounds - warmup}"))
            started = time.perf_counter()
            over_http = await remote.commands.run(["true"])
            between = time.perf_counter()
            in_process = await local.commands.run(["true"])
            ended = time.perf_counter()
            if (over_http.exit_code, in_process.exit_code) != (0, 0):
                raise InternalError(f"`true` exited {over_http.exit_code} over HTTP and "
                                    f"{in_process.exit_code} in-process in {name}")
            if i >= warmup:
                http.append(between - started)
                inproc.append(ended - between)
    if not http:
        raise InternalError("the HTTP API round trip has no samples")
    result.rows.append(Row("api_exec", "exec round trip via HTTP API", Stat(tuple(http)),
                           "in-process node exec", Stat(tuple(inproc))))


@contextlib.asynccontextmanager
async def api_server(image_dir: Path, others: tuple[str, ...] = ()
                     ) -> AsyncIterator[ApiServer]:
    """A ``corral serve`` of the benchmark's own, on a fresh data dir with a fresh key (and
    one for each tenant named in ``others``)."""
    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-api-"))
    try:
        os.chmod(data_dir, 0o711)  # namespaces sandboxes' uids traverse it to their root
        engine = open_engine(database_url(data_dir, None))
        try:
            key = KeyStore(engine).create("bench", e2b=True).key  # for both SDKs
            other_keys = {name: KeyStore(engine).create(name).key for name in others}
        finally:
            engine.dispose()
        process, url = await asyncio.to_thread(_start, data_dir, image_dir)
        try:
            yield ApiServer(url=url, key=key, others=other_keys)
        finally:
            await asyncio.to_thread(_stop, process)
    finally:
        await asyncio.to_thread(remove_data_dir, data_dir, image_dir)


def _start(data_dir: Path, image_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server and wait until it answers; another port if the one picked was taken."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CORRAL_") or k in _KEPT_ENV}
    env["CORRAL_IMAGE_DIR"] = str(image_dir)
    log_path = data_dir / "serve.log"
    for _ in range(START_TRIES):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", _SERVE, "serve", "--host", "127.0.0.1", "--port",
                 str(port), "--no-tls", "--data-dir", str(data_dir)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        try:
            if _wait_ready(process, url):
                return process, url
        except BaseException:
            _stop(process)
            raise
        _stop(process)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise InternalError(f"corral serve for the benchmark did not start: {tail}")


def _wait_ready(process: subprocess.Popen[bytes], url: str) -> bool:
    """True once the server answers; False if it exited first (a port taken meanwhile)."""
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/openapi.json").status_code == 200:
                    return True
            time.sleep(0.05)
    raise InternalError(f"corral serve for the benchmark did not answer on {url} within "
                        f"{START_TIMEOUT:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, so that its node stops its sandboxes; SIGKILL if it does not end."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def default_runtime() -> str | None:
    """The runtime a create that names none gets: the strongest that works here."""
    return next((name for name, (_, status) in available_runtimes().items() if status.ok),
                None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
