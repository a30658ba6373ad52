"""The real ``corral run`` console script on every runtime that works here.

Each test runs ``corral`` as a subprocess (as root) with a private data dir and the shared
image dir, and after every run checks that the sandbox left nothing behind: no sandbox
directory under the data dir and no mount below it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.node.images import ImageStore
from corral.runtime import RUNTIME_NAMES, available_runtimes

IMAGE_DIR = Path(os.environ.get("CORRAL_IMAGE_DIR", "/var/lib/corral/images"))
CORRAL = Path(sys.executable).with_name("corral")
HANG_GUARD = 120  # seconds; only there so that a hung run fails instead of blocking CI


def _runtime_params() -> list[object]:
    """One param per runtime; those that do not work here are skipped, saying why."""
    probed = available_runtimes() if os.geteuid() == 0 else {}
    params: list[object] = []
    for name in RUNTIME_NAMES:
        found = probed.get(name)
        why = found[1].detail if found else "needs root"
        ok = found is not None and found[1].ok
        marks = [] if ok else [pytest.mark.skip(reason=f"{name} does not work here: {why}")]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _python_image_built() -> bool:
    return any(image.name == "python" for image in ImageStore(IMAGE_DIR).list())


pytestmark = pytest.mark.skipif(
    not _python_image_built(),
    reason=f"the python image is not built in {IMAGE_DIR}: corral image build python")


def mounts_below(directory: Path) -> list[str]:
    prefix = str(directory).rstrip("/") + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [p for p in points if p.startswith(prefix) or p == prefix[:-1]]


def sandbox_dirs(data_dir: Path) -> list[Path]:
    return list(data_dir.glob("**/sandboxes/*"))


@pytest.fixture
def cli_data_dir() -> Iterator[Path]:
    """A fresh data dir the sandboxes' uids can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corral-cli-test-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    left = mounts_below(path)
    if left:  # never rm -rf through a mount: it could reach the shared image
        pytest.fail(f"mounts left under {path}: {left}")
    shutil.rmtree(path)


@pytest.fixture(params=_runtime_params())
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def corral(data_dir: Path, runtime: str, *args: str, stdin: bytes | None = None,
           alone: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run ``corral run --runtime RUNTIME ARGS...``; when it ran ``alone``, check that it
    left nothing behind."""
    env = {**os.environ, "CORRAL_DATA_DIR": str(data_dir), "CORRAL_IMAGE_DIR": str(IMAGE_DIR)}
    done = subprocess.run([str(CORRAL), "run", "--runtime", runtime, *args], env=env,
                          input=stdin if stdin is not None else b"", capture_output=True,
                          timeout=HANG_GUARD, check=False)
    if alone:
        assert sandbox_dirs(data_dir) == [], done.stderr
        assert mounts_below(data_dir) == [], done.stderr
    return done


def test_stdout_and_stderr_stay_apart(cli_data_dir: Path, runtime: str) -> None:
    done = corral(cli_data_dir, runtime, "--", "sh", "-c", "echo out; echo err >&2")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"


def test_the_exit_code_is_the_commands(cli_data_dir: Path, runtime: str) -> None:
    done = corral(cli_data_dir, runtime, "--", "sh", "-c", "exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == b""


def test_argv_reaches_the_command_unchanged(cli_data_dir: Path, runtime: str) -> None:
    done = corral(cli_data_dir, runtime, "-e", "GREETING=a b=c", "-w", "/tmp", "-u", "user",
                  "--", "sh", "-c", 'echo "$GREETING|$(pwd)|$(id -un)|$1"', "sh", "$HOME; x")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"a b=c|/tmp|user|$HOME; x\n"


def test_stdin_is_forwarded_with_interactive(cli_data_dir: Path, runtime: str) -> None:
    done = corral(cli_data_dir, runtime, "-i", "--", "tr", "a-z", "A-Z",
                  stdin=b"hello\nworld\n")
    assert (done.returncode, done.stdout) == (0, b"HELLO\nWORLD\n"), done.stderr
    big = os.urandom(3 * 1024 * 1024 + 17)
    done = corral(cli_data_dir, runtime, "-i", "--", "sha256sum", stdin=big)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.sha256(big).hexdigest()


def test_without_interactive_stdin_is_empty(cli_data_dir: Path, runtime: str) -> None:
    done = corral(cli_data_dir, runtime, "--", "wc", "-c", stdin=b"not forwarded")
    assert (done.returncode, done.stdout.strip()) == (0, b"0"), done.stderr


def test_a_command_timeout_exits_124(cli_data_dir: Path, runtime: str) -> None:
    done = corral(cli_data_dir, runtime, "--timeout", "1", "--", "sleep", "30")
    assert done.returncode == 124
    assert b"corral: command timed out after 1 s; it and its children were killed" in done.stderr
    assert done.stdout == b""


def test_a_memory_limit_kill_exits_137_and_says_why(cli_data_dir: Path, runtime: str) -> None:
    done = corral(cli_data_dir, runtime, "--memory", "64M", "--", "python3", "-c",
                  "x = bytearray(300 * 1024 * 1024)")
    assert done.returncode == 137, done.stderr
    assert b"corral: killed: memory limit 64 MiB" in done.stderr


def test_corral_errors_exit_125(cli_data_dir: Path, runtime: str) -> None:
    done = corral(cli_data_dir, runtime, "--", "no-such-command-here")
    assert done.returncode == 125
    assert done.stderr.startswith(b"corral: error: ")
    assert b"no-such-command-here" in done.stderr
    done = corral(cli_data_dir, runtime, "--image", "nope", "--", "true")
    assert done.returncode == 125
    assert b"corral: error: unknown image 'nope'" in done.stderr


def test_concurrent_runs_do_not_disturb_each_other(cli_data_dir: Path, runtime: str) -> None:
    """A node sweeps unknown sandboxes when it starts: each run must have its own."""
    env = {**os.environ, "CORRAL_DATA_DIR": str(cli_data_dir),
           "CORRAL_IMAGE_DIR": str(IMAGE_DIR)}
    first = subprocess.Popen([str(CORRAL), "run", "--runtime", runtime, "--", "sh", "-c",
                              "echo ready; sleep 3; echo still here"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert first.stdout is not None and first.stdout.readline() == b"ready\n"
        second = corral(cli_data_dir, runtime, "--", "echo", "second", alone=False)
        assert (second.returncode, second.stdout) == (0, b"second\n"), second.stderr
        out, err = first.communicate(timeout=HANG_GUARD)
    finally:
        if first.poll() is None:  # SIGTERM: corral tears its sandbox down before exiting
            first.terminate()
            first.wait(timeout=HANG_GUARD)
    assert (first.returncode, out) == (0, b"still here\n"), err
    assert sandbox_dirs(cli_data_dir) == [] and mounts_below(cli_data_dir) == []
