"""Parameters of the cluster-mode simulation (:mod:`corral.bench.cluster_sim`), each with
where its default comes from: ``measured`` (by :mod:`corral.bench.cluster_costs` or
``corral bench``, on the machine docs/scaling.md names) or ``assumed`` (a figure to replace
once the cluster code is measured; docs/scaling.md says which measurement replaces it).

Plain values only: a scenario is ``dataclasses.replace(SimParams(), ...)``, and a JSON object
of overrides (``--params FILE``) goes through :func:`from_overrides`, which refuses unknown
names and values outside each field's bounds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from corral.api.errors import InvalidArgumentError

HEARTBEAT_MODES = ("per-node", "aggregated")


@dataclasses.dataclass(frozen=True)
class SimParams:
    seed: int = 1
    # --- the load: a ramp of create requests until `target_concurrent` live sandboxes ---
    target_concurrent: int = 100_000
    peak_rate: float = 3000.0        # offered creates/s at the top of the ramp
    ramp_s: float = 60.0             # 0 -> peak_rate, linearly
    hold_s: float = 30.0             # after the target: replacement arrivals only
    lifetime_mean_s: float = 1800.0  # exponential
    tenants: int = 100
    calls_per_sandbox_s: float = 0.05  # exec/files/proxy calls per live sandbox
    # --- hosts ---
    hosts: int = 1000
    host_capacity: int = 128         # live sandboxes a host takes (e.g. 64 cores x 2)
    host_start_slots: int = 4        # concurrent cold starts a host runs
    pool_size: int = 4               # warm sandboxes kept per host
    pool_start_s: tuple[float, float] = (0.020, 0.050)
    cold_start_s: tuple[float, float] = (0.300, 0.400)
    node_failures: tuple[tuple[float, int], ...] = ((75.0, 5),)  # (time, hosts lost)
    loss_detect_s: float = 1.5
    # --- API servers ---
    api_servers: int = 4
    api_processes: int = 1           # CPU-bound worker processes per API server
    api_max_in_flight: int = 256
    api_backlog: int = 1024          # waiting beyond in-flight before 429
    api_create_cpu_s: float = 0.003
    api_delete_cpu_s: float = 0.0015
    api_proxy_cpu_s: float = 0.0012
    placement_sample: int = 4        # hosts compared per placement (best of d)
    placement_tries: int = 3
    auth_cache_hit: float = 0.99
    # --- heartbeats ---
    heartbeat_interval_s: float = 1.0
    heartbeat_mode: str = "per-node"  # or "aggregated": one snapshot call a beat
    heartbeat_cpu_s: float = 0.00045  # API CPU per per-node heartbeat call
    aggregated_cpu_per_node_s: float = 0.00002
    # --- Ray ---
    ray_call_p50_s: float = 0.00060
    ray_call_p99_s: float = 0.00136
    # --- PostgreSQL ---
    db_cores: int = 8
    db_pool_size: int = 15           # per API server (SQLAlchemy's 5 + 10 overflow)
    db_rtt_s: float = 0.0002
    db_read_s: float = 0.00030
    db_count_s: float = 0.00030
    db_write_s: float = 0.00025
    db_flush_s: float = 0.00105      # WAL flush (fsync) shared by a group of commits
    db_commits_per_create: int = 2   # directory row, audit row; 1 = one transaction
    db_shards: int = 1               # directory split by tenant over this many primaries
    lost_update_s: float = 0.005
    # --- the run ---
    tick_s: float = 0.1
    drain_s: float = 30.0
    max_s: float = 300.0             # stop here if the target is never reached


# Where each default comes from: ("measured" | "assumed", what it is and what replaces it).
PROVENANCE: dict[str, tuple[str, str]] = {
    "host_capacity": ("assumed", "64-core host, 0.5 vCPU per sandbox"),
    "host_start_slots": ("assumed", "cold starts in parallel on one host"),
    "pool_size": ("assumed", "warm pool per host (corral pools)"),
    "pool_start_s": ("measured", "warm-pool hand-out, docs/benchmarks.md (2-core host)"),
    "cold_start_s": ("measured", "gVisor create -> first command, docs/benchmarks.md"),
    "loss_detect_s": ("measured", "Ray marks a killed node dead (cluster design)"),
    "api_create_cpu_s": ("assumed", "API CPU per create; replace with 1 / measured "
                         "control-plane creates/s of one API process"),
    "api_delete_cpu_s": ("assumed", "API CPU per delete"),
    "api_proxy_cpu_s": ("measured", "server CPU per authenticated GET of a missing sandbox "
                        "on one corral serve, 1.17-1.32 ms (cluster_costs --api): a floor, "
                        "without the forwarding"),
    "heartbeat_cpu_s": ("measured", "1 / pipelined Ray calls/s of one driver, 2,224/s "
                        "(ray_roundtrip; both ends on 2 cores: an upper bound)"),
    "aggregated_cpu_per_node_s": ("assumed", "decoding one node's row of a snapshot"),
    "ray_call_p50_s": ("measured", "Ray actor call round trip, p50 of 0.57-0.63 ms "
                       "(ray_roundtrip, 2 runs)"),
    "ray_call_p99_s": ("measured", "Ray actor call round trip, p99 of 1.22-1.51 ms"),
    "db_cores": ("assumed", "PostgreSQL host cores"),
    "db_pool_size": ("assumed", "SQLAlchemy QueuePool default, 5 + 10 overflow"),
    "db_rtt_s": ("assumed", "one in-cluster network round trip"),
    "db_read_s": ("measured", "PostgreSQL primary-key SELECT round trip, p50 "
                  "(cluster_costs; client on the same 2 cores: an upper bound)"),
    "db_count_s": ("measured", "PostgreSQL COUNT of one tenant's live rows, p50"),
    "db_write_s": ("measured", "PostgreSQL INSERT, p50, fsync off (no flush)"),
    "db_flush_s": ("measured", "INSERT p50 with synchronous_commit on minus off, fsync on"),
    "db_commits_per_create": ("assumed", "directory row and audit row, two transactions; "
                              "replace with the measured writes per create"),
    "lost_update_s": ("assumed", "one UPDATE marking a lost node's sandboxes"),
    "calls_per_sandbox_s": ("assumed", "later calls per live sandbox per second"),
}

# Bounds for --params overrides: (low, high), inclusive.
_BOUNDS: dict[str, tuple[float, float]] = {
    "seed": (0, 2**63), "target_concurrent": (1, 1_000_000), "peak_rate": (0.1, 100_000),
    "ramp_s": (0, 3600), "hold_s": (0, 3600), "lifetime_mean_s": (1, 10**7),
    "tenants": (1, 100_000), "calls_per_sandbox_s": (0, 100), "hosts": (1, 20_000),
    "host_capacity": (1, 10_000), "host_start_slots": (1, 1024), "pool_size": (0, 1024),
    "loss_detect_s": (0, 600), "api_servers": (1, 1024), "api_processes": (1, 256),
    "api_max_in_flight": (1, 100_000), "api_backlog": (0, 1_000_000),
    "api_create_cpu_s": (0, 10), "api_delete_cpu_s": (0, 10), "api_proxy_cpu_s": (0, 10),
    "placement_sample": (1, 1000), "placement_tries": (1, 100), "auth_cache_hit": (0, 1),
    "heartbeat_interval_s": (0.01, 600), "heartbeat_cpu_s": (0, 10),
    "aggregated_cpu_per_node_s": (0, 10), "ray_call_p50_s": (1e-6, 10),
    "ray_call_p99_s": (1e-6, 10), "db_cores": (1, 1024), "db_pool_size": (1, 10_000),
    "db_rtt_s": (0, 10), "db_read_s": (0, 10), "db_count_s": (0, 10), "db_write_s": (0, 10),
    "db_flush_s": (0, 10), "db_commits_per_create": (1, 2), "db_shards": (1, 1024),
    "lost_update_s": (0, 60), "tick_s": (0.001, 10), "drain_s": (0, 3600), "max_s": (1, 86_400),
}


# The 100,000-sandbox, 1,000-host run (baseline) and the ways past its bottleneck: each a
# set of overrides of SimParams(). Order matters: each step keeps the one before.
SCENARIOS: dict[str, dict[str, Any]] = {
    "baseline: 4 API servers": {},
    "16 API servers": {"api_servers": 16},
    "4 API servers, aggregated heartbeats": {"heartbeat_mode": "aggregated"},
    "16 API servers, aggregated heartbeats": {"api_servers": 16,
                                              "heartbeat_mode": "aggregated"},
    "48 API servers, aggregated, 10,000/s offered": {
        "api_servers": 48, "heartbeat_mode": "aggregated", "peak_rate": 10_000.0,
        "ramp_s": 10.0},
    "the same, 1 commit per create, 2 directory shards": {
        "api_servers": 48, "heartbeat_mode": "aggregated", "peak_rate": 10_000.0,
        "ramp_s": 10.0, "db_commits_per_create": 1, "db_shards": 2},
    "the same, warm pool of 16 per host": {
        "api_servers": 48, "heartbeat_mode": "aggregated", "peak_rate": 10_000.0,
        "ramp_s": 10.0, "db_commits_per_create": 1, "db_shards": 2, "pool_size": 16},
}


def quick(params: SimParams | None = None) -> SimParams:
    """The same shape at 1/20 of the size (50 hosts, 5,000 sandboxes), shorter."""
    base = params or SimParams()
    return dataclasses.replace(
        base, target_concurrent=max(1, base.target_concurrent // 20),
        hosts=max(1, base.hosts // 20), peak_rate=base.peak_rate / 20,
        api_servers=max(1, base.api_servers // 2),
        node_failures=tuple((at, max(1, count // 5)) for at, count in base.node_failures),
        hold_s=10.0, drain_s=10.0)


def from_overrides(base: SimParams, overrides: dict[str, Any]) -> SimParams:
    """``base`` with ``overrides`` applied; unknown names and out-of-bounds values refused."""
    fields = {field.name: field for field in dataclasses.fields(SimParams)}
    values: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in fields:
            raise InvalidArgumentError(f"unknown simulation parameter {name!r}; known: "
                                       f"{', '.join(sorted(fields))}")
        values[name] = _checked(name, value, getattr(base, name))
    params = dataclasses.replace(base, **values)
    validate(params)
    return params


def validate(params: SimParams) -> None:
    """Refuse parameter sets the model cannot run (bounds, orderings, modes)."""
    for name, (low, high) in _BOUNDS.items():
        value = getattr(params, name)
        if not (isinstance(value, int | float) and math.isfinite(value)
                and low <= value <= high):
            raise InvalidArgumentError(f"simulation parameter {name}={value!r} is outside "
                                       f"[{low}, {high}]")
    for name in ("pool_start_s", "cold_start_s"):
        low, high = getattr(params, name)
        if not 0 <= low <= high <= 600:
            raise InvalidArgumentError(f"{name} must be (low, high) with 0 <= low <= high "
                                       "<= 600 seconds")
    if params.ray_call_p99_s < params.ray_call_p50_s:
        raise InvalidArgumentError("ray_call_p99_s must be at least ray_call_p50_s")
    if params.heartbeat_mode not in HEARTBEAT_MODES:
        raise InvalidArgumentError(f"heartbeat_mode must be one of {', '.join(HEARTBEAT_MODES)}")
    if len(params.node_failures) > 100 or any(
            not (0 <= at <= 10**6 and 0 <= count <= params.hosts)
            for at, count in params.node_failures):
        raise InvalidArgumentError("node_failures: at most 100 (time_s, hosts) pairs, each "
                                   "with 0 <= hosts <= the host count")


def _checked(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        if name == "node_failures":
            if not isinstance(value, list | tuple) or not all(
                    isinstance(pair, list | tuple) and len(pair) == 2 for pair in value):
                raise InvalidArgumentError("node_failures must be a list of [time_s, hosts]")
            return tuple((float(at), int(count)) for at, count in value)
        if not (isinstance(value, list | tuple) and len(value) == 2
                and all(isinstance(item, int | float) for item in value)):
            raise InvalidArgumentError(f"{name} must be [low, high] in seconds")
        return (float(value[0]), float(value[1]))
    if isinstance(default, str):
        if not isinstance(value, str):
            raise InvalidArgumentError(f"{name} must be a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name} must be a number")
    if isinstance(default, int) and not isinstance(default, bool):
        if value != int(value):
            raise InvalidArgumentError(f"{name} must be a whole number")
        return int(value)
    return float(value)
