"""corral.bench.cluster_costs: the PostgreSQL measures run against a real PostgreSQL
(``CORRAL_TEST_DATABASE_URL``, which scripts/with-postgres sets) and leave nothing behind.
Figures are not checked, only that each measure ran and made sense."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from corral.bench import cluster_costs

POSTGRES_URL = os.environ.get("CORRAL_TEST_DATABASE_URL", "")


@pytest.mark.skipif(not POSTGRES_URL, reason="CORRAL_TEST_DATABASE_URL is unset: run "
                    "scripts/test, or scripts/with-postgres .venv/bin/pytest ...")
def test_database_measures_run_and_drop_their_table() -> None:
    result = cluster_costs.measure_database(POSTGRES_URL, 20)
    assert result["dialect"] == "postgresql"
    for name in ("insert", "select_pk", "update_pk", "count_tenant",
                 "insert_synchronous_commit_on", "insert_synchronous_commit_off",
                 "mark_node_lost"):
        assert result[name]["n"] > 0
        assert 0 < result[name]["p50_s"] <= result[name]["p99_s"]
    assert result["insert_throughput_per_s"] > 0
    engine = sa.create_engine(POSTGRES_URL)
    try:
        assert not sa.inspect(engine).has_table(cluster_costs.TABLE)
    finally:
        engine.dispose()


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to measure"),
    (["--ray-python", "/bin/false", "-n", "0"], "-n must be between"),
])
def test_cli_refuses_bad_arguments(argv: list[str], message: str, capsys,
                                   monkeypatch) -> None:
    monkeypatch.delenv("CORRAL_TEST_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit):
        cluster_costs.main(argv)
    assert message in capsys.readouterr().err


def test_a_failing_ray_interpreter_is_reported() -> None:
    with pytest.raises(RuntimeError, match="measuring Ray with /bin/false"):
        cluster_costs.measure_ray("/bin/false", 1)
