"""A discrete-event simulation of Corral's cluster mode at scale (docs/scaling.md).

The model, one create: the load balancer hands it to an API server (round robin; past
``api_max_in_flight`` + ``api_backlog`` it answers 429); the server spends
``api_create_cpu_s`` on one of its processes (auth with a cached key, validation,
placement from its cached view of the hosts), reads the key from PostgreSQL on a cache miss,
counts the tenant's live sandboxes (quota), makes one Ray actor call to the chosen host,
which hands out a warm sandbox or cold-starts one (in one of ``host_start_slots``) or
refuses when it is full (the server tries another host, up to ``placement_tries``), then
writes the directory row and the audit row (``db_commits_per_create`` commits). A database
operation takes a connection from the server's pool, a network round trip, a PostgreSQL
core (FIFO over ``db_cores``), and for a commit the next WAL flush, which covers every commit
waiting for it (group commit). The directory lives on ``db_shards`` primaries, by tenant.

Background loads are fluid: per-node heartbeats (every API server calls every host each
``heartbeat_interval_s``) or one aggregated snapshot a beat, and reverse-proxied calls to
live sandboxes, take a share of each API server's CPU that slows its requests' CPU segments
(processor sharing). A heartbeat refreshes the server's view of that host; between beats
the server only knows its own placements, so servers can pick the same full host and be
refused. A lost host's sandboxes are marked lost after ``loss_detect_s`` in one UPDATE.

Output: achieved create rate, placement and create latencies, per-resource utilisation in
the busiest window, and the bottleneck (the most utilised resource). Deterministic for a
seed; run ``python -m corral.bench.cluster_sim --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.api.errors import InvalidArgumentError

from .cluster_params import SCENARIOS, SimParams, from_overrides, quick, validate
from .cluster_report import markdown_table

Event = tuple[float, int, Callable[[Any], None], Any]


@dataclasses.dataclass
class _Create:
    arrived: float
    tenant: int
    api: int
    tries: int = 0
    host: int = -1
    placed_at: float = -1.0


class _Servers:
    """``count`` FIFO servers (CPU cores, database cores): busy time is accounted."""

    def __init__(self, sim: Simulation, count: int) -> None:
        self.sim, self.count, self.busy = sim, count, 0
        self.waiting: deque[tuple[float, Callable[[Any], None], Any, float]] = deque()
        self.busy_time = 0.0
        self.window_busy = 0.0

    def submit(self, duration: float, done: Callable[[Any], None], arg: Any,
               work: float | None = None) -> None:
        """Run ``done(arg)`` after ``duration`` on a free server; ``work`` (default: the
        duration) is what counts as busy time, for a server slowed by background load."""
        item = (duration, done, arg, duration if work is None else work)
        if self.busy < self.count:
            self._start(*item)
        else:
            self.waiting.append(item)

    def _start(self, duration: float, done: Callable[[Any], None], arg: Any,
               work: float) -> None:
        self.busy += 1
        self.busy_time += work
        self.sim.at(self.sim.now + duration, self._finish, (done, arg))

    def _finish(self, pair: tuple[Callable[[Any], None], Any]) -> None:
        self.busy -= 1
        if self.waiting:
            self._start(*self.waiting.popleft())
        done, arg = pair
        done(arg)


class _Pool:
    """A connection pool: at most ``size`` operations of one API server at once."""

    def __init__(self, size: int) -> None:
        self.size, self.used = size, 0
        self.waiting: deque[Callable[[], None]] = deque()

    def acquire(self, then: Callable[[], None]) -> None:
        if self.used < self.size:
            self.used += 1
            then()
        else:
            self.waiting.append(then)

    def release(self) -> None:
        if self.waiting:
            self.waiting.popleft()()
        else:
            self.used -= 1


class _Database:
    """One PostgreSQL primary: ``db_cores`` FIFO cores, then group-committed WAL flushes."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.cores = _Servers(sim, sim.p.db_cores)
        self.flushing = False
        self.flush_waiting: list[Callable[[], None]] = []
        self.flush_busy = 0.0
        self.flushes = 0
        self.commits = 0

    def commit(self, then: Callable[[], None]) -> None:
        self.commits += 1
        self.flush_waiting.append(then)
        if not self.flushing:
            self._flush()

    def _flush(self) -> None:
        self.flushing = True
        group, self.flush_waiting = self.flush_waiting, []
        self.flushes += 1
        self.flush_busy += self.sim.p.db_flush_s
        self.sim.at(self.sim.now + self.sim.p.db_flush_s, self._flushed, group)

    def _flushed(self, group: list[Callable[[], None]]) -> None:
        self.flushing = False
        if self.flush_waiting:
            self._flush()
        for then in group:
            then()


