"""The exposed-port rows: HTTP to an app inside a sandbox through the server's port proxy,
beside the same HTTP to the same app program run on the host.

One program (:data:`APP`, standard library only: HTTP/1.1, keep-alive, Nagle off) runs
twice: inside a sandbox of the benchmark's ``corral serve`` (``sb.commands.run_background``,
listening on the sandbox's own loopback) and as a host process on a free port of
127.0.0.1. One :class:`httpx.AsyncClient` sends every request: to the app through
``{server}/v1/sandboxes/{id}/ports/{port}/`` with the sandbox's port token, then to the
host app directly (the order swaps every iteration), so host noise weighs on both.

* ``port_request``: a GET of a 2-byte body on a kept-alive connection;
* ``port_connect``: the same with ``Connection: close``, a new client connection each time
  (through the proxy the server's tunnel to the app stays pooled: the client pays for a
  connection to the server, not for a new one to the app);
* ``port_download_64mib``: a 64 MiB GET, read to its last byte.

Every request goes to 127.0.0.1 and nowhere else (no proxy from the environment). The
sandbox is killed and the host app stopped whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from corral.api.errors import InternalError
from corral.sdk import AsyncSandbox
from corral.sdk.ports import TOKEN_HEADER

from .stats import Row, RuntimeResult, Stat

if TYPE_CHECKING:
    from .api import ApiServer
    from .suite import BenchConfig

SANDBOX_LIFETIME = 600.0
DOWNLOAD_BYTES = 64 * 1024 * 1024
SMALL_BODY = b"ok"
#: The port the app listens on inside the sandbox (its loopback is its own).
PORT = 8000
#: Longest one request (a 64 MiB one included) may take, and the app may take to listen.
REQUEST_TIMEOUT = 120.0
LISTEN_TIMEOUT = 60.0
#: Tries at reaching the sandbox's app before it listens, and the pause between them.
LISTEN_TRIES, LISTEN_PAUSE = 600, 0.05
#: In the app's command line, so that a test can tell it is gone.
MARKER = "corral-bench-port-app"

#: ``python3 -c APP PORT``: serves ``/small`` (2 bytes) and ``/bytes/N`` on 127.0.0.1:PORT
#: (0: a free one) and prints the port it listens on.
APP = f"""# {MARKER}
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = memoryview(bytes(range(256)) * 4096)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/small":
            small, n = {SMALL_BODY!r}, {len(SMALL_BODY)}
        elif self.path.startswith("/bytes/") and self.path[7:].isdigit():
            small, n = None, int(self.path[7:])
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if small is not None:
            self.wfile.write(small)
            return
        while n > 0:
            piece = BLOCK[:n]
            self.wfile.write(piece)
            n -= len(piece)


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


