"""Commands on every runtime: output, exit codes, stdin, env, users, background, timeouts."""

from __future__ import annotations

import signal
import time

import pytest

from corral import CommandTimeoutError, InvalidArgumentError, NotFoundError
from corral.node import SyncNodeSandbox


def test_stdout_stderr_and_exit_code_are_kept_apart(sandbox: SyncNodeSandbox) -> None:
    r = sandbox.commands.run("echo out; echo err >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr) == (7, "out\n", "err\n")
    assert r.signal is None and r.reason is None


def test_argv_is_not_shell_interpreted(sandbox: SyncNodeSandbox) -> None:
    r = sandbox.commands.run(["echo", "$HOME; rm -rf /"])
    assert r.stdout == "$HOME; rm -rf /\n"


def test_python_and_data_stack_are_installed(sandbox: SyncNodeSandbox) -> None:
    r = sandbox.commands.run(
        ["python3", "-c",
         "import numpy, pandas, matplotlib, requests; print(numpy.arange(3).sum())"])
    assert r.stdout == "3\n", r.stderr


def test_env_cwd_and_user(sandbox: SyncNodeSandbox) -> None:
    r = sandbox.commands.run('echo "$GREETING $(pwd) $(id -u) $HOME"', env={"GREETING": "hi"},
                             cwd="/tmp", user="user")
    assert r.stdout == "hi /tmp 1000 /home/user\n"
    assert sandbox.commands.run("id -u").stdout == "0\n"
    assert sandbox.commands.run("pwd").stdout == "/work\n"


def test_stdin_is_delivered(sandbox: SyncNodeSandbox) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20000))
    r = sandbox.commands.run(["sha256sum"], stdin=data)
    import hashlib

    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_binary_output_is_not_mangled(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start(
        ["python3", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1000)"])
    assert b"".join(chunk.data for chunk in handle if chunk.stream == "stdout") == (
        bytes(range(256)) * 1000)
    assert handle.wait().exit_code == 0


def test_output_streams_before_the_command_ends(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start("echo first; sleep 3; echo second")
    events = iter(handle)
    first = next(events)
    # The first chunk arrives while the command still sleeps: it is still listed as running.
    assert first.data == b"first\n"
    assert any(p.pid == handle.pid for p in sandbox.commands.list())
    rest = b"".join(e.data for e in events)
    assert rest == b"second\n"


def test_background_process_can_be_listed_fed_and_signalled(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start(["cat"], stdin=True)
    assert [p.pid for p in sandbox.commands.list()] == [handle.pid]
    handle.send_stdin(b"ping\n")
    handle.close_stdin()
    result = handle.wait()
    assert result.stdout == "ping\n" and result.exit_code == 0
    sleeper = sandbox.commands.start(["sleep", "300"])
    sleeper.signal(signal.SIGTERM)
    result = sleeper.wait()
    assert result.signal == signal.SIGTERM and result.exit_code == 128 + signal.SIGTERM
    assert sandbox.commands.list() == []


def test_timeout_kills_the_whole_tree(sandbox: SyncNodeSandbox) -> None:
    # Children, a grandchild in a new session, a grandchild in a new process group.
    script = ("sleep 301 & sh -c 'setsid sleep 302 & wait' & "
              "python3 -c 'import os; os.setpgid(0, 0); "
              "os.execvp(\"sleep\", [\"sleep\", \"303\"])' & "
              "echo started; wait")
    with pytest.raises(CommandTimeoutError) as caught:
        sandbox.commands.run(script, timeout=2)
    partial = caught.value.result
    assert partial.stdout == "started\n" and partial.reason == "timeout"
    left = sandbox.commands.run("ps -eo args | grep -c '^sleep 30' || true").stdout
    assert left.strip() == "0"


def test_kill_reaches_grandchildren(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start("sleep 401 & sleep 402 & wait")
    deadline = time.monotonic() + 10
    while "sleep 402" not in sandbox.commands.run("ps -eo args").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    handle.kill()
    result = handle.wait()
    assert result.signal == signal.SIGKILL and result.reason == "killed"
    assert "sleep 40" not in sandbox.commands.run("ps -eo args").stdout


def test_bad_commands_get_clear_errors(sandbox: SyncNodeSandbox) -> None:
    with pytest.raises(NotFoundError, match="no-such-binary"):
        sandbox.commands.run(["no-such-binary"])
    with pytest.raises(NotFoundError, match="does not exist"):
        sandbox.commands.run("true", cwd="/no/such/dir")
    with pytest.raises(NotFoundError, match="nobody-here"):
        sandbox.commands.run("true", user="nobody-here")
    with pytest.raises(InvalidArgumentError):
        sandbox.commands.run("echo \0")
    with pytest.raises(InvalidArgumentError):
        sandbox.commands.run([])
    with pytest.raises(InvalidArgumentError):
        sandbox.commands.run("true", env={"BAD=NAME": "x"})
    with pytest.raises(InvalidArgumentError):
        sandbox.commands.run("true", timeout=-1)
    assert sandbox.commands.run("true").exit_code == 0