class Simulation:
    def __init__(self, params: SimParams) -> None:
        validate(params)
        self.p = p = params
        self.rng = random.Random(p.seed)
        self.now = 0.0
        self._queue: list[Event] = []
        self._seq = 0
        # hosts: the truth
        self.live = [0] * p.hosts            # running user sandboxes
        self.starting = [0] * p.hosts        # accepted, not yet running
        self.pool_ready = [p.pool_size] * p.hosts
        self.slots_busy = [0] * p.hosts
        self.slot_wait: list[deque[Callable[[], None]]] = [deque() for _ in range(p.hosts)]
        self.slot_busy_time = 0.0
        self.dead = [False] * p.hosts
        self.dead_at = [math.inf] * p.hosts
        self.sandbox_host: dict[int, int] = {}
        # API servers
        self.cpus = [_Servers(self, p.api_processes) for _ in range(p.api_servers)]
        self.pools = [_Pool(p.db_pool_size) for _ in range(p.api_servers)]
        self.in_flight = [0] * p.api_servers
        self.backlog: list[deque[_Create]] = [deque() for _ in range(p.api_servers)]
        self.background = [0.0] * p.api_servers    # CPU share taken by background load
        self.background_time = [0.0] * p.api_servers
        self.views_free = [[p.host_capacity] * p.hosts for _ in range(p.api_servers)]
        self.views_pool = [[p.pool_size] * p.hosts for _ in range(p.api_servers)]
        self.dbs = [_Database(self) for _ in range(p.db_shards)]
        self.next_api = 0
        self.next_sandbox = 0
        self.ray_sigma = math.log(p.ray_call_p99_s / p.ray_call_p50_s) / 2.326
        # counters and samples
        self.arrivals = self.placed = self.refused_full = self.refused_overload = 0
        self.retries = self.pool_hits = self.cold_starts = self.deleted = self.lost = 0
        self.failed_in_flight = self.started_total = self.recorded = 0
        self.live_total = self.live_max = 0
        self.max_over_capacity = 0
        self.placement_latency: list[float] = []
        self.create_latency: list[float] = []
        self.series: list[dict[str, float]] = []
        self._second = {"arrivals": 0, "created": 0, "refused": 0}
        self._target_reached_at: float | None = None
        self._stop_arrivals_at = math.inf
        self._end = params.max_s
        self._last: dict[str, float] = {}

    # --- the event loop ---
    def at(self, when: float, callback: Callable[[Any], None], arg: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, callback, arg))

    def run(self) -> dict[str, Any]:
        p = self.p
        self.at(0.0, self._tick)
        self.at(0.0, self._second_mark)
        self._schedule_arrival()
        for when, count in p.node_failures:
            self.at(when, self._fail_hosts, count)
        while self._queue:
            when, _, callback, arg = heapq.heappop(self._queue)
            if when > self._end:
                break
            self.now = when
            callback(arg)
        from .cluster_report import summarise  # the report reads the finished run
        return summarise(self)

    # --- the load ---
    def _rate(self) -> float:
        p = self.p
        if self._target_reached_at is not None:
            return p.target_concurrent / p.lifetime_mean_s  # replacement only
        if p.ramp_s <= 0 or self.now >= p.ramp_s:
            return p.peak_rate
        return max(p.peak_rate * self.now / p.ramp_s, p.peak_rate / 1000)

    def _schedule_arrival(self) -> None:
        # thinning-free: the rate changes slowly against the gaps at these rates
        gap = self.rng.expovariate(self._rate())
        if self.now + gap < self._stop_arrivals_at:
            self.at(self.now + gap, self._arrive)

    def _arrive(self, _: Any) -> None:
        p = self.p
        self.arrivals += 1
        self._second["arrivals"] += 1
        api = self.next_api
        self.next_api = (api + 1) % p.api_servers
        create = _Create(self.now, self.rng.randrange(p.tenants), api)
        if self.in_flight[api] < p.api_max_in_flight:
            self._admit(create)
        elif len(self.backlog[api]) < p.api_backlog:
            self.backlog[api].append(create)
        else:
            self.refused_overload += 1
            self._second["refused"] += 1
        self._schedule_arrival()

    # --- a create, step by step ---
    def _admit(self, create: _Create) -> None:
        self.in_flight[create.api] += 1
        self._cpu(create.api, self.p.api_create_cpu_s * 0.7, self._authenticated, create)

    def _cpu(self, api: int, cost: float, done: Callable[[Any], None], arg: Any) -> None:
        share = 1.0 - min(self.background[api] / self.p.api_processes, 0.99)
        self.cpus[api].submit(cost / share, done, arg, work=cost)

    def _authenticated(self, create: _Create) -> None:
        if self.rng.random() >= self.p.auth_cache_hit:
            self._db(create.api, create.tenant, self.p.db_read_s, False,
                     lambda: self._quota(create))
        else:
            self._quota(create)

    def _quota(self, create: _Create) -> None:
        self._db(create.api, create.tenant, self.p.db_count_s, False,
                 lambda: self._place(create))

    def _place(self, create: _Create) -> None:
        host = self._choose(create.api)
        if host < 0:
            self.refused_full += 1
            self._second["refused"] += 1
            self._done(create)
            return
        create.host = host
        create.placed_at = self.now
        self.at(self.now + self._ray_leg(), self._at_node, create)

    def _choose(self, api: int) -> int:
        p, free, pool, rng = self.p, self.views_free[api], self.views_pool[api], self.rng
        best, best_key = -1, (-1, -1)
        for _ in range(p.placement_sample):
            host = rng.randrange(p.hosts)
            if free[host] > 0:
                key = (1 if pool[host] > 0 else 0, free[host])
                if key > best_key:
                    best, best_key = host, key
        if best < 0:  # a sample of full hosts: look at all (rare below ~95% full)
            candidates = [host for host in range(p.hosts) if free[host] > 0]
            if not candidates:
                return -1
            best = max(candidates, key=lambda host: (pool[host] > 0, free[host]))
        free[best] -= 1
        if pool[best] > 0:
            pool[best] -= 1
        return best

    def _ray_leg(self) -> float:
        # one direction of a round trip whose p50/p99 were measured
        return 0.5 * self.p.ray_call_p50_s * math.exp(self.ray_sigma * self.rng.gauss(0, 1))

    def _at_node(self, create: _Create) -> None:
        host, p = create.host, self.p
        if self.dead[host]:
            # Ray answers a call to a dead node's actor once the node is declared dead
            self._lost_in_flight(create)
            return
        if self.live[host] + self.starting[host] >= p.host_capacity:
            self.at(self.now + self._ray_leg(), self._retry, create)
            return
        self.starting[host] += 1
        if self.pool_ready[host] > 0:
            self.pool_ready[host] -= 1
            self.pool_hits += 1
            low, high = p.pool_start_s
            self.at(self.now + self.rng.uniform(low, high), self._started, create)
            self._with_slot(host, lambda: self._refill(host))
        else:
            self.cold_starts += 1
            self._with_slot(host, lambda: self._cold_start(host, create))

    def _with_slot(self, host: int, then: Callable[[], None]) -> None:
        if self.slots_busy[host] < self.p.host_start_slots:
            self.slots_busy[host] += 1
            then()
        else:
            self.slot_wait[host].append(then)

    def _free_slot(self, host: int) -> None:
        if self.slot_wait[host]:
            self.slot_wait[host].popleft()()
        else:
            self.slots_busy[host] -= 1

    def _cold_start(self, host: int, create: _Create | None) -> None:
        low, high = self.p.cold_start_s
        duration = self.rng.uniform(low, high)
        self.slot_busy_time += duration
        self.at(self.now + duration, self._cold_started, (host, create))

    def _refill(self, host: int) -> None:
        self._cold_start(host, None)

    def _cold_started(self, pair: tuple[int, _Create | None]) -> None:
        host, create = pair
        self._free_slot(host)
        if self.dead[host]:
            if create is not None:
                self._lost_in_flight(create)
            return
        if create is None:
            self.pool_ready[host] += 1
        else:
            self._started(create)

    def _lost_in_flight(self, create: _Create) -> None:
        """A create sent to, or starting on, a host that died: Ray fails the call once the
        host is declared dead, and the API server tries another."""
        self.failed_in_flight += 1
        reply_at = max(self.now, self.dead_at[create.host] + self.p.loss_detect_s)
        self.at(reply_at + self._ray_leg(), self._retry, create)

    def _started(self, create: _Create) -> None:
        host = create.host
        if self.dead[host]:
            self._lost_in_flight(create)
            return
        self.starting[host] -= 1
        self.live[host] += 1
        self.live_total += 1
        self.live_max = max(self.live_max, self.live_total)
        self.started_total += 1
        self.max_over_capacity = max(self.max_over_capacity,
                                     self.live[host] + self.starting[host]
                                     - self.p.host_capacity)
        self.at(self.now + self._ray_leg(), self._record, create)

    def _retry(self, create: _Create) -> None:
        """The chosen host refused (full) or failed: try another, up to placement_tries."""
        self.views_free[create.api][create.host] = 0
        create.tries += 1
        self.retries += 1
        if create.tries >= self.p.placement_tries:
            self.refused_full += 1
            self._second["refused"] += 1
            self._done(create)
            return
        self._cpu(create.api, self.p.api_create_cpu_s * 0.1, self._place, create)

    def _record(self, create: _Create) -> None:
        # The sandbox runs (if its host died since, it is among the lost ones): record it.
        self.recorded += 1
        if self._target_reached_at is None and self.live_total >= self.p.target_concurrent:
            self._target_reached_at = self.now
            self._stop_arrivals_at = self.now + self.p.hold_s
            self._end = self._stop_arrivals_at + self.p.drain_s
        sandbox = self.next_sandbox
        self.next_sandbox += 1
        self.sandbox_host[sandbox] = create.host
        self.placement_latency.append(create.placed_at - create.arrived)
        lifetime = self.rng.expovariate(1.0 / self.p.lifetime_mean_s)
        if self.now + lifetime < self._end:
            self.at(self.now + lifetime, self._delete, sandbox)
        commits = self.p.db_commits_per_create

        def audit() -> None:
            self._db(create.api, create.tenant, self.p.db_write_s, True,
                     lambda: self._cpu(create.api, self.p.api_create_cpu_s * 0.2,
                                       self._responded, create))

        if commits == 2:
            self._db(create.api, create.tenant, self.p.db_write_s, True, audit)
        else:  # one transaction: two statements, one commit
            self._db(create.api, create.tenant, 2 * self.p.db_write_s, True,
                     lambda: self._cpu(create.api, self.p.api_create_cpu_s * 0.2,
                                       self._responded, create))

    def _responded(self, create: _Create) -> None:
        self.placed += 1  # answered: the create succeeded
        self.create_latency.append(self.now - create.arrived)
        self._second["created"] += 1
        self._done(create)

    def _done(self, create: _Create) -> None:
        api = create.api
        self.in_flight[api] -= 1
        if self.backlog[api]:
            self._admit(self.backlog[api].popleft())

    # --- PostgreSQL ---
    def _db(self, api: int, tenant: int, service: float, commit: bool,
            then: Callable[[], None]) -> None:
        p, pool, db = self.p, self.pools[api], self.dbs[tenant % self.p.db_shards]

        def answered(_: Any) -> None:
            pool.release()
            then()

        def release_then() -> None:
            self.at(self.now + p.db_rtt_s / 2, answered)

        def executed(_: Any) -> None:
            if commit:
                db.commit(release_then)
            else:
                release_then()

        def connected() -> None:
            self.at(self.now + p.db_rtt_s / 2,
                    lambda _: db.cores.submit(self.rng.expovariate(1 / service)
                                              if service > 0 else 0.0, executed, None))

        pool.acquire(connected)

    # --- deletes, host loss ---
    def _delete(self, sandbox: int) -> None:
        host = self.sandbox_host.pop(sandbox, None)
        if host is None or self.dead[host]:
            return
        self.live[host] -= 1
        self.live_total -= 1
        self.deleted += 1
        api = sandbox % self.p.api_servers
        self.views_free[api][host] += 1
        self._cpu(api, self.p.api_delete_cpu_s, lambda _: self._db(
            api, 0, self.p.db_write_s, True, lambda: None), None)

    def _fail_hosts(self, count: int) -> None:
        alive = [host for host in range(self.p.hosts) if not self.dead[host]]
        for host in self.rng.sample(alive, min(count, len(alive))):
            self.dead[host] = True
            self.dead_at[host] = self.now
            self.lost += self.live[host]
            self.live_total -= self.live[host]
            self.live[host] = 0
            self.at(self.now + self.p.loss_detect_s, self._declare_lost, host)

    def _declare_lost(self, host: int) -> None:
        for api in range(self.p.api_servers):
            self.views_free[api][host] = 0
            self.views_pool[api][host] = 0
        # one UPDATE ... SET state='lost' WHERE node = host
        self._db(0, 0, self.p.lost_update_s, True, lambda: None)

    # --- background load and heartbeats ---
    def _tick(self, _: Any) -> None:
        p = self.p
        live = sum(self.live)
        beats_per_s = p.hosts / p.heartbeat_interval_s
        if p.heartbeat_mode == "per-node":
            heartbeat = beats_per_s * p.heartbeat_cpu_s
        else:
            heartbeat = (p.heartbeat_cpu_s + p.hosts * p.aggregated_cpu_per_node_s) \
                / p.heartbeat_interval_s
        proxy = live * p.calls_per_sandbox_s * p.api_proxy_cpu_s / p.api_servers
        for api in range(p.api_servers):
            self.background[api] = heartbeat + proxy
            self.background_time[api] += min(heartbeat + proxy, p.api_processes) * p.tick_s
        # refresh the share of the views whose heartbeat falls in this tick
        groups = max(1, round(p.heartbeat_interval_s / p.tick_s))
        group = round(self.now / p.tick_s) % groups
        for host in range(group, p.hosts, groups):
            if self.dead[host]:
                continue  # a silent host keeps its last view until declared lost
            free = p.host_capacity - self.live[host] - self.starting[host]
            for api in range(p.api_servers):
                self.views_free[api][host] = free
                self.views_pool[api][host] = self.pool_ready[host]
        self.at(self.now + p.tick_s, self._tick)

    def _second_mark(self, _: Any) -> None:
        """Each simulated second: counts, and each resource's busy share of that second."""
        p = self.p
        busy = {
            "api_cpu": (sum(cpu.busy_time for cpu in self.cpus) + sum(self.background_time))
            / (p.api_servers * p.api_processes),
            "db_cpu": sum(db.cores.busy_time for db in self.dbs) / (p.db_cores * p.db_shards),
            "db_wal": sum(db.flush_busy for db in self.dbs) / p.db_shards,
            "host_start_slots": self.slot_busy_time / (p.hosts * p.host_start_slots),
        }
        # work is booked when it starts, so a second can show a little over 1: clamp
        utilisation = {name: min(1.0, value - self._last.get(name, 0.0))
                       for name, value in busy.items()}
        self._last = busy
        utilisation["db_pool"] = sum(pool.used for pool in self.pools) / (
            p.api_servers * p.db_pool_size)
        utilisation["api_admission"] = sum(self.in_flight) / (
            p.api_servers * p.api_max_in_flight)
        if self.now > 0:
            self.series.append({"t": self.now, "live": self.live_total, **self._second,
                                **utilisation})
        self._second = {"arrivals": 0, "created": 0, "refused": 0}
        self.at(self.now + 1.0, self._second_mark)


