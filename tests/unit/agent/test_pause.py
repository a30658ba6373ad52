"""The agent's side of pausing: ``pause`` quiesces it, its timeouts stand still until the
next session, ``hello`` starts that session, ``attach`` follows a command again, and a
socket channel is closed by a pause (gVisor cannot checkpoint a connected host socket).

The sandbox is not frozen here (the agent runs as a plain process): what is tested is what
the agent does between its ``pause`` and the next session's ``hello``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from corral.api import agent_protocol as proto
from corral.runtime.agent_bundle import agent_env
from tests.fakes.agent import AgentProcess

pytestmark = pytest.mark.rootless


def pause(agent: AgentProcess) -> None:
    """Pause; frames sent before the answer (a command's output) are skipped."""
    req_id = agent.send({"op": proto.OP_PAUSE})
    while (reply := agent.read()[0])["id"] != req_id:
        pass
    assert reply["ev"] == "ok", reply


def hello(agent: AgentProcess) -> dict[str, object]:
    req_id = agent.send({"op": proto.OP_HELLO})
    reply, _ = agent.read()
    assert (reply["ev"], reply["id"], reply["version"]) == ("hello", req_id,
                                                           proto.PROTOCOL_VERSION), reply
    return reply


def running(agent: AgentProcess) -> list[int]:
    reply, _ = agent.call({"op": "processes"})
    return [p["id"] for p in reply["processes"]]


def test_a_paused_agent_says_nothing_until_the_next_hello(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        chatty = agent.send({"op": "exec", "cmd": "while :; do echo tick; sleep 0.05; done"})
        assert agent.read()[0]["ev"] == "started"
        pause(agent)  # output frames may come before the ok, none after
        agent.assert_quiet(0.5)
        reply = hello(agent)
        assert reply["next_id"] == agent._next  # the ids the node used are not reused
        # The new session follows nothing of the old one: the command runs, unheard.
        agent.assert_quiet(0.3)
        assert running(agent) == [chatty]


def test_paused_time_does_not_count_toward_a_commands_timeout(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        # 1 s of timeout, 1.6 s paused right after it started: it must not be killed, and it
        # ends on its own after 2 s of its own time.
        sleeper = agent.send({"op": "exec", "argv": ["sleep", "2"], "timeout": 1})
        assert agent.read()[0]["ev"] == "started"
        pause(agent)
        time.sleep(1.6)
        hello(agent)
        assert running(agent) == [sleeper]
        exit_event, _ = agent.read(timeout=5)
        assert (exit_event["id"], exit_event["ev"], exit_event["exit_code"],
                exit_event["reason"]) == (sleeper, "exit", 0, None)


def test_the_timeout_still_fires_on_the_running_clock(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        sleeper = agent.send({"op": "exec", "argv": ["sleep", "30"], "timeout": 1})
        assert agent.read()[0]["ev"] == "started"
        pause(agent)
        time.sleep(0.5)
        hello(agent)
        started = time.monotonic()
        exit_event, _ = agent.read(timeout=5)
        assert (exit_event["id"], exit_event["reason"]) == (sleeper, "timeout")
        assert 0.3 < time.monotonic() - started < 2.0  # its 1 s, less the 0.1 s before


def test_attach_follows_a_running_commands_output_again(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        echo = agent.send({"op": "exec", "cmd": "while read x; do echo got $x; done",
                           "stdin": True})
        assert agent.read()[0]["ev"] == "started"
        pause(agent)
        hello(agent)
        reply, _ = agent.call({"op": proto.OP_ATTACH, "target": echo})
        assert reply["ev"] == "ok", reply
        sent = agent.send({"op": "stdin", "target": echo}, b"one\n")
        # The stdin's ok and the command's output race each other out of the agent.
        frames = {(h["id"], h["ev"], d) for h, d in (agent.read(), agent.read())}
        assert frames == {(sent, "ok", b""), (echo, "stdout", b"got one\n")}
        missing, _ = agent.call({"op": proto.OP_ATTACH, "target": 9999})
        assert missing["code"] == "not_found"


def test_a_hello_unpaused_is_harmless_and_paused_only_hello_is_answered(
        tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        hello(agent)  # a hello on a running session: a new session, nothing else
        pause(agent)
        hello(agent)
        pause(agent)
        agent.send({"op": "ping"})  # paused: the next session starts with a hello
        agent.assert_quiet(0.5)
        hello(agent)
        assert agent.call({"op": "ping"})[0]["ev"] == "ok"


def test_a_pause_closes_a_socket_channel_and_waits_for_the_next_node(tmp_path: Path) -> None:
    """An adopted sandbox's channel is a socket: the pause closes it (a connected host
    socket would make gVisor's checkpoint fail), and the agent waits for the next session
    without its orphan grace: here a node on the socket again."""
    path = tmp_path / "node.sock"
    env = {**agent_env(orphan_grace=0), "CORRAL_AGENT_SOCKET": str(path),
           "CORRAL_AGENT_ORPHAN_GRACE": "2"}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(10)
    with AgentProcess(tmp_path, env=env) as agent:
        assert agent.process.stdin is not None
        agent.process.stdin.close()  # the node goes: the agent reconnects to the socket
        conn, _ = listener.accept()
        conn.settimeout(10)
        greeting = read_frame(conn)
        assert greeting["ev"] == "hello"
        conn.sendall(proto.encode({"id": 5, "op": proto.OP_PAUSE}))
        assert read_frame(conn) == {"id": 5, "ev": "ok"}
        assert conn.recv(1) == b"", "the agent kept its socket channel open"
        conn.close()
        time.sleep(3)  # past its orphan grace: a paused agent has none
        assert agent.process.poll() is None
        conn, _ = listener.accept()  # it comes back to the socket, and greets
        conn.settimeout(10)
        again = read_frame(conn)
        assert again["ev"] == "hello" and again["next_id"] == 6
        conn.close()
        agent.process.kill()
    listener.close()


def read_frame(conn: socket.socket) -> dict[str, object]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            assert chunk, "the agent closed the socket"
            data += chunk
        return data

    head_len, data_len = proto.parse_prefix(exactly(proto.HEADER.size), proto.MAX_REPLY_HEADER)
    header = proto.parse_header(exactly(head_len))
    exactly(data_len)
    return header