async def measure_ports(server: ApiServer, config: BenchConfig, result: RuntimeResult,
                        progress: Callable[[str], None]) -> None:
    """Add the ``port_*`` rows to ``result`` (see the module's docstring), on ``server``."""
    name = result.runtime
    progress(f"{name}: starting an app in a sandbox and the same app on the host")
    sandbox = await AsyncSandbox.create(config.image, runtime=name, timeout=SANDBOX_LIFETIME,
                                        url=server.url, api_key=server.key)
    async with sandbox, _host_app() as direct, httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT, trust_env=False) as client:
        await sandbox.commands.run_background(["python3", "-c", APP, str(PORT)])
        proxied = _Side(sandbox.ports.url(PORT), {TOKEN_HEADER: sandbox.ports.token})
        host = _Side(direct, {})
        await _wait_listening(client, proxied)
        sides = (proxied, host)

        async def small(side: _Side) -> None:
            await _get(client, side, "small", len(SMALL_BODY))

        async def connect(side: _Side) -> None:
            await _get(client, side, "small", len(SMALL_BODY), {"Connection": "close"})

        async def download(side: _Side) -> None:
            await _get(client, side, f"bytes/{DOWNLOAD_BYTES}", DOWNLOAD_BYTES)

        over, bare = await _interleaved(sides, small, config.warmup * 5,
                                        config.exec_iterations,
                                        lambda step: progress(f"{name}: GET through the "
                                                              f"port proxy, {step}"))
        result.rows.append(Row("port_request", "small GET through the port proxy", over,
                               "the same GET to the app on the host", bare))
        over, bare = await _interleaved(sides, connect, config.warmup * 5,
                                        config.iterations * 5,
                                        lambda step: progress(f"{name}: new connection + GET "
                                                              f"through the port proxy, {step}"))
        result.rows.append(Row("port_connect", "new connection + GET through the port proxy",
                               over, "the same to the app on the host", bare))
        over, bare = await _interleaved(sides, download, config.warmup,
                                        max(3, config.iterations // 4),
                                        lambda step: progress(f"{name}: 64 MiB through the "
                                                              f"port proxy, {step}"), every=1)
        # size_bytes counts a round trip's two ways; a download moves its bytes once.
        result.rows.append(Row("port_download_64mib", "download 64 MiB through the port proxy",
                               over, "the same from the app on the host", bare,
                               DOWNLOAD_BYTES // 2))


@dataclass(frozen=True)
class _Side:
    """Where one side's app answers (a URL ending in ``/``), and the headers its requests
    carry."""

    base: str
    headers: dict[str, str]


async def _interleaved(sides: tuple[_Side, _Side], request: Callable[[_Side], Awaitable[None]],
                       warmup: int, iterations: int, progress: Callable[[str], None],
                       every: int = 10) -> tuple[Stat, Stat]:
    """Time ``request`` on both sides, alternately, ``warmup + iterations`` times; the
    recorded samples of the first side and of the second."""
    samples: tuple[list[float], list[float]] = ([], [])
    rounds = warmup + iterations
    for i in range(rounds):
        if i % every == 0:
            progress(f"warm-up {i + 1}/{warmup}" if i < warmup
                     else f"{i + 1 - warmup}/{iterations}")
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            started = time.perf_counter()
            await request(sides[which])
            elapsed = time.perf_counter() - started
            if i >= warmup:
                samples[which].append(elapsed)
    if not samples[0]:
        raise InternalError("a port measure has no samples (iterations must be at least 1)")
    return Stat(tuple(samples[0])), Stat(tuple(samples[1]))


async def _get(client: httpx.AsyncClient, side: _Side, path: str, size: int,
               headers: dict[str, str] | None = None) -> None:
    """GET ``path`` of ``side``, read to the end; it must answer 200 with ``size`` bytes."""
    got = 0
    async with asyncio.timeout(REQUEST_TIMEOUT):
        async with client.stream("GET", side.base + path,
                                 headers={**side.headers, **(headers or {})}) as answer:
            async for chunk in answer.aiter_raw():
                got += len(chunk)
    if answer.status_code != 200 or got != size:
        raise InternalError(f"GET {path} answered {answer.status_code} with {got} bytes, "
                            f"not 200 with {size}")


async def _wait_listening(client: httpx.AsyncClient, side: _Side) -> None:
    """Until the sandbox's app answers through the proxy (it starts in the background)."""
    deadline = time.monotonic() + LISTEN_TIMEOUT
    for _ in range(LISTEN_TRIES):
        with contextlib.suppress(httpx.HTTPError):
            answer = await client.get(side.base + "small", headers=side.headers)
            if answer.status_code == 200:
                return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(LISTEN_PAUSE)
    raise InternalError(f"the app in the sandbox did not listen on port {PORT} within "
                        f"{LISTEN_TIMEOUT:g} s")


@contextlib.asynccontextmanager
async def _host_app() -> AsyncIterator[str]:
    """:data:`APP` as a host process on a free port of 127.0.0.1: its base URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", APP, "0", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        line = b""
        if process.stdout is not None:  # always: piped just above
            with contextlib.suppress(TimeoutError):
                line = await asyncio.wait_for(process.stdout.readline(), LISTEN_TIMEOUT)
        if not line.strip().isdigit():
            raise InternalError(f"the app on the host did not start (it printed {line[:80]!r})")
        yield f"http://127.0.0.1:{int(line)}/"
    finally:
        if process.returncode is None:
            process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), LISTEN_TIMEOUT)
