"""The agent's tunnels to ports on its own loopback (``connect``, behind exposed ports).

The agent runs on this host (``AgentProcess``), so its loopback is this host's: each test
serves a port on 127.0.0.1 or ::1 with a small TCP server and drives a tunnel to it frame
by frame. Nothing here sends a packet to any other address.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.api import agent_protocol as proto
from corral.api import limits
from corral.runtime.agent_bundle import agent_env
from tests.fakes.agent import AgentProcess, Frame

pytestmark = pytest.mark.rootless

WAIT = 30.0
#: Chunks the node may leave unacknowledged on a tunnel (agent_protocol.py).
UNACKED = proto.STREAM_WINDOW // 2


class Server:
    """A TCP server on a loopback address, running ``handler`` on each connection (a thread
    each); a context manager that closes everything it opened."""

    def __init__(self, handler: Callable[[socket.socket], None], *, host: str = "127.0.0.1",
                 rcvbuf: int | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if rcvbuf is not None:  # inherited by accepted sockets; fixes their window small
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind((host, 0))
        self.listener.listen(512)
        self.port: int = self.listener.getsockname()[1]
        self.handler = handler
        self.peers: list[str] = []
        self.connections: list[socket.socket] = []
        self.handlers: list[threading.Thread] = []
        self.accepted = threading.Semaphore(0)
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self.listener.close()
        for conn in list(self.connections):
            conn.close()

    def wait_accepted(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.accepted.acquire(timeout=WAIT), "the agent never connected"

    def join(self) -> None:
        for thread in list(self.handlers):
            thread.join(WAIT)
            assert not thread.is_alive(), "a connection's handler did not finish"

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.peers.append(peer[0])
            thread = threading.Thread(target=self.handler, args=(conn,), daemon=True)
            self.handlers.append(thread)
            thread.start()
            self.accepted.release()


def read_to_eof(conn: socket.socket) -> bytes:
    received = bytearray()
    while chunk := conn.recv(1 << 16):
        received += chunk
    return bytes(received)


def echo(conn: socket.socket) -> None:
    while chunk := conn.recv(1 << 16):
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)


def hold(conn: socket.socket) -> None:
    """Keep the connection open until the agent closes it."""
    try:
        read_to_eof(conn)
    except OSError:
        pass


def connect(agent: AgentProcess, port: Any) -> int:
    reply, _ = agent.call({"op": "connect", "port": port})
    assert reply["ev"] == "ok", reply
    return int(reply["id"])


def chunk(agent: AgentProcess, tunnel: int, data: bytes, *, eof: bool = False) -> None:
    agent.send({"id": 0, "op": "chunk", "target": tunnel, **({"eof": True} if eof else {})}, data)


def exchange(agent: AgentProcess, tunnel: int, chunks: list[bytes], *, eof: bool,
             others: list[Frame] | None = None) -> tuple[bytes, list[str]]:
    """Do what the node does: send ``chunks`` (the last with ``eof``) keeping at most
    ``UNACKED`` unacknowledged, and read the tunnel's frames, crediting each data frame,
    until every chunk was acked and the tunnel's read direction ended. Returns the bytes
    received and the tunnel's events in order; frames of other ids go to ``others``."""
    received, events = bytearray(), []
    pending, unacked, ended = list(chunks), 0, False
    while pending or unacked or not ended:
        while pending and unacked < UNACKED:
            chunk(agent, tunnel, pending.pop(0), eof=eof and not pending)
            unacked += 1
        header, data = agent.read()
        if header["id"] != tunnel and others is not None:
            others.append((header, data))
            continue
        assert header["id"] == tunnel and header["ev"] in ("data", "ack", "end"), header
        events.append(header["ev"])
        if header["ev"] == "data":
            assert 0 < len(data) <= proto.CHUNK
            received += data
            agent.send({"id": 0, "op": "credit", "target": tunnel, "n": 1})
        elif header["ev"] == "ack":
            unacked -= 1
        else:
            assert not ended, "a second end"
            ended = True
    return bytes(received), events


def ping(agent: AgentProcess, timeout: float = WAIT) -> list[Frame]:
    """Ping, and read up to its reply; returns the frames that came before it."""
    req_id = agent.send({"op": "ping"})
    before: list[Frame] = []
    while True:
        header, data = agent.read(timeout)
        if header["id"] == req_id:
            assert header["ev"] == "ok", header
            return before
        before.append((header, data))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_bytes_round_trip_through_a_tunnel(tmp_path: Path) -> None:
    chunks = [b"hello", b" ", b"world" * 1000, b"\0\xff" * 40_000]
    with Server(echo) as server, AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, server.port)
        received, events = exchange(agent, tunnel, chunks, eof=True)
        assert received == b"".join(chunks)
        assert events.count("ack") == len(chunks)
        assert server.peers == ["127.0.0.1"]
        ping(agent)
        agent.assert_quiet(0.2)


