"""The network rows: what a policy costs at create, and what its path costs per connection
and per byte, each beside the same thing without Corral in the way.

* ``network_create``: create → first command with a policy (``{"allow": [...]}``: its own
  namespace, veth pair and rules) beside the same without one, interleaved.
* ``network_connect``: a new TCP connection and an HTTP GET from inside a sandbox to a
  host of the test internet (:mod:`corral.bench.testnet`), timed inside the sandbox,
  beside the same from the host.
* ``network_download_64mib``: a 64 MiB HTTP download the same two ways.

Needs root and nftables; a runtime where they are missing gets a note instead. No packet
leaves the machine: the test internet is a network namespace the benchmark makes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable

from corral.api.errors import InternalError
from corral.node import Node, NodeSandbox

from . import testnet
from .stats import Row, RuntimeResult, Stat

SANDBOX_LIFETIME = 600.0
DOWNLOAD_BYTES = 64 * 1024 * 1024
PROBE_TIMEOUT = 300.0

#: Fetches ``argv[1]`` ``argv[2]`` times over new connections; prints the seconds each took.
FETCH = """
import json, sys, time, urllib.request
url, times, out = sys.argv[1], int(sys.argv[2]), []
for _ in range(times):
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as answer:
        while answer.read(1 << 20):
            pass
    out.append(time.perf_counter() - started)
print(json.dumps(out))
"""


async def measure_network(node: Node, image: str, iterations: int, warmup: int,
                          result: RuntimeResult, progress: Callable[[str], None]) -> None:
    """Add the ``network_*`` rows to ``result`` (see the module's docstring)."""
    name = result.runtime
    policy = {"allow": [f"{testnet.PUBLIC_A}:{testnet.PORT}"]}
    with_policy: list[float] = []
    without: list[float] = []
    for i in range(warmup + iterations):
        progress(f"{name}: create → first command with and without a network policy, "
                 f"{i + 1}/{warmup + iterations}")
        timed = await _create_to_first(node, name, image, policy)
        plain = await _create_to_first(node, name, image, None)
        if i >= warmup:
            with_policy.append(timed)
            without.append(plain)
    result.rows.append(Row("network_create", "create → first command, network policy",
                           Stat(tuple(with_policy)), "create → first command, no network",
                           Stat(tuple(without))))
    small = f"http://{testnet.PUBLIC_A}:{testnet.PORT}/"
    big = f"http://{testnet.PUBLIC_A}:{testnet.PORT}/bytes/{DOWNLOAD_BYTES}"
    with testnet.internet():
        async with await node.create(image, runtime=name, timeout=SANDBOX_LIFETIME,
                                     network=policy) as sandbox:
            progress(f"{name}: new connections through the policy")
            inside = await _fetch_inside(sandbox, small, warmup + iterations * 5)
            host = await asyncio.to_thread(_fetch_on_host, small, warmup + iterations * 5)
            result.rows.append(Row("network_connect", "new connection + GET through a policy",
                                   Stat(tuple(inside[warmup:])), "the same from the host",
                                   Stat(tuple(host[warmup:]))))
            progress(f"{name}: 64 MiB downloads through the policy")
            count = max(3, iterations // 4)
            inside = await _fetch_inside(sandbox, big, count + 1)
            host = await asyncio.to_thread(_fetch_on_host, big, count + 1)
            result.rows.append(Row("network_download_64mib", "download 64 MiB through a policy",
                                   Stat(tuple(inside[1:])), "the same from the host",
                                   Stat(tuple(host[1:])), DOWNLOAD_BYTES // 2))


async def _create_to_first(node: Node, runtime: str, image: str,
                           network: dict[str, list[str]] | None) -> float:
    started = time.perf_counter()
    sandbox = await node.create(image, runtime=runtime, timeout=SANDBOX_LIFETIME,
                                network=network)
    try:
        reply = await sandbox.commands.run(["true"])
        elapsed = time.perf_counter() - started
    finally:
        await sandbox.kill()
    if reply.exit_code != 0:
        raise InternalError(f"`true` exited {reply.exit_code} in a {runtime} sandbox")
    return elapsed


async def _fetch_inside(sandbox: NodeSandbox, url: str, times: int) -> list[float]:
    reply = await sandbox.commands.run(["python3", "-c", FETCH, url, str(times)],
                                       timeout=PROBE_TIMEOUT)
    if reply.exit_code != 0:
        raise InternalError(f"fetching {url} in the sandbox failed: {reply.stderr[-500:]}")
    return _times(reply.stdout)


def _fetch_on_host(url: str, times: int) -> list[float]:
    done = subprocess.run([sys.executable, "-c", FETCH, url, str(times)],
                          capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    if done.returncode != 0:
        raise InternalError(f"fetching {url} on the host failed: {done.stderr[-500:]}")
    return _times(done.stdout)


def _times(printed: str) -> list[float]:
    try:
        times = json.loads(printed)
    except ValueError:
        times = None
    if not isinstance(times, list) or not times or not all(isinstance(t, float)
                                                            for t in times):
        raise InternalError(f"the fetch probe printed {printed[:200]!r}, not its times")
    return times
