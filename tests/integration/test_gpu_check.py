"""``scripts/gpu-check``'s steps on a host without a GPU (``--dry-run``): the image made from
this host's own tree, a namespaces sandbox on it running the check's commands, the report's
shape and its table. The GPU steps themselves run only where there is a GPU (docs/gpu.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.bench import gpu_check
from tests.conftest import WORKING

pytestmark = pytest.mark.skipif("namespaces" not in WORKING,
                                reason="the namespaces runtime does not work here")


def test_the_dry_run_reports_every_step_without_a_gpu(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu-check.json"
    status = gpu_check.main(["--dry-run", "--python", "/usr/bin/python3",  # the image's own
                             "--out", str(out)])
    report = json.loads(out.read_text())
    assert status == 0
    assert not report["discovery"]["gpus"] and report["discovery"]["reason"]
    assert ["namespaces sandboxes", "no GPU here"] in report["doctor"]["gpu_rows"]
    inside = report["inside"]
    assert "error" not in inside, inside["error"]
    assert inside["gpu"] == 0 and "null" in inside["devices"] and inside["released"] is True
    assert inside["nvidia_smi"]["exit_code"] == 127  # no GPU, so no driver tools bound in
    assert "matmul" in inside and "matmul" in report["outside"]
    table = capsys.readouterr().out
    assert "| in a namespaces sandbox |" in table and "released on kill: True" in table
