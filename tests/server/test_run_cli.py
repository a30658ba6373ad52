"""``corral run`` with ``CORRAL_URL`` set: the real console script, through the session's
server, with the same options, output and exit statuses as a local run.

Each run gets a data dir no node could use (under ``/dev/null``), so a run that fell back to
a private local node would fail; every run must leave no sandbox of its own running on the
server.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from corral import Sandbox
from corral.cli import app
from corral.cli.run import REMOTE_METADATA

from .conftest import Server

CORRAL = Path(sys.executable).with_name("corral")
HANG_GUARD = 120  # seconds; only there so that a hung run fails instead of blocking CI


def _env(server: Server, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return {**env, "CORRAL_URL": server.url, "CORRAL_API_KEY": key or server.key,
            "CORRAL_DATA_DIR": "/dev/null/not-a-data-dir"}


def _runs(server: Server, state: str | None = None) -> set[str]:
    """Ids of the sandboxes ``corral run`` made for tenant alpha (in ``state``)."""
    return {info.id for info in Sandbox.list(metadata=REMOTE_METADATA, state=state,
                                              **server.sdk())}


def corral_run(server: Server, *args: str, stdin: bytes = b"",
               key: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """``corral run ARGS...`` through the server; checks that it left nothing running."""
    before = _runs(server)
    done = subprocess.run([str(CORRAL), "run", *args], env=_env(server, key), input=stdin,
                          capture_output=True, timeout=HANG_GUARD, check=False)
    assert _runs(server, "running") == set(), done.stderr
    made = _runs(server) - before
    assert len(made) <= 1, made
    return done


def test_output_streams_apart_and_the_status_is_the_commands(server: Server,
                                                             runtime: str) -> None:
    before = _runs(server)
    done = corral_run(server, "--runtime", runtime, "--", "sh", "-c",
                      "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"out\n", b"err\n")
    made = _runs(server) - before
    assert len(made) == 1  # it ran on the server, as a sandbox of the key's tenant
    info = Sandbox.connect(made.pop(), **server.sdk())
    try:
        assert (info.info.state, info.info.runtime) == ("stopped", runtime)
        assert info.info.resources.memory == 512  # the run's default --memory
    finally:
        info.close()


def test_argv_env_workdir_and_user_reach_the_command(server: Server) -> None:
    done = corral_run(server, "-e", "GREETING=a b=c", "-w", "/tmp", "-u", "user", "--",
                      "sh", "-c", 'echo "$GREETING|$(pwd)|$(id -un)|$1"', "sh", "$HOME; x")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"a b=c|/tmp|user|$HOME; x\n"


def test_stdin_is_forwarded_with_interactive_only(server: Server) -> None:
    done = corral_run(server, "-i", "--", "tr", "a-z", "A-Z", stdin=b"hello\nworld\n")
    assert (done.returncode, done.stdout) == (0, b"HELLO\nWORLD\n"), done.stderr
    big = os.urandom(3 * 1024 * 1024 + 17)
    done = corral_run(server, "-i", "--", "sha256sum", stdin=big)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.sha256(big).hexdigest()
    done = corral_run(server, "--", "wc", "-c", stdin=b"not forwarded")
    assert (done.returncode, done.stdout.strip()) == (0, b"0"), done.stderr


def test_output_arrives_while_the_command_runs(server: Server) -> None:
    # The command prints, then waits for a line that is only sent once that print arrived.
    run = subprocess.Popen([str(CORRAL), "run", "-i", "--", "sh", "-c",
                            "echo ready; read x; echo got $x"], env=_env(server),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        assert run.stdin is not None and run.stdout is not None
        assert run.stdout.readline() == b"ready\n"
        out, err = run.communicate(b"go\n", timeout=HANG_GUARD)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=HANG_GUARD)
    assert (run.returncode, out) == (0, b"got go\n"), err
    assert _runs(server, "running") == set()


def test_sigterm_kills_the_sandbox_on_the_server(server: Server) -> None:
    before = _runs(server)
    run = subprocess.Popen([str(CORRAL), "run", "--", "sh", "-c", "echo ready; sleep 300"],
                           env=_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert run.stdout is not None and run.stdout.readline() == b"ready\n"
        assert len(_runs(server, "running") - before) == 1
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=HANG_GUARD)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=HANG_GUARD)
    assert run.returncode == 128 + signal.SIGTERM, err
    assert b"corral: terminated" in err
    assert _runs(server, "running") == set()


def test_a_command_timeout_exits_124(server: Server) -> None:
    done = corral_run(server, "--timeout", "1", "--", "sleep", "30")
    assert done.returncode == 124
    assert b"corral: command timed out after 1 s; it and its children were killed" in done.stderr
    assert done.stdout == b""


def test_a_memory_limit_kill_exits_137_and_says_why(server: Server, runtime: str) -> None:
    done = corral_run(server, "--runtime", runtime, "--memory", "64M", "--", "python3", "-c",
                      "x = bytearray(300 * 1024 * 1024)")
    assert done.returncode == 137, done.stderr
    assert b"corral: killed: memory limit 64 MiB" in done.stderr


def test_corral_errors_exit_125(server: Server) -> None:
    done = corral_run(server, "--", "no-such-command-here")
    assert done.returncode == 125
    assert done.stderr.startswith(b"corral: error: ") and b"no-such-command-here" in done.stderr
    done = corral_run(server, "--image", "nope", "--", "true")
    assert done.returncode == 125
    assert b"corral: error: no image 'nope'" in done.stderr
    done = corral_run(server, "--", "true", key=server.revoked_key)
    assert done.returncode == 125
    assert b"corral: error: the API key is not valid" in done.stderr
    done = corral_run(server, "--memory", "lots", "--", "true")
    assert done.returncode == 2  # a usage error, before any request


def test_help_says_when_it_uses_a_server() -> None:
    shown = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert "CORRAL_URL" in shown.stdout and "CORRAL_API_KEY" in shown.stdout
