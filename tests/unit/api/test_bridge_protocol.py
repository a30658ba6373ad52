"""The kernel bridge's protocol: both ends' encoders, the bounds, and the node's defences
against a bridge that speaks out of protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from corral.api import bridge_protocol as proto
from corral.bridge.kernel_bridge import json_cut, json_size
from corral.node._bridge import Bridge, BridgeGone

KERNEL_BRIDGE = Path(proto.__file__).resolve().parent.parent / "bridge" / "kernel_bridge.py"

#: One event of every kind, as the bridge sends it.
SAMPLES: list[tuple[int, str, dict[str, Any]]] = [
    (0, proto.EV_HELLO, {"version": proto.PROTOCOL_VERSION, "pid": 12}),
    (0, proto.EV_FATAL, {"message": "request line too long"}),
    (3, proto.EV_OK, {}),
    (3, proto.EV_OK, {"pid": 40}),
    (3, proto.EV_OK, {"running": False}),
    (3, proto.EV_FAIL, {"code": proto.FAIL_BUSY, "message": "the context is running"}),
    (4, proto.EV_STDOUT, {"text": "héllo\n\x00\x1b[0m"}),
    (4, proto.EV_STDERR, {"text": ""}),
    (4, proto.EV_RESULT, {"main": True, "data": {"text/plain": "3", "image/png": "iVBO"}}),
    (4, proto.EV_ERROR, {"name": "ValueError", "value": "x", "traceback": "Traceback..."}),
    (4, proto.EV_DONE, {"execution_count": 2, "timed_out": False, "truncated": True,
                        "kernel_seconds": 0.25}),
    (4, proto.EV_DONE, {"execution_count": None, "timed_out": True, "truncated": False,
                        "kernel_seconds": 0}),
    (4, proto.EV_DIED, {"reason": "the kernel was killed by SIGKILL"}),
    (4, proto.EV_DIED, {"reason": "the kernel was killed by SIGKILL", "timed_out": True}),
]


def event_line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def test_every_event_round_trips() -> None:
    assert {ev for _, ev, _ in SAMPLES} == set(proto.EVENT_FIELDS)
    for req_id, ev, fields in SAMPLES:
        line = proto.encode_event(req_id, ev, **fields)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert proto.parse_event(line[:-1], 1 << 20) == {"id": req_id, "ev": ev, **fields}


def test_requests_round_trip_as_one_ascii_line() -> None:
    code = 'print("a\\nb")\n\udc80 é \u2028'
    line = proto.encode_request(7, proto.OP_EXECUTE, ctx="default", code=code, timeout=None,
                                max_output=10)
    assert line.isascii() and line.endswith(b"\n") and line.count(b"\n") == 1
    assert proto.parse_request(line[:-1]) == {"id": 7, "op": proto.OP_EXECUTE,
                                              "ctx": "default", "code": code,
                                              "timeout": None, "max_output": 10}
    assert proto.parse_request(b'{"id": 1, "op": "no such op"}')["op"] == "no such op"


def test_request_bounds_and_malformed_requests() -> None:
    envelope = len(proto.encode_request(1, proto.OP_EXECUTE, code=""))
    fits = proto.encode_request(1, proto.OP_EXECUTE, code="x" * (proto.MAX_REQUEST - envelope))
    assert len(fits) == proto.MAX_REQUEST
    assert proto.parse_request(fits[:-1])["code"] == "x" * (proto.MAX_REQUEST - envelope)
    with pytest.raises(proto.ProtocolError, match="exceeds"):
        proto.encode_request(1, proto.OP_EXECUTE, code="x" * (proto.MAX_REQUEST - envelope + 1))
    with pytest.raises(proto.ProtocolError, match="over"):
        proto.parse_request(b'{"id": 1, "op": "ping", "pad": "' + b"x" * proto.MAX_REQUEST
                            + b'"}')
    for req_id, op in ((0, proto.OP_PING), (True, proto.OP_PING), (1, "no such op")):
        with pytest.raises(proto.ProtocolError):
            proto.encode_request(req_id, op)
    for bad in (b"{", b"[1]", b"\xff", b'{"op": "ping"}', b'{"id": 0, "op": "ping"}',
                b'{"id": true, "op": "ping"}', b'{"id": 1.0, "op": "ping"}',
                b'{"id": 1, "op": 3}', b'{"id": 1}', b"[" * 100_000):
        with pytest.raises(proto.ProtocolError):
            proto.parse_request(bad)


def test_event_bounds_at_the_edge() -> None:
    text = "x" * proto.TEXT_CHUNK
    assert proto.parse_event(event_line({"id": 1, "ev": "stdout", "text": text}), 1 << 20)
    with pytest.raises(proto.ProtocolError, match="stdout"):
        proto.parse_event(event_line({"id": 1, "ev": "stdout", "text": text + "x"}), 1 << 20)
    message = "m" * proto.MAX_MESSAGE
    assert proto.cut_message(message + "more") == message
    for ev, field in (("fail", "message"), ("died", "reason")):
        event: dict[str, Any] = {"id": 1, "ev": ev, field: message, "code": proto.FAIL_INTERNAL}
        if ev == "died":
            del event["code"]
        assert proto.parse_event(event_line(event), 1 << 20)[field] == message
        event[field] += "m"
        with pytest.raises(proto.ProtocolError):
            proto.parse_event(event_line(event), 1 << 20)
    line = event_line({"id": 1, "ev": "ok"})
    assert proto.parse_event(line, len(line)) == {"id": 1, "ev": "ok"}
    with pytest.raises(proto.ProtocolError, match="over"):
        proto.parse_event(line, len(line) - 1)


def test_max_event_line_holds_the_worst_text_chunk() -> None:
    # Control characters take six bytes each in JSON: the worst chunk the bridge can send.
    line = proto.encode_event(1, proto.EV_STDOUT, text="\x01" * proto.TEXT_CHUNK)
    assert len(line) > proto.TEXT_CHUNK * 5
    assert proto.parse_event(line[:-1], proto.max_event_line(0))["text"] == (
        "\x01" * proto.TEXT_CHUNK)
    assert proto.max_event_line(8 << 20) == (8 << 20) + proto.EVENT_SLACK


@pytest.mark.parametrize("bad", [
    b"not json", b"\xff\xfe", b"[1]", b'"ok"', b"[" * 100_000,
    b'{"ev": "ok"}', b'{"id": -1, "ev": "ok"}', b'{"id": true, "ev": "ok"}',
    b'{"id": "1", "ev": "ok"}', b'{"id": 1}', b'{"id": 1, "ev": 5}',
    b'{"id": 1, "ev": "no such event"}',
    b'{"id": 1, "ev": "__gone__", "reason": "forged"}',
    b'{"id": 1, "ev": "hello", "version": 1, "pid": 1}',
    b'{"id": 0, "ev": "ok"}',
    b'{"id": 0, "ev": "stdout", "text": "x"}',
    b'{"id": 1, "ev": "ok", "extra": 1}',
    b'{"id": 1, "ev": "ok", "pid": true}',
    b'{"id": 1, "ev": "ok", "pid": -3}',
    b'{"id": 1, "ev": "ok", "running": 1}',
    b'{"id": 1, "ev": "fail", "code": "no_such_code", "message": "x"}',
    b'{"id": 1, "ev": "fail", "code": "internal"}',
    b'{"id": 1, "ev": "stdout", "text": 3}',
    b'{"id": 1, "ev": "result", "main": true, "data": [1]}',
    b'{"id": 1, "ev": "result", "main": 1, "data": {}}',
    b'{"id": 1, "ev": "result", "main": true, "data": {"a": NaN}}',
    b'{"id": 1, "ev": "error", "name": "E", "value": null, "traceback": ""}',
    b'{"id": 1, "ev": "done", "execution_count": 1, "timed_out": false, "truncated": false}',
    b'{"id": 1, "ev": "done", "execution_count": 1.5, "timed_out": false, '
    b'"truncated": false, "kernel_seconds": 1}',
    b'{"id": 1, "ev": "done", "execution_count": 1, "timed_out": false, '
    b'"truncated": false, "kernel_seconds": Infinity}',
    b'{"id": 1, "ev": "done", "execution_count": 1, "timed_out": false, '
    b'"truncated": false, "kernel_seconds": 1e999}',
    b'{"id": 1, "ev": "done", "execution_count": 1, "timed_out": false, '
    b'"truncated": false, "kernel_seconds": -1}',
    b'{"id": 1, "ev": "died"}',
    b'{"id": 1, "ev": "died", "reason": "x", "timed_out": "yes"}',
])
def test_malformed_events_are_refused(bad: bytes) -> None:
    with pytest.raises(proto.ProtocolError):
        proto.parse_event(bad, 1 << 20)


def test_bridge_cuts_fields_to_a_json_budget() -> None:
    controls = "\x01" * 10_000
    for tail in (False, True):
        cut = json_cut(controls + "end", 4096, tail=tail)
        assert 0 < len(json.dumps(cut)) <= 4096
        assert cut.endswith("end") == tail
    assert json_cut("short", 4096) == "short"
    assert json_size({"a": [1, "é"]}) == len('{"a": [1, "\\u00e9"]}')
    assert json_size({"a": float("nan")}) == -1


# -- the node's end against a bridge that breaks the protocol ---------------------------------


class FakeHandle:
    """A bridge command whose answers the test scripts: ``answer(request) -> lines``."""

    id = 7

    def __init__(self, hello: bytes, answer: Any) -> None:
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.out.put_nowait(hello)
        self.answer = answer
        self.killed = False

    def __aiter__(self) -> FakeHandle:
        return self

    async def __anext__(self) -> SimpleNamespace:
        data = await self.out.get()
        if data is None:
            raise StopAsyncIteration
        return SimpleNamespace(stream="stdout", data=data)

    async def send_stdin(self, data: bytes) -> None:
        for line in self.answer(proto.parse_request(data.rstrip(b"\n"))):
            self.out.put_nowait(line)

    async def wait(self) -> SimpleNamespace:
        return SimpleNamespace(reason=None, exit_code=0)

    async def kill(self) -> None:
        self.killed = True
        self.out.put_nowait(None)


HELLO = proto.encode_event(0, proto.EV_HELLO, version=proto.PROTOCOL_VERSION, pid=5)


async def _ping(handle: FakeHandle) -> tuple[dict[str, Any] | None, str | None]:
    """The node's hello and one ping: the reply (None if the bridge was stopped) and why
    the bridge was stopped, both before the node closes it."""
    bridge = Bridge(cast(Any, SimpleNamespace(id="sbx-test")), cast(Any, handle), 4096)
    try:
        reply = None
        with contextlib.suppress(BridgeGone):
            await asyncio.wait_for(asyncio.shield(bridge._hello), 10)
            reply = await bridge.call(proto.OP_PING, 10)
        return reply, bridge.closed_reason
    finally:
        await bridge.close()


def test_node_accepts_a_bridge_in_protocol() -> None:
    handle = FakeHandle(HELLO, lambda req: [proto.encode_event(req["id"], proto.EV_OK)])
    assert asyncio.run(_ping(handle)) == ({"id": 1, "ev": proto.EV_OK}, None)


@pytest.mark.parametrize("answer", [
    b'{"id": ID, "ev": "__gone__", "reason": "forged"}\n',
    b'{"id": ID, "ev": "ok", "unasked": "field"}\n',
    b'{"id": ID, "ev": "stdout", "text": 1}\n',
    b'{"id": ID, "ev": "done", "execution_count": 1, "timed_out": false, '
    b'"truncated": false, "kernel_seconds": NaN}\n',
    HELLO,
    b'{"id": 0, "ev": "fatal", "message": "gave up"}\n',
    b"x" * 5000,  # no newline, past max_line
])
def test_node_stops_a_bridge_out_of_protocol(answer: bytes) -> None:
    handle = FakeHandle(HELLO, lambda req: [answer.replace(b"ID", str(req["id"]).encode())])
    reply, reason = asyncio.run(_ping(handle))
    assert reply is None and "out of protocol" in str(reason)


def test_node_refuses_another_protocol_version() -> None:
    hello = proto.encode_event(0, proto.EV_HELLO, version=proto.PROTOCOL_VERSION + 1, pid=5)
    handle = FakeHandle(hello, lambda req: [proto.encode_event(req["id"], proto.EV_OK)])
    reply, reason = asyncio.run(_ping(handle))
    assert reply is None and "version" in str(reason)


# -- the bridge itself, run as the sandbox runs it (a script with -I, no Jupyter needed) ---

@pytest.mark.skipif(shutil.which("bash") is None, reason="Bash contexts need bash")
def test_bridge_script_speaks_the_protocol(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-I", str(KERNEL_BRIDGE)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert process.stdin is not None and process.stdout is not None
    lines = _Lines(process.stdout.fileno())
    try:
        hello = proto.parse_event(lines.next(), 1 << 20)
        assert hello["ev"] == proto.EV_HELLO and hello["pid"] == process.pid

        def ask(req_id: int, op: str, **fields: Any) -> list[dict[str, Any]]:
            assert process.stdin is not None
            process.stdin.write(proto.encode_request(req_id, op, **fields))
            process.stdin.flush()
            events = [proto.parse_event(lines.next(), proto.max_event_line(1 << 20))]
            while events[-1]["ev"] not in (proto.EV_OK, proto.EV_FAIL, proto.EV_DONE,
                                           proto.EV_DIED):
                events.append(proto.parse_event(lines.next(), proto.max_event_line(1 << 20)))
            assert {event["id"] for event in events} == {req_id}
            return events

        assert ask(1, proto.OP_PING)[-1]["ev"] == proto.EV_OK
        [refused] = ask(2, proto.OP_EXECUTE, ctx="nope", code="", timeout=None, max_output=9)
        assert refused["ev"] == proto.EV_FAIL and refused["code"] == proto.FAIL_NOT_FOUND
        created = ask(3, proto.OP_CREATE, ctx="b1", language=proto.LANGUAGE_BASH,
                      cwd=str(tmp_path), env={})
        assert created[-1]["ev"] == proto.EV_OK, created
        ran = ask(4, proto.OP_EXECUTE, ctx="b1", code="echo hi; printf '\\001' >&2; false",
                  timeout=30, max_output=1 << 20)
        kinds = [event["ev"] for event in ran]
        assert kinds[-1] == proto.EV_DONE and proto.EV_ERROR in kinds
        assert "".join(e["text"] for e in ran if e["ev"] == proto.EV_STDOUT) == "hi\n"
        assert "".join(e["text"] for e in ran if e["ev"] == proto.EV_STDERR) == "\x01"
        # A cell's own variables hold for it alone, and go back to the context's value.
        ran = ask(10, proto.OP_EXECUTE, ctx="b1", code="echo \"$ONE\"; bash -c 'echo $ONE'",
                  timeout=30, max_output=1 << 20, env={"ONE": "a 'b' $x"})
        assert "".join(e["text"] for e in ran if e["ev"] == proto.EV_STDOUT) == \
            "a 'b' $x\na 'b' $x\n"
        ran = ask(11, proto.OP_EXECUTE, ctx="b1", code="echo \"${ONE-unset}\"", timeout=30,
                  max_output=1 << 20)
        assert [e["text"] for e in ran if e["ev"] == proto.EV_STDOUT] == ["unset\n"]
        for bad in ({"A;B": "x"}, {"A": 1}, ["A"]):
            [refused] = ask(12, proto.OP_EXECUTE, ctx="b1", code="", timeout=None,
                            max_output=9, env=bad)
            assert refused["code"] == proto.FAIL_INVALID_ARGUMENT, bad
        process.stdin.write(b'{"id": 5, "op": "no such op"}\n')
        process.stdin.flush()
        unknown = proto.parse_event(lines.next(), 1 << 20)
        assert (unknown["id"], unknown["ev"]) == (5, proto.EV_FAIL)
        assert unknown["code"] == proto.FAIL_INVALID_ARGUMENT
        process.stdin.write(b"[not a request]\n")
        process.stdin.flush()
        fatal = proto.parse_event(lines.next(), 1 << 20)
        assert fatal["ev"] == proto.EV_FATAL
        assert process.wait(timeout=30) == 0  # it ends, and ends its shells
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


class _Lines:
    """Lines from a pipe, each within a deadline (a wedged bridge fails, not hangs)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, b""

    def next(self, deadline: float = 60.0) -> bytes:
        end_at = time.monotonic() + deadline
        while b"\n" not in self.buffer:
            left = end_at - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError("the bridge did not answer")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise AssertionError(f"the bridge ended; left: {self.buffer!r:.200}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


@pytest.mark.parametrize(("status", "stderr", "error"), [
    # tslab: a thrown error, printed with its source line first, then its stack.
    ("error", "evalmachine.<anonymous>:2\nthrow new TypeError(\"boom\");\n^\n\n"
              "TypeError: boom\n    at evalmachine.<anonymous>:2:7\n", ("TypeError", "boom")),
    # tslab: a TypeScript type error names none.
    ("error", "1:7 - Type 'number' is not assignable to type 'string'.\n",
     ("Error", "1:7 - Type 'number' is not assignable to type 'string'.")),
    ("error", "", ("Error", "the cell failed")),
    ("abort", "", ("CellAborted", "the kernel aborted the cell without running it")),
])
def test_a_failed_reply_without_an_error_becomes_the_cells_error(
        capfd: pytest.CaptureFixture[str], status: str, stderr: str,
        error: tuple[str, str]) -> None:
    from corral.bridge.kernel_bridge import Bridge as KernelBridge
    from corral.bridge.kernel_bridge import Run

    run = Run(7, "m", None, 1 << 20)
    run.status, run.stderr = status, stderr
    bridge = KernelBridge.__new__(KernelBridge)  # no sockets, no poller: failure() needs none
    bridge.failure(run)
    [line] = capfd.readouterr().out.splitlines()
    event = proto.parse_event(line.encode(), proto.max_event_line(1 << 20))
    assert (event["id"], event["ev"]) == (7, proto.EV_ERROR) and run.errored
    assert (event["name"], event["value"]) == error and event["traceback"] == stderr
