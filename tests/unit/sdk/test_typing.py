"""A user's type checker sees the SDK's real types, through the blocking face too.

``typing_usage.py`` (the README's calls) is checked by ``mypy --strict`` with
``--disallow-any-expr``: an expression whose type is or holds ``Any`` is an error there, as
is an ``assert_type`` that does not hold. A probe checked in the same run, typed the way
the blocking face once was (``Callable[..., Any]``), proves the check can fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import corral

HERE = Path(__file__).parent
#: Where the corral under test lives: mypy must read it, not an installed copy.
SOURCES = Path(corral.__file__).resolve().parents[1]
CONFIG = """\
[mypy]
python_version = 3.11
strict = True
ignore_missing_imports = True

[mypy-typing_usage,typing_probe]
disallow_any_expr = True
"""
#: Untyped the way the blocking face was: each line marked ``# Any`` must be reported.
PROBE = """\
from collections.abc import Callable
from typing import Any

from corral import Sandbox


class OldCommands:
    run: Callable[..., Any]


def use(sb: Sandbox, old: OldCommands) -> None:
    result = old.run("echo hi")  # Any
    print(result.exit_code)  # Any
    print(sb.commands.run("echo hi").exit_code)
"""
ERROR = re.compile(r"^(?P<file>typing_\w+\.py):(?P<line>\d+): error: ", re.M)


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory,
                request: pytest.FixtureRequest) -> str:
    work = tmp_path_factory.mktemp("typing")
    shutil.copy(HERE / "typing_usage.py", work / "typing_usage.py")
    (work / "typing_probe.py").write_text(PROBE)
    (work / "mypy.ini").write_text(CONFIG)
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    cache = cache.mkdir("mypy") if cache is not None else work / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "mypy.ini",
         "--cache-dir", str(cache), "--show-error-codes", "--no-pretty",
         "typing_usage.py", "typing_probe.py"],
        cwd=work, env={"MYPYPATH": str(SOURCES), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 2: mypy itself failed
    return done.stdout


def test_the_readme_calls_have_real_types(mypy_report: str) -> None:
    assert [m.group() for m in ERROR.finditer(mypy_report)
            if m["file"] == "typing_usage.py"] == [], mypy_report


def test_the_check_fails_on_an_untyped_call(mypy_report: str) -> None:
    marked = {n for n, line in enumerate(PROBE.splitlines(), 1) if line.endswith("# Any")}
    reported = {int(m["line"]) for m in ERROR.finditer(mypy_report)
                if m["file"] == "typing_probe.py"}
    assert marked and reported == marked, mypy_report
