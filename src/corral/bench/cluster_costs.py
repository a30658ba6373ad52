"""Per-operation costs behind docs/scaling.md's measured figures: PostgreSQL through
SQLAlchemy (the statements a cluster create and a host loss make), and a Ray actor round
trip (:mod:`corral.bench.ray_roundtrip`, run with an interpreter that has Ray).

    python -m corral.bench.cluster_costs --database-url postgresql+psycopg://... \\
        [--ray-python /path/to/venv-with-ray/bin/python] [-n 1000] [--json PATH]

The database measures work in a table of their own (``corral_bench_directory``, created
and dropped by the run): ``n`` single-row INSERTs each in its own transaction (a directory
row), ``n`` primary-key SELECTs (a directory read on a cache miss), ``n`` single-row UPDATEs,
``n`` COUNTs of one tenant's live rows over a table of ``n`` rows (the quota check), the
same INSERT with ``synchronous_commit`` on and off (the difference is the WAL flush a commit
waits for), UPDATEs marking one node's rows lost (3n/100 rows each), and INSERTs from 8
threads at once
(throughput). Durability is whatever the server is set to; ``scripts/with-postgres`` turns
fsync off, so its flush figure is a floor.

With ``--api``, the control-plane cost of one API server process: a ``corral serve`` of its
own (127.0.0.1, a temporary data dir, a fresh key, no rate limit) answers ``n`` authenticated
``GET /v1/sandboxes/{id}`` of a sandbox that does not exist (key check, a directory lookup, a
404 in the error shape: the part of every call that is not the sandbox's work), first one at
a time (latency), then 16 at once (throughput); the server's CPU seconds per request come
from its ``/proc/PID/stat`` before and after. Needs root, as ``corral serve`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_N = 100_000
THREADS = 8
TABLE = "corral_bench_directory"


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_s": ordered[len(ordered) // 2],
            "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "mean_s": statistics.fmean(ordered), "n": len(ordered)}


def measure_database(url: str, n: int) -> dict[str, Any]:
    import sqlalchemy as sa

    engine = sa.create_engine(url, pool_size=THREADS, max_overflow=0)
    results: dict[str, Any] = {"dialect": engine.dialect.name}
    with engine.connect() as conn:
        results["server_version"] = conn.execute(sa.text("SHOW server_version")).scalar()
        results["fsync"] = conn.execute(sa.text("SHOW fsync")).scalar()
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {TABLE}"))
        conn.execute(sa.text(
            f"CREATE TABLE {TABLE} (sandbox_id text PRIMARY KEY, node text NOT NULL, "
            "tenant text NOT NULL, state text NOT NULL, created_at double precision)"))
        conn.execute(sa.text(f"CREATE INDEX {TABLE}_tenant ON {TABLE} (tenant, state)"))
        conn.execute(sa.text(f"CREATE INDEX {TABLE}_node ON {TABLE} (node)"))
        conn.commit()
    insert = sa.text(f"INSERT INTO {TABLE} VALUES (:id, :node, :tenant, 'running', :at)")
    ids: list[str] = []

    def timed(run: Callable[[Any, int], None], count: int,
              setting: str | None = None) -> list[float]:
        samples = []
        with engine.connect() as conn:
            if setting:
                conn.execute(sa.text(setting))
                conn.commit()
            for index in range(count):
                begin = time.perf_counter()
                run(conn, index)
                conn.commit()
                samples.append(time.perf_counter() - begin)
        return samples

    def add(conn: Any, index: int) -> None:
        sandbox = uuid.uuid4().hex
        ids.append(sandbox)
        conn.execute(insert, {"id": sandbox, "node": f"node-{index % 100}",
                              "tenant": f"tenant-{index % 10}", "at": time.time()})

    try:
        results["insert"] = _stats(timed(add, n))
        results["select_pk"] = _stats(timed(lambda conn, i: conn.execute(sa.text(
            f"SELECT node, tenant FROM {TABLE} WHERE sandbox_id = :id"),
            {"id": ids[i]}).one(), n))
        results["update_pk"] = _stats(timed(lambda conn, i: conn.execute(sa.text(
            f"UPDATE {TABLE} SET state = 'stopped' WHERE sandbox_id = :id"),
            {"id": ids[i]}), n))
        results["count_tenant"] = _stats(timed(lambda conn, i: conn.execute(sa.text(
            f"SELECT count(*) FROM {TABLE} WHERE tenant = :tenant AND state = 'running'"),
            {"tenant": f"tenant-{i % 10}"}).scalar(), n))
        results["insert_synchronous_commit_on"] = _stats(
            timed(add, n, "SET synchronous_commit = on"))
        results["insert_synchronous_commit_off"] = _stats(
            timed(add, n, "SET synchronous_commit = off"))
        results["mark_node_lost"] = _stats(timed(lambda conn, i: conn.execute(
            sa.text(f"UPDATE {TABLE} SET state = 'lost' WHERE node = :node"),
            {"node": f"node-{i % 100}"}), min(n, 20)))
        results["rows_per_lost_update"] = len(ids) // 100
        results["insert_throughput_per_s"] = _threaded_inserts(engine, insert, n)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {TABLE}"))
            conn.commit()
        engine.dispose()
    return results


def _threaded_inserts(engine: Any, insert: Any, n: int) -> float:
    per_thread = max(1, n // THREADS)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with engine.connect() as conn:
                for index in range(per_thread):
                    conn.execute(insert, {"id": uuid.uuid4().hex, "node": f"node-{index % 100}",
                                          "tenant": "tenant-t", "at": time.time()})
                    conn.commit()
        except BaseException as error:  # re-raised below, in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    if errors:
        raise errors[0]
    return THREADS * per_thread / elapsed


API_CONCURRENCY = 16


def measure_api(n: int, image_dir: Path) -> dict[str, Any]:
    import asyncio
    import tempfile

    import httpx

    from corral.server.store import KeyStore, open_engine
    from corral.server.store.schema import database_url

    from ._scratch import remove_data_dir
    from .api import _free_port, _stop, _wait_ready

    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-costs-"))
    process = None
    try:
        engine = open_engine(database_url(data_dir, None))
        try:
            key = KeyStore(engine).create("bench").key
        finally:
            engine.dispose()
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env["CORRAL_IMAGE_DIR"] = str(image_dir)
        process = subprocess.Popen(
            [sys.executable, "-c", "from corral.cli import main; main()", "serve", "--host",
             "127.0.0.1", "--port", str(port), "--no-tls", "--data-dir", str(data_dir),
             "--rate", "0", "--in-flight-per-key", "0"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        if not _wait_ready(process, url):
            raise RuntimeError("corral serve for the measure exited at start")
        return asyncio.run(_drive_api(url, key, n, process.pid, httpx))
    finally:
        if process is not None:
            _stop(process)
        remove_data_dir(data_dir, image_dir)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive_api(url: str, key: str, n: int, pid: int, httpx: Any) -> dict[str, Any]:
    import asyncio

    headers = {"Authorization": f"Bearer {key}"}
    path = "/v1/sandboxes/sbx-00000000000000000000000000"
    limits = httpx.Limits(max_connections=API_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=30.0) as client:
        for _ in range(min(100, n)):  # warm: imports, caches, connections
            await client.get(path)
        statuses: dict[int, int] = {}
        sequential = []
        for _ in range(n):
            begin = time.perf_counter()
            response = await client.get(path)
            sequential.append(time.perf_counter() - begin)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        remaining = n

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.get(path)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        cpu_before = _cpu_seconds(pid)
        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(API_CONCURRENCY)))
        elapsed = time.perf_counter() - begin
        cpu = _cpu_seconds(pid) - cpu_before
    return {"request": f"GET {path.rsplit('/', 1)[0]}/{{missing id}}", "statuses": statuses,
            "sequential": _stats(sequential),
            "concurrent_requests_per_s": n / elapsed, "concurrency": API_CONCURRENCY,
            "server_cpu_s_per_request": cpu / n}


def measure_ray(python: str, n: int, timeout_s: float = 300.0) -> dict[str, Any]:
    """Run ray_roundtrip.py with ``python`` (an interpreter that has Ray installed)."""
    script = Path(__file__).with_name("ray_roundtrip.py")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    done = subprocess.run([python, str(script), "--calls", str(n)], capture_output=True,
                          text=True, timeout=timeout_s, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring Ray with {python}: exit {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.bench.cluster_costs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("CORRAL_TEST_DATABASE_URL"),
                        help="SQLAlchemy URL of a PostgreSQL to measure (default: "
                             "$CORRAL_TEST_DATABASE_URL, which scripts/with-postgres sets)")
    parser.add_argument("--ray-python", help="an interpreter with Ray, for the Ray measure")
    parser.add_argument("--api", action="store_true",
                        help="measure one corral serve process's cost per request (root)")
    parser.add_argument("-n", type=int, default=1000,
                        help=f"operations per measure, 1 to {MAX_N} (default 1000)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write JSON here")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= MAX_N:
        parser.error(f"-n must be between 1 and {MAX_N}")
    if not (args.database_url or args.ray_python or args.api):
        parser.error("nothing to measure: give --database-url, --ray-python or --api")
    results: dict[str, Any] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime()),
                               "cpu_count": os.cpu_count()}
    if args.database_url:
        results["postgresql"] = measure_database(args.database_url, args.n)
    if args.ray_python:
        results["ray"] = measure_ray(args.ray_python, args.n)
    if args.api:
        from corral.node import NodeSettings
        results["api"] = measure_api(args.n, NodeSettings.from_env().image_dir)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