def simulate(params: SimParams) -> dict[str, Any]:
    """Run one scenario; the summary :func:`corral.bench.cluster_report.summarise` makes."""
    return Simulation(params).run()


def run_scenarios(quick_run: bool = False, seed: int | None = None,
                  overrides: dict[str, Any] | None = None,
                  only: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every scenario of :data:`SCENARIOS` (or the one named ``only``), each with
    ``overrides`` applied last and, with ``quick_run``, scaled to 1/20."""
    results = []
    for name, changes in SCENARIOS.items():
        if only is not None and name != only:
            continue
        params = from_overrides(SimParams(), {**changes, **(overrides or {})})
        if seed is not None:
            params = dataclasses.replace(params, seed=seed)
        if quick_run:
            params = quick(params)
        results.append((name, simulate(params)))
    if only is not None and not results:
        raise InvalidArgumentError(f"unknown scenario {only!r}; known: "
                                   + "; ".join(SCENARIOS))
    return results


def write_json(results: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Summaries and per-second series; latency samples left out (they are 100,000s)."""
    document = [{"scenario": name, **{key: value for key, value in result.items()
                                      if key not in ("placement_latency", "create_latency")}}
                for name, result in results]
    path.write_text(json.dumps(document, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m corral.bench.cluster_sim",
        description="Simulate Corral's cluster mode: 100,000 sandboxes on 1,000 hosts "
                    "(docs/scaling.md).")
    parser.add_argument("--quick", action="store_true",
                        help="1/20 of the size (50 hosts, 5,000 sandboxes): seconds")
    parser.add_argument("--seed", type=int, help="RNG seed (default 1)")
    parser.add_argument("--scenario", help="run this scenario only")
    parser.add_argument("--params", type=Path, metavar="FILE",
                        help="JSON object of SimParams overrides, applied to every scenario")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write results as JSON")
    parser.add_argument("--plots", type=Path, metavar="DIR",
                        help="render PNG plots into DIR (needs matplotlib)")
    args = parser.parse_args(argv)
    overrides = load_overrides(args.params) if args.params else None
    results = run_scenarios(args.quick, args.seed, overrides, args.scenario)
    print(markdown_table(results), end="")
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plots:
        from .cluster_plots import render_cluster_plots
        for path in render_cluster_plots(results, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0


MAX_PARAMS_BYTES = 64 * 1024


def load_overrides(path: Path) -> dict[str, Any]:
    """A JSON object of SimParams overrides, at most 64 KiB."""
    data = path.read_bytes()
    if len(data) > MAX_PARAMS_BYTES:
        raise InvalidArgumentError(f"{path}: over {MAX_PARAMS_BYTES} bytes; a parameters "
                                   "file is a small JSON object")
    try:
        overrides = json.loads(data)
    except ValueError as error:
        raise InvalidArgumentError(f"{path}: not JSON ({error})") from error
    if not isinstance(overrides, dict):
        raise InvalidArgumentError(f"{path}: must hold a JSON object of parameter names")
    return overrides


if __name__ == "__main__":
    sys.exit(main())
