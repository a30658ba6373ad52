"""Commands on a pseudo-terminal, on every runtime: its device and size, resize, typed
input and its echo, Ctrl-C, kill, and the command's user, directory and environment."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import pytest

from corral import InvalidArgumentError
from corral.api.models import PtySize
from corral.api.command_events import Output
from corral.node import SyncNodeSandbox
from corral.node.sync import SyncNodeCommandHandle


class Screen:
    """A terminal command's output, read as far as needed."""

    def __init__(self, handle: SyncNodeCommandHandle) -> None:
        self.handle = handle
        self._chunks: Iterator[Output] = iter(handle)
        self.text = b""

    def until(self, pattern: bytes) -> re.Match[bytes]:
        """Read until ``pattern`` (a regex) matches the output; fails if it ends first."""
        while (found := re.search(pattern, self.text)) is None:
            chunk = next(self._chunks, None)
            assert chunk is not None, f"output ended without {pattern!r}: {self.text!r}"
            assert chunk.stream == "stdout", chunk  # a terminal has one output
            self.text += chunk.data
        return found


def test_a_terminal_has_a_device_a_size_and_a_term(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start("tty; stty size; echo $TERM; echo err >&2",
                                    pty=PtySize(cols=123, rows=45))
    screen = Screen(handle)
    found = screen.until(rb"(/dev/pts/\d+)\r\n45 123\r\nxterm-256color\r\nerr\r\n")
    assert found.start() == 0, screen.text
    result = handle.wait()
    assert result.exit_code == 0 and result.stderr == ""


def test_a_resize_is_seen_and_input_echoes(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start("stty size; read line; echo got:$line; stty size",
                                    pty=PtySize(cols=80, rows=24))
    screen = Screen(handle)
    screen.until(rb"24 80\r\n")
    handle.resize(132, 50)
    handle.send_stdin("hello\n")
    screen.until(rb"hello\r\ngot:hello\r\n50 132\r\n")
    assert handle.wait().exit_code == 0


def test_an_interactive_shell_runs_typed_lines(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start(["/bin/bash", "-i", "-l"], pty=PtySize(cols=80, rows=24))
    screen = Screen(handle)
    # Typed once the prompt shows, as a person would: readline may drop what was typed
    # before it set the terminal up.
    screen.until(rb"[#$] $")
    handle.send_stdin("echo $((6 * 7))\n")
    screen.until(rb"[\r\n]42\r\n")  # after the echoed line (and bracketed-paste codes)
    screen.until(rb"[#$] $")
    handle.send_stdin("exit 3\n")
    assert handle.wait().exit_code == 3


def test_ctrl_c_interrupts_the_foreground_command(sandbox: SyncNodeSandbox) -> None:
    # One process that says "ready" only once it takes SIGINT's default action: a shell
    # would race the key against its own fork or exec (dash catches SIGINT under -c and
    # forgets it at exec; gVisor can miss a child forked while the group is signalled).
    handle = sandbox.commands.start(
        ["python3", "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL);"
                          " print('ready', flush=True); time.sleep(600)"],
        pty=PtySize(cols=80, rows=24))
    Screen(handle).until(rb"ready")
    handle.send_stdin(b"\x03")
    result = handle.wait()
    assert (result.exit_code, result.signal) == (128 + signal.SIGINT, signal.SIGINT), result


def test_a_terminal_command_is_killed_like_any(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start("sleep 600 & sleep 600", pty=PtySize(cols=80, rows=24))
    assert [p.pid for p in sandbox.commands.list()] == [handle.pid]
    handle.kill()
    result = handle.wait()
    assert (result.signal, result.reason) == (signal.SIGKILL, "killed")
    assert sandbox.commands.run("pgrep -c sleep || true").stdout == "0\n"


def test_user_cwd_and_env_apply_on_a_terminal(sandbox: SyncNodeSandbox) -> None:
    handle = sandbox.commands.start('echo "$(id -u) $(pwd) $GREETING"', user="user",
                                    cwd="/tmp", env={"GREETING": "hi"},
                                    pty=PtySize(cols=80, rows=24))
    Screen(handle).until(rb"^1000 /tmp hi\r\n")
    assert handle.wait().exit_code == 0


def test_a_resize_needs_a_terminal_and_a_size_in_bounds(sandbox: SyncNodeSandbox) -> None:
    plain = sandbox.commands.start(["sleep", "600"])
    with pytest.raises(InvalidArgumentError, match="not started on a terminal"):
        plain.resize(80, 24)
    term = sandbox.commands.start(["sleep", "600"], pty=PtySize(cols=80, rows=24))
    for cols, rows in ((0, 24), (80, 1001), (True, 24)):
        with pytest.raises(InvalidArgumentError, match="from 1 to 1000"):
            term.resize(cols, rows)
    plain.kill()
    term.kill()
