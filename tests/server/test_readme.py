"""The README's newcomer path, run as written: ``corral serve`` prints its URL and the exact
command that makes a key; that command makes one; the README's shell lines and its Python
example then run a sandbox on that server. The README cannot drift from what works.

The server is the real console command in its own process, on a free port and a fresh data
dir. The README's text is used as is, except for the server's URL (it says the default
port) and where ``hello.py`` is written.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral import Sandbox
from tests.conftest import IMAGE_DIR, sandbox_data_dir

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEFAULT_URL = "http://127.0.0.1:8470"
CORRAL = [sys.executable, "-c", "from corral.cli import main; main()"]
START_TIMEOUT = 60.0
HANG_GUARD = 120
#: What the example prints: the sum of column a, then the streamed loop.
EXAMPLE_OUTPUT = "0 4\n1\n2\n3\n"


@dataclass(frozen=True)
class Served:
    url: str
    data_dir: Path
    printed: str  # what `corral serve` said on stderr


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return {**env, "CORRAL_DATA_DIR": str(data_dir), "CORRAL_IMAGE_DIR": str(IMAGE_DIR)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: its node stops its sandboxes
        try:
            process.wait(HANG_GUARD)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(HANG_GUARD)


def _serve(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    """``corral serve`` on a free port once it is up; None if it exited (port taken)."""
    port = _free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([*CORRAL, "serve", "--port", str(port)],
                                   env=_env(data_dir), stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while "Application startup complete" not in log.read_text(errors="replace"):
        if process.poll() is not None:
            return None
        if time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"corral serve did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    return process, port


@pytest.fixture(scope="module")
def served(python_image: str) -> Iterator[Served]:
    with sandbox_data_dir("corral-readme-test-") as data_dir:
        log = data_dir / "serve.log"
        for _ in range(3):
            started = _serve(data_dir, log)
            if started is not None:
                break
        else:
            pytest.fail(f"corral serve did not start: {log.read_text(errors='replace')}")
        process, port = started
        try:
            yield Served(url=f"http://127.0.0.1:{port}", data_dir=data_dir,
                         printed=log.read_text(errors="replace"))
        finally:
            _stop(process)


def _block(language: str, after: str = "") -> str:
    """The first fenced ``language`` block of the README after the text ``after``."""
    text = README.read_text()
    found = re.search(rf"^```{language}\n(.*?)^```$", text[text.index(after):],
                      re.MULTILINE | re.DOTALL)
    assert found is not None, f"no {language} block after {after!r} in the README"
    return found.group(1)


def _example() -> str:
    return _block("python", after="<!-- tests/server/test_readme.py")


def test_serve_prints_its_url_and_the_command_that_makes_a_key(served: Served) -> None:
    assert f"corral: serving on {served.url} " in served.printed
    found = re.search(r"make an API key with: (.+)$", served.printed, re.MULTILINE)
    assert found is not None, served.printed
    argv = shlex.split(found.group(1))
    assert argv[:3] == ["corral", "keys", "create"], argv
    made = subprocess.run([*CORRAL, *argv[1:]], env=_env(Path("/nonexistent")),
                          capture_output=True, text=True, timeout=HANG_GUARD, check=False)
    assert made.returncode == 0, made.stderr  # the printed --data-dir is what counts
    assert Sandbox.list(url=served.url, api_key=made.stdout.strip()) == []
    assert f"export CORRAL_URL={served.url} CORRAL_API_KEY=" in served.printed


def test_the_readme_walks_from_serve_to_a_key_to_the_example_in_order() -> None:
    text = README.read_text()
    for steps in (["corral serve", "export CORRAL_URL=", "<!-- tests/server/test_readme.py"],
                  ["corral serve", "export CORRAL_API_KEY=$(corral keys create)",
                   "<!-- tests/server/test_readme.py", "```python"]):
        at = [text.find(step) for step in steps]
        assert -1 not in at and at == sorted(at), dict(zip(steps, at, strict=True))
    assert "from corral import Sandbox" in _example()
    assert len(_example().splitlines()) <= 12  # a short example, as promised


def test_the_readme_python_example_runs(served: Served, tmp_path: Path) -> None:
    hello = tmp_path / "hello.py"
    hello.write_text(_example())
    key = subprocess.run([*CORRAL, "keys", "create"], env=_env(served.data_dir),
                         capture_output=True, text=True, timeout=HANG_GUARD, check=True)
    env = {**_env(served.data_dir), "CORRAL_URL": served.url,
           "CORRAL_API_KEY": key.stdout.strip()}
    ran = subprocess.run([sys.executable, str(hello)], env=env, capture_output=True,
                         text=True, timeout=HANG_GUARD, check=False)
    assert (ran.returncode, ran.stdout) == (0, EXAMPLE_OUTPUT), ran.stderr


@pytest.mark.skipif(not (ROOT / ".venv/bin/activate").exists(),
                    reason="the README's shell lines activate .venv, which this checkout lacks")
def test_the_readme_shell_lines_run_the_example(served: Served, tmp_path: Path) -> None:
    hello = tmp_path / "hello.py"
    hello.write_text(_example())
    script = _block("sh", after="## Your first sandbox from Python")
    assert DEFAULT_URL in script and "hello.py" in script
    script = script.replace(DEFAULT_URL, served.url).replace("hello.py", shlex.quote(str(hello)))
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT,
                         env=_env(served.data_dir), capture_output=True, text=True,
                         timeout=HANG_GUARD, check=False)
    assert (ran.returncode, ran.stdout) == (0, EXAMPLE_OUTPUT), ran.stderr