def test_megabytes_flow_both_ways_under_flow_control(tmp_path: Path) -> None:
    to_app, from_app = os.urandom(4 << 20), os.urandom(4 << 20)
    got: list[bytes] = []

    def both_ways(conn: socket.socket) -> None:
        sender = threading.Thread(target=conn.sendall, args=(from_app,))
        sender.start()
        got.append(read_to_eof(conn))
        sender.join()
        conn.shutdown(socket.SHUT_WR)

    chunks = [to_app[at:at + proto.CHUNK] for at in range(0, len(to_app), proto.CHUNK)]
    with Server(both_ways) as server, AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, server.port)
        received, events = exchange(agent, tunnel, chunks, eof=True)
        server.join()
    assert received == from_app
    assert got == [to_app]
    assert events.count("ack") == len(chunks) and events.count("end") == 1


def test_data_waits_for_credits(tmp_path: Path) -> None:
    from_app = os.urandom(4 << 20)

    def send_all(conn: socket.socket) -> None:
        conn.sendall(from_app)
        conn.close()

    with Server(send_all) as server, AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, server.port)
        received = bytearray()
        for _ in range(proto.STREAM_WINDOW):
            header, data = agent.read()
            assert header == {"id": tunnel, "ev": "data"}, header
            received += data
        agent.assert_quiet(0.3)  # the window is spent
        agent.send({"id": 0, "op": "credit", "target": tunnel, "n": proto.STREAM_WINDOW})
        rest, events = exchange(agent, tunnel, [], eof=False)
        assert bytes(received) + rest == from_app and events[-1] == "end"


def test_eof_half_closes_and_the_reply_still_comes(tmp_path: Path) -> None:
    def count_then_reply(conn: socket.socket) -> None:
        received = read_to_eof(conn)  # returns only once the tunnel's write side shut down
        conn.sendall(f"got {len(received)} bytes".encode())
        conn.close()

    with Server(count_then_reply) as server, AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, server.port)
        received, events = exchange(agent, tunnel, [b"abc", b"de"], eof=True)
        assert received == b"got 5 bytes"
        assert events.index("data") < events.index("end")
        assert events.count("ack") == 2


def test_an_empty_eof_chunk_half_closes(tmp_path: Path) -> None:
    def count_then_reply(conn: socket.socket) -> None:
        conn.sendall(str(len(read_to_eof(conn))).encode())
        conn.close()

    with Server(count_then_reply) as server, AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, server.port)
        received, _ = exchange(agent, tunnel, [b"xyz", b""], eof=True)
        assert received == b"3"


def test_the_app_closing_first_ends_the_read_direction(tmp_path: Path) -> None:
    def say_bye(conn: socket.socket) -> None:
        conn.sendall(b"bye")
        conn.close()

    with Server(say_bye) as server, AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, server.port)
        received, events = exchange(agent, tunnel, [], eof=False)
        assert (received, events) == (b"bye", ["data", "end"])
        agent.send({"id": 0, "op": "cancel", "target": tunnel})
        assert ping(agent) == []


def test_nothing_listening_is_port_unavailable(tmp_path: Path) -> None:
    port = free_port()
    with AgentProcess(tmp_path) as agent:
        reply, _ = agent.call({"op": "connect", "port": port})
        assert (reply["ev"], reply["code"]) == ("error", "port_unavailable"), reply
        assert f"nothing is listening on port {port} in the sandbox" in reply["message"]
        assert "listen on 0.0.0.0 or 127.0.0.1" in reply["message"]
        agent.assert_quiet(0.2)


@pytest.mark.parametrize("port", [0, 70000, -1, "80", True, 80.0, None, "absent"])
def test_a_port_out_of_range_is_refused(tmp_path: Path, port: Any) -> None:
    fields = {} if port == "absent" else {"port": port}
    with AgentProcess(tmp_path) as agent:
        reply, _ = agent.call({"op": "connect", **fields})
        assert (reply["ev"], reply["code"], reply["message"]) == (
            "error", "invalid_argument", "port must be an integer between 1 and 65535")


def test_cancel_closes_the_connection_and_silences_the_tunnel(tmp_path: Path) -> None:
    seen: list[bytes | str] = []
    saw_close = threading.Event()

    def watch(conn: socket.socket) -> None:
        try:
            seen.append(read_to_eof(conn))
        except OSError as exc:
            seen.append(type(exc).__name__)
        saw_close.set()
        try:
            conn.sendall(b"too late")
        except OSError:
            pass

    with Server(watch) as server, AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, server.port)
        chunk(agent, tunnel, b"x")
        assert agent.read()[0] == {"id": tunnel, "ev": "ack"}
        agent.send({"id": 0, "op": "cancel", "target": tunnel})
        assert saw_close.wait(WAIT), "the app's connection stayed open"
        assert seen in ([b"x"], ["ConnectionResetError"])
        # A chunk or credit for the closed tunnel is dropped, not answered.
        chunk(agent, tunnel, b"y")
        agent.send({"id": 0, "op": "credit", "target": tunnel, "n": 4})
        assert ping(agent) == []
        agent.assert_quiet(0.3)


