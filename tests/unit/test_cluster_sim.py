"""The cluster-mode simulation (corral.bench.cluster_sim): conservation, bounds and
determinism on the --quick scale. No timing thresholds: the figures themselves are for
docs/scaling.md, not for asserts."""

from __future__ import annotations

import dataclasses
import json

import pytest

from corral.api.errors import InvalidArgumentError
from corral.bench import cluster_sim
from corral.bench.cluster_params import SCENARIOS, SimParams, from_overrides, quick
from corral.bench.cluster_sim import Simulation, main, run_scenarios


def _check_conservation(result: dict) -> None:
    # every arrival was placed, refused (no room, or 429), or is still in flight at the end
    assert result["arrivals"] == (result["placed"] + result["refused_full"]
                                  + result["refused_overload"] + result["unfinished"])
    # every started sandbox is live, deleted or lost at the end
    assert result["started"] == (result["live_at_end"] + result["deleted"] + result["lost"])
    assert result["placed"] <= result["started"]
    assert result["max_over_capacity"] <= 0
    assert result["host_live_max"] <= result["params"]["host_capacity"]
    assert result["latency_min_s"] >= 0
    assert all(value >= 0 for value in result["placement_latency"])
    assert all(value >= 0 for value in result["create_latency"])
    assert len(result["create_latency"]) <= result["placed"]
    assert result["pool_hits"] + result["cold_starts"] >= result["started"]
    for row in result["series"]:
        for name in ("api_cpu", "db_cpu", "db_wal", "db_pool", "host_start_slots"):
            assert 0 <= row[name] <= 1, (name, row)


@pytest.fixture(scope="module")
def quick_results() -> list[tuple[str, dict]]:
    return run_scenarios(quick_run=True)


def test_quick_run_conserves_every_sandbox(quick_results: list[tuple[str, dict]]) -> None:
    assert [name for name, _ in quick_results] == list(SCENARIOS)
    for _, result in quick_results:
        _check_conservation(result)
        assert result["target_reached_s"] is not None
        assert result["placed"] >= result["params"]["target_concurrent"]


def test_a_lost_host_loses_its_sandboxes(quick_results: list[tuple[str, dict]]) -> None:
    _, baseline = quick_results[0]
    assert baseline["params"]["node_failures"]
    assert baseline["lost"] > 0


def test_the_same_seed_gives_the_same_run() -> None:
    params = quick()
    first, second = Simulation(params).run(), Simulation(params).run()
    assert first == second
    other = Simulation(dataclasses.replace(params, seed=2)).run()
    assert other["create_latency"] != first["create_latency"]


def test_overload_is_refused_not_lost() -> None:
    """An API tier far too small answers 429s; the books still balance."""
    params = dataclasses.replace(quick(), api_servers=1, api_create_cpu_s=0.05,
                                 api_max_in_flight=4, api_backlog=8, max_s=120.0)
    result = Simulation(params).run()
    _check_conservation(result)
    assert result["refused_overload"] > 0
    assert result["bottleneck"] == "api_cpu"


def test_full_hosts_refuse_instead_of_overfilling() -> None:
    """More sandboxes wanted than the hosts hold: refusals, never a host over capacity."""
    params = dataclasses.replace(quick(), hosts=10, host_capacity=20, target_concurrent=400,
                                 node_failures=(), max_s=60.0, hold_s=5.0, drain_s=5.0)
    result = Simulation(params).run()
    _check_conservation(result)
    assert result["refused_full"] > 0
    assert result["host_live_max"] == 20


@pytest.mark.parametrize("overrides, message", [
    ({"hosts": 0}, "hosts=0"),
    ({"no_such": 1}, "unknown simulation parameter"),
    ({"heartbeat_mode": "gossip"}, "heartbeat_mode"),
    ({"cold_start_s": [0.5, 0.1]}, "cold_start_s"),
    ({"node_failures": [[10, 5000]]}, "node_failures"),
    ({"api_servers": 2.5}, "whole number"),
    ({"peak_rate": float("nan")}, "peak_rate"),
])
def test_parameters_out_of_bounds_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        from_overrides(SimParams(), overrides)


def test_cli_writes_a_table_json_and_takes_overrides(tmp_path, capsys) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"tenants": 7}))
    out = tmp_path / "result.json"
    scenario = next(iter(SCENARIOS))
    assert main(["--quick", "--scenario", scenario, "--params", str(params),
                 "--json", str(out)]) == 0
    assert scenario in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert [entry["scenario"] for entry in document] == [scenario]
    assert document[0]["params"]["tenants"] == 7
    _check_conservation({**document[0], "placement_latency": [], "create_latency": []})


def test_cli_refuses_an_oversized_params_file(tmp_path) -> None:
    params = tmp_path / "params.json"
    params.write_text(" " * (cluster_sim.MAX_PARAMS_BYTES + 1) + "{}")
    with pytest.raises(InvalidArgumentError, match="bytes"):
        main(["--quick", "--params", str(params)])


def test_corral_bench_cluster_sim_quick(tmp_path) -> None:
    """The CLI face: `corral bench --cluster-sim --quick --json PATH` (no plots: matplotlib
    is an extra)."""
    from typer.testing import CliRunner

    from corral.cli import app

    out = tmp_path / "sim.json"
    result = CliRunner().invoke(app, ["bench", "--cluster-sim", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "baseline: 4 API servers" in result.output
    document = json.loads(out.read_text())
    assert [entry["scenario"] for entry in document] == list(SCENARIOS)


def test_hosts_lost_mid_ramp_fail_over_their_creates() -> None:
    """A fifth of the hosts die while creates pour in: the creates that were starting
    there are retried elsewhere once Ray declares the hosts dead, and none is left hanging."""
    params = dataclasses.replace(quick(), node_failures=((20.0, 10),), peak_rate=600.0)
    result = Simulation(params).run()
    _check_conservation(result)
    assert result["failed_in_flight"] > 0
    assert result["retries"] >= result["failed_in_flight"]
    assert result["unfinished"] == 0
    assert result["lost"] > 0
