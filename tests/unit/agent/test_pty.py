"""Commands on a pseudo-terminal, straight at the agent binary: size, resize, input, Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.api import agent_protocol as proto
from tests.fakes.agent import AgentProcess

pytestmark = pytest.mark.rootless


class Terminal:
    """One command on a terminal: its output as it comes, its exit."""

    def __init__(self, agent: AgentProcess, argv: list[str], cols: int, rows: int,
                 **fields: Any) -> None:
        self.agent = agent
        self.id = agent.send({"op": "exec", "argv": argv, "pty": {"cols": cols, "rows": rows},
                              **fields})
        header, _ = agent.read()
        assert (header["id"], header["ev"]) == (self.id, "started"), header
        self.output = bytearray()
        self.exit: dict[str, Any] | None = None
        self.replies: list[dict[str, Any]] = []

    def _step(self) -> None:
        header, data = self.agent.read()
        if header["id"] != self.id:
            self.replies.append(header)
        elif header["ev"] == "stdout":
            self.output += data
            self.agent.send({"op": "credit", "target": self.id, "n": 1})
        elif header["ev"] == "exit":
            self.exit = header
        else:
            raise AssertionError(f"unexpected event {header}")

    def until(self, text: bytes) -> bytes:
        """Output read until ``text`` is in it."""
        while text not in self.output:
            assert self.exit is None, (self.exit, bytes(self.output))
            self._step()
        return bytes(self.output)

    def call(self, header: dict[str, Any], data: bytes = b"") -> dict[str, Any]:
        """A request about this command, and its reply (output read meanwhile is kept)."""
        req_id = self.agent.send({"target": self.id, **header}, data)
        while not any(r["id"] == req_id for r in self.replies):
            self._step()
        return next(r for r in self.replies if r["id"] == req_id)

    def type(self, text: bytes) -> None:
        reply = self.call({"op": "stdin"}, text)
        assert reply["ev"] == "ok", reply

    def wait(self) -> dict[str, Any]:
        while self.exit is None:
            self._step()
        return self.exit


def test_a_command_runs_on_a_terminal_of_the_size_asked(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        term = Terminal(agent, ["sh", "-c", "tty; stty size; echo TERM=$TERM; echo err >&2"],
                        cols=100, rows=30)
        assert term.wait()["exit_code"] == 0
        lines = bytes(term.output).decode().splitlines()
        assert lines[0].startswith("/dev/pts/"), lines
        # stderr is the terminal too: everything comes as its output, with CR LF endings.
        assert lines[1:] == ["30 100", "TERM=xterm-256color", "err"], lines
        assert bytes(term.output).endswith(b"err\r\n")


def test_the_environment_may_name_its_own_term(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        term = Terminal(agent, ["sh", "-c", "echo $TERM"], cols=80, rows=24,
                        env={"TERM": "dumb"})
        term.wait()
        assert bytes(term.output) == b"dumb\r\n"


def test_input_is_echoed_and_a_resize_is_seen(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        term = Terminal(agent, ["sh", "-c", "read line; echo got:$line; stty size"],
                        cols=80, rows=24)
        reply = term.call({"op": proto.OP_RESIZE, "cols": 120, "rows": 40})
        assert reply["ev"] == "ok", reply
        term.type(b"hello\n")
        assert term.wait()["exit_code"] == 0
        assert bytes(term.output) == b"hello\r\ngot:hello\r\n40 120\r\n"


def test_ctrl_c_interrupts_the_foreground_command(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        term = Terminal(agent, ["cat"], cols=80, rows=24)
        term.type(b"one\n")
        term.until(b"one\r\none\r\n")  # echoed, then cat's own copy
        term.type(b"\x03")
        end = term.wait()
        assert (end["exit_code"], end["signal"]) == (130, 2), end


def test_ctrl_d_ends_the_input_and_a_kill_ends_the_command(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        term = Terminal(agent, ["cat"], cols=80, rows=24)
        term.type(b"\x04")
        assert term.wait()["exit_code"] == 0
        term = Terminal(agent, ["sleep", "600"], cols=80, rows=24)
        assert term.call({"op": "signal", "signal": 9})["ev"] == "ok"
        end = term.wait()
        assert (end["signal"], end["reason"]) == (9, "killed"), end


@pytest.mark.parametrize("pty", [
    {"cols": 0, "rows": 24}, {"cols": 80, "rows": proto.MAX_PTY_SIZE + 1}, {"cols": 80},
    {"cols": "80", "rows": 24}, {"cols": 80.0, "rows": 24}, [80, 24], "80x24", True,
])
def test_sizes_out_of_bounds_are_refused(tmp_path: Path, pty: object) -> None:
    with AgentProcess(tmp_path) as agent:
        reply, _ = agent.call({"op": "exec", "argv": ["true"], "pty": pty})
        assert (reply["ev"], reply["code"]) == ("error", "invalid_argument"), reply
        assert f"from 1 to {proto.MAX_PTY_SIZE}" in reply["message"]


def test_a_resize_needs_a_terminal_and_a_size_in_bounds(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        plain = agent.send({"op": "exec", "argv": ["sleep", "600"]})
        assert agent.read()[0]["ev"] == "started"
        reply, _ = agent.call({"op": "resize", "target": plain, "cols": 80, "rows": 24})
        assert (reply["code"], reply["message"]) == (
            "invalid_argument", "the command was not started on a terminal (pty)")
        term = Terminal(agent, ["sleep", "600"], cols=80, rows=24)
        for bad in ({"cols": 1001, "rows": 24}, {"rows": 24}, {}):
            reply = term.call({"op": "resize", **bad})
            assert reply["code"] == "invalid_argument", (bad, reply)
        reply, _ = agent.call({"op": "resize", "target": 999, "cols": 80, "rows": 24})
        assert reply["code"] == "not_found"
        for target in (plain, term.id):
            agent.send({"op": "signal", "target": target, "signal": 9})