def test_tunnels_one_after_another_reuse_the_agents_threads(tmp_path: Path) -> None:
    """A tunnel's threads serve later tunnels (starting threads is slow under gVisor)."""
    with Server(echo) as server, AgentProcess(tmp_path) as agent:
        threads = Path(f"/proc/{agent.process.pid}/task")
        ping(agent)
        before = {entry.name for entry in threads.iterdir()}
        seen: set[str] = set()
        for round_ in range(20):
            tunnel = connect(agent, server.port)
            seen |= {entry.name for entry in threads.iterdir()}
            payload = f"round {round_}".encode()
            received, _ = exchange(agent, tunnel, [payload], eof=True)
            assert received == payload
        # Two threads a tunnel: without reuse, 40 would have been started.
        assert len(seen - before) <= 8, sorted(seen - before)
        ping(agent)
        agent.assert_quiet(0.2)


def test_one_tunnel_past_the_limit_is_refused(tmp_path: Path) -> None:
    with Server(hold) as server, AgentProcess(tmp_path) as agent:
        tunnels = [connect(agent, server.port) for _ in range(limits.MAX_PORT_CONNECTIONS)]
        server.wait_accepted(limits.MAX_PORT_CONNECTIONS)
        reply, _ = agent.call({"op": "connect", "port": server.port})
        assert (reply["ev"], reply["code"]) == ("error", "resource_exhausted"), reply
        assert str(limits.MAX_PORT_CONNECTIONS) in reply["message"]
        agent.send({"id": 0, "op": "cancel", "target": tunnels[0]})
        connect(agent, server.port)


def test_a_stalled_app_stalls_only_its_own_tunnel(tmp_path: Path) -> None:
    """An app that does not read blocks its tunnel's writes; the agent serves on."""
    release = threading.Event()
    got: list[int] = []

    def stall(conn: socket.socket) -> None:
        release.wait(WAIT)
        got.append(len(read_to_eof(conn)))

    payload = os.urandom(proto.MAX_DATA)
    with Server(stall, rcvbuf=4096) as stalled, Server(echo) as echoing, \
            AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, stalled.port)
        # More than the two sockets' buffers hold (the app's is small): writes block.
        for n in range(UNACKED):
            chunk(agent, tunnel, payload, eof=n == UNACKED - 1)
        before = ping(agent)
        assert all(frame[0] == {"id": tunnel, "ev": "ack"} for frame in before), before
        assert len(before) < UNACKED, "the writes never blocked: the test proves nothing"
        others: list[Frame] = []
        second = connect(agent, echoing.port)
        received, _ = exchange(agent, second, [b"still here"], eof=True, others=others)
        assert received == b"still here"
        release.set()
        assert all(frame[0] == {"id": tunnel, "ev": "ack"} for frame in others), others
        acks = len(before) + len(others)
        while acks < UNACKED:
            assert agent.read()[0] == {"id": tunnel, "ev": "ack"}
            acks += 1
        stalled.join()
        assert got == [UNACKED * proto.MAX_DATA]


def test_a_node_that_ignores_acks_is_refused(tmp_path: Path) -> None:
    """The writer's queue is bounded: chunks past it close the tunnel with an error."""
    release = threading.Event()

    def stall(conn: socket.socket) -> None:
        release.wait(WAIT)

    with Server(stall, rcvbuf=4096) as server, \
            AgentProcess(tmp_path) as agent:
        tunnel = connect(agent, server.port)
        payload = os.urandom(proto.MAX_DATA)
        for _ in range(64):
            chunk(agent, tunnel, payload)
        while True:
            header, _ = agent.read()
            assert header["id"] == tunnel, header
            if header["ev"] == "error":
                break
            assert header["ev"] == "ack", header
        assert header["code"] == "invalid_argument" and "ack" in header["message"], header
        assert ping(agent) == []
        release.set()


def test_an_app_on_ipv6_loopback_only_is_reached(tmp_path: Path) -> None:
    try:
        server = Server(echo, host="::1")
    except OSError:
        pytest.skip("this host has no ::1")
    with server, socket.socket() as holder:
        # Nothing listens on 127.0.0.1 at that port: the address is held, not listened on.
        try:
            holder.bind(("127.0.0.1", server.port))
        except OSError:
            pytest.skip(f"127.0.0.1:{server.port} is taken")
        with AgentProcess(tmp_path) as agent:
            tunnel = connect(agent, server.port)
            received, _ = exchange(agent, tunnel, [b"over v6"], eof=True)
        assert received == b"over v6"
        assert server.peers == ["::1"]


def test_tunnels_close_when_the_node_goes_away(tmp_path: Path) -> None:
    """The agent outlives its node (waiting for another); the node's tunnels do not."""
    closed = threading.Event()
    env = {**agent_env(orphan_grace=0), "CORRAL_AGENT_SOCKET": str(tmp_path / "node.sock"),
           "CORRAL_AGENT_ORPHAN_GRACE": "60"}
    def hold_then_tell(conn: socket.socket) -> None:
        hold(conn)
        closed.set()

    with Server(hold_then_tell) as server, \
            AgentProcess(tmp_path, env=env) as agent:
        connect(agent, server.port)
        server.wait_accepted()
        assert agent.process.stdin is not None
        agent.process.stdin.close()
        assert closed.wait(WAIT), "the tunnel outlived the node"
        assert agent.process.poll() is None
        agent.process.kill()
