"""The ``corral`` command line without sandboxes: help, argument checking, exit codes.

Every malformed invocation here must be refused before a node starts, so these tests need
neither root nor a built image; each points ``--data-dir`` at a temporary directory that
must stay empty.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from corral.bench import BenchReport, Row, RuntimeResult, Stat, markdown, rich_table
from corral.bench.stats import percentile
from corral.cli import app
from corral.cli.run import parse_env, parse_net
from corral.runtime import Availability

HELP_PATHS = [[], ["run"], ["doctor"], ["bench"], ["image"], ["image", "build"], ["serve"],
              ["sandbox", "network"], ["sandbox", "logs"],
              ["image", "list"], ["image", "rm"]]


def invoke(*args: str, data_dir: Path | None = None) -> Result:
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    command = list(args)
    if "--" in command:  # options must come before the command of `corral run`
        at = command.index("--")
        command[at:at] = extra
    else:
        command += extra
    # Wide enough that rich never wraps the words the tests look for, whatever the terminal;
    # and never the shared image dir of the environment: `image rm` would delete from it.
    env = {"COLUMNS": "200", "CORRAL_IMAGE_DIR": None, "CORRAL_DATA_DIR": None}
    return CliRunner(env=env).invoke(app, command)


@pytest.mark.parametrize("path", HELP_PATHS, ids=lambda p: " ".join(p) or "corral")
def test_help_of_every_command(path: list[str]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: corral" in result.stdout
    assert "--help" in result.stdout


def test_help_of_run_shows_examples_and_options() -> None:
    out = invoke("run", "--help").stdout
    for text in ("corral run -- python3", "--runtime", "--memory", "--timeout", "--env",
                 "--interactive", "--data-dir", "125"):
        assert text in out


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("corral ")


@pytest.mark.parametrize("value", ["NOEQUALS", "=value", ""])
def test_run_rejects_a_malformed_env(tmp_path: Path, value: str) -> None:
    result = invoke("run", "-e", value, "--", "true", data_dir=tmp_path)
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_parse_env_keeps_everything_after_the_first_equals() -> None:
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    assert parse_env(None) == {}
    with pytest.raises(typer.BadParameter):
        parse_env(["A=1", "B"])


@pytest.mark.parametrize("option, value, message", [
    ("--memory", "lots", "memory 'lots' is not a size"),
    ("--disk", "1Q", "disk '1Q' is not a size"),
    ("--memory", "1M", "memory 1 MiB is outside"),
    ("--pids", "1", "pids 1 is outside"),
    ("--timeout", "0", "timeout 0 s is outside"),
])
def test_run_rejects_bad_limits(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = invoke("run", option, value, "--", "true", data_dir=tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["run", "--runtime", "foo", "--", "true"],
                                     ["bench", "--runtime", "foo"]])
def test_unknown_runtime_names_the_valid_ones(tmp_path: Path, command: list[str]) -> None:
    result = invoke(*command, data_dir=tmp_path)
    assert result.exit_code == 2
    assert "unknown runtime 'foo'" in result.stderr
    assert "gvisor" in result.stderr and "namespaces" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_run_needs_a_command(tmp_path: Path) -> None:
    result = invoke("run", data_dir=tmp_path)
    assert result.exit_code == 2
    assert "CMD" in result.stderr


def test_image_rm_of_an_invalid_name_is_a_corral_error(tmp_path: Path) -> None:
    result = invoke("image", "rm", "Not/Valid", data_dir=tmp_path)
    assert result.exit_code == 125
    assert result.stderr.startswith("corral: error: invalid image name 'Not/Valid'")


def test_image_rm_of_an_image_that_is_not_built(tmp_path: Path) -> None:
    result = invoke("image", "rm", "minimal", data_dir=tmp_path)
    assert result.exit_code == 125
    assert "corral: error: image 'minimal' is not built" in result.stderr


def test_image_list_shows_known_images_as_not_built(tmp_path: Path) -> None:
    result = invoke("image", "list", data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    assert "python" in result.stdout and "minimal" in result.stdout
    assert "yes" not in result.stdout


def test_percentile_is_nearest_rank() -> None:
    samples = tuple(float(i) for i in range(1, 21))
    assert percentile(samples, 95) == 19.0
    assert percentile(samples, 50) == 10.0
    assert percentile((3.0,), 95) == 3.0
    assert Stat((4.0, 1.0, 2.0, 3.0)).p50 == 2.5


def _report() -> BenchReport:
    create = Row("create_to_first_command", "create → first command",
                 Stat((0.020, 0.022, 0.030)), "bwrap /bin/true", Stat((0.010, 0.011, 0.012)))
    files = Row("file_round_trip_1mib", "file write+read 1 MiB", Stat((0.004,)),
                "host tmpfs", Stat((0.001,)), 1024 * 1024)
    result = RuntimeResult("namespaces", "bubblewrap", [create, files], ["a note"])
    now = datetime.now(UTC)
    return BenchReport(machine={"cpu_count": 2}, config={"iterations": 3}, started=now,
                       finished=now, results=[result])


def test_bench_report_ratios_targets_and_json() -> None:
    report = _report()
    row = report.results[0].rows[0]
    assert row.ratio("p50") == pytest.approx(2.0)
    assert report.results[0].rows[1].throughput_mib_s() == pytest.approx(500.0)
    text = markdown(report)
    row_text = "| create → first command | 22.0 | 30.0 | bwrap /bin/true | 11.0 | 12.0 | 2.00× |"
    assert row_text in text
    assert "* met: create → first command: goal < 25 ms" in text
    assert "* note: a note" in text
    doc = report.to_json()
    assert doc["runtimes"][0]["rows"][0]["ratio"]["p50"] == pytest.approx(2.0)
    assert rich_table(report.results[0]).row_count == 2


def _fake_runtimes(monkeypatch: pytest.MonkeyPatch, ok: dict[str, bool]) -> None:
    found = {name: (None, Availability(works, f"{name} detail", "" if works else f"fix {name}"))
             for name, works in ok.items()}
    monkeypatch.setattr("corral.cli.doctor.available_runtimes", lambda **_: found)


def test_doctor_exits_0_and_names_the_default_when_a_runtime_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_runtimes(monkeypatch, {"gvisor": False, "namespaces": True})
    result = invoke("doctor", data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    assert "namespaces (default)" in result.stdout
    assert "fix gvisor" in result.stdout
    assert "micro-VMs are not supported" in result.stdout
    assert str(tmp_path) in result.stdout


def test_doctor_shows_the_runsc_and_why_its_platform(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.runtime.test_runsc import fake_runsc

    _fake_runtimes(monkeypatch, {"gvisor": True, "namespaces": True})
    monkeypatch.setenv("CORRAL_RUNSC", fake_runsc(tmp_path, "0.0~20221219.0",
                                                  broken=("systrap",)))
    result = invoke("doctor", data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "0.0~20221219.0 (not the pinned 0.0~20240729.0" in out, out
    assert "platform systrap │ does not work: unknown platform: systrap" in out, out
    assert "sandboxes use │ ptrace (its probe passed; not systrap" in out, out
    monkeypatch.setenv("CORRAL_GVISOR_PLATFORM", "kvm")
    refused = invoke("doctor", data_dir=tmp_path)
    assert refused.exit_code != 0 and "kvm is not offered" in refused.stderr


def test_doctor_exits_1_when_no_runtime_works(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_runtimes(monkeypatch, {"gvisor": False, "namespaces": False})
    result = invoke("doctor", data_dir=tmp_path)
    assert result.exit_code == 1
    assert "No runtime works" in result.stdout


@pytest.mark.parametrize("value", ["python", "python=lots", "python:gvisor=1/os;id"])
def test_serve_rejects_a_malformed_pool_before_starting(tmp_path: Path, value: str) -> None:
    result = invoke("serve", "--pool", value, "--port", "1", data_dir=tmp_path)
    assert result.exit_code != 0
    assert "IMAGE[:RUNTIME]=SIZE" in result.stderr or "module name" in result.stderr
    assert "serving on" not in result.output


@pytest.mark.parametrize(("values", "wire"), [
    (None, "none"), (["none"], "none"), (["all"], "all"),
    (["allow:198.51.100.1:80,203.0.113.0/24", "deny:203.0.113.9"],
     {"allow": ["198.51.100.1:80", "203.0.113.0/24"], "deny": ["203.0.113.9"]}),
    (["allow:"], {"allow": [], "deny": []}),
])
def test_net_options_make_a_policy(values: list[str] | None, wire: object) -> None:
    assert parse_net(values).to_wire() == wire


@pytest.mark.parametrize(("values", "message"), [
    (["nope"], "is not none, all"), (["permit:203.0.113.4"], "is not none, all"),
    (["allow:1.2.3"], "'1.2.3' is not an IP"), (["all", "deny:203.0.113.4"], "is not none, all"),
])
def test_bad_net_options_are_usage_errors(values: list[str], message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        parse_net(values)


def test_doctor_says_there_is_no_gpu_and_why(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_runtimes(monkeypatch, {"gvisor": True, "namespaces": True})
    result = invoke("doctor", data_dir=tmp_path)
    out = " ".join(result.stdout.split())
    assert "GPUs │ none: no NVIDIA driver is loaded" in out, out
    assert "namespaces sandboxes │ no GPU here" in out, out


def test_doctors_gpu_rows_name_each_gpu_the_driver_and_each_runtimes_answer(
        tmp_path: Path) -> None:
    from corral.node.gpus import doctor_rows as gpu_rows
    from corral.runtime.gvisor.runsc import MANAGED
    from corral.runtime.gvisor.runtime import GvisorOptions, GvisorRuntime
    from tests.fakes.gpu import make_driver_tree

    host = make_driver_tree(tmp_path, gpus=1)
    gvisor = GvisorRuntime(GvisorOptions(runsc=str(MANAGED)))
    broken = GvisorRuntime(GvisorOptions(runsc=str(MANAGED)))
    rows = dict(gpu_rows(host, {"gvisor": (gvisor, Availability(True, "ok")),
                                "other": (broken, Availability(False, "no runsc"))}))
    assert rows["GPU 0"] == "NVIDIA H200, 143771 MiB, /dev/nvidia0, GPU-00000000"
    assert rows["driver"] == "580.159.04 (found through test)"
    assert "cannot have a GPU" in rows["gvisor sandboxes"]
    assert ("driver 580.159.04 is not in runsc's nvproxy list" in rows["gvisor sandboxes"]
            if MANAGED.exists() else "gVisor is not available" in rows["gvisor sandboxes"])
    assert rows["other sandboxes"].endswith("the runtime does not work here (no runsc)")
