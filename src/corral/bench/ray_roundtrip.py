"""Ray actor-call round trip on this machine, for docs/scaling.md's measured figures.

Run by :mod:`corral.bench.cluster_costs` as a script with an interpreter that has Ray (this
file imports only the standard library and ``ray``, so it runs outside Corral's
environment)::

    /path/to/ray-venv/bin/python src/corral/bench/ray_roundtrip.py --calls 1000

It starts a private local Ray instance bound to 127.0.0.1 with token authentication
(``RAY_AUTH_MODE=token``, a fresh random token), creates a detached named actor as a Corral
node is one, times ``calls`` sequential ``ray.get(actor.method.remote())`` round trips (the
heartbeat shape: a small dict back) and ``calls`` concurrent ones (submitted together, then
gathered: the pipelined shape of an API server calling many nodes), then stops Ray. It
prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

MAX_CALLS = 100_000


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(calls: int) -> dict[str, Any]:
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Run as a script, this file's folder is first on sys.path, and its neighbours (code.py)
    # would shadow the standard library modules Ray imports.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    import ray  # imported late: the environment above must be set first

    started = time.perf_counter()
    # address="local" and a temp dir of its own: never join a Ray instance already running
    # on this machine (ray.init would otherwise attach to /tmp/ray's current cluster).
    temp_dir = tempfile.mkdtemp(prefix="/tmp/corral-ray-")
    ray.init(address="local", _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
             namespace="corral-bench", include_dashboard=False, num_cpus=2, log_to_driver=False,
             configure_logging=False)
    init_s = time.perf_counter() - started
    try:
        @ray.remote(num_cpus=0)
        class Node:
            def heartbeat(self) -> dict[str, int]:
                return {"free_cpu_milli": 1500, "free_memory_mib": 4096, "sandboxes": 17}

        node = Node.options(name="corral-node-bench", lifetime="detached").remote()  # type: ignore[attr-defined]
        ray.get(node.heartbeat.remote())  # the actor is up; warm the path once
        for _ in range(min(50, calls)):
            ray.get(node.heartbeat.remote())
        sequential = []
        for _ in range(calls):
            begin = time.perf_counter()
            ray.get(node.heartbeat.remote())
            sequential.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        ray.get([node.heartbeat.remote() for _ in range(calls)])
        concurrent_s = time.perf_counter() - begin
        begin = time.perf_counter()
        named = ray.get_actor("corral-node-bench")
        lookup_s = time.perf_counter() - begin
        ray.get(named.heartbeat.remote())
        ray.kill(node)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {
        "ray_version": ray.__version__,
        "auth_mode": os.environ["RAY_AUTH_MODE"],
        "calls": calls,
        "init_s": init_s,
        "sequential_mean_s": statistics.fmean(sequential),
        "sequential_p50_s": _quantile(sequential, 0.50),
        "sequential_p99_s": _quantile(sequential, 0.99),
        "concurrent_calls_per_s": calls / concurrent_s,
        "named_actor_lookup_s": lookup_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000,
                        help=f"round trips per measure, 1 to {MAX_CALLS} (default 1000)")
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= MAX_CALLS:
        parser.error(f"--calls must be between 1 and {MAX_CALLS}")
    print(json.dumps(measure(args.calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
