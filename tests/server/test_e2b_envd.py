"""envd's process service under ``/e2b`` over HTTP, with hand-built Connect envelopes
(docs/research/e2b-protocol.md §5): Start's event stream, background processes listed,
signalled and fed stdin by pid, the access-token check and tenants kept apart.

The real SDKs drive the same paths in test_e2b_sdk.py.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from corral.server.e2b import connect

from .conftest import Server
from .test_e2b_control import assert_e2b_error, e2b_client, e2b_sandbox

STREAM = {"Content-Type": connect.STREAM_TYPE, "Connect-Protocol-Version": "1"}


@pytest.fixture
def box(server: Server) -> Iterator[dict[str, Any]]:
    """A sandbox of tenant alpha's made through E2B's create: its id and envd token."""
    with e2b_sandbox(server, "base") as body:
        yield body


def envd(server: Server, sandbox: dict[str, Any], token: str | None = None) -> httpx.Client:
    """A client as the SDK's envd one: no key, the sandbox's id, port and token."""
    return httpx.Client(base_url=server.url + "/e2b", timeout=120.0, headers={
        "E2b-Sandbox-Id": sandbox["sandboxID"], "E2b-Sandbox-Port": "49983",
        "X-Access-Token": sandbox["envdAccessToken"] if token is None else token})


def start(client: httpx.Client, cmd: str, **fields: Any) -> list[tuple[int, dict[str, Any]]]:
    """Start ``bash -l -c cmd`` and read its whole stream."""
    message = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, **fields}
    answer = client.post("/process.Process/Start", headers=STREAM,
                         content=connect.envelope(message))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == connect.STREAM_TYPE
    return connect.read_envelopes(answer.content)


def unary(client: httpx.Client, method: str, message: dict[str, Any]) -> httpx.Response:
    return client.post(f"/process.Process/{method}", json=message,
                       headers={"Connect-Protocol-Version": "1"})


def output(frames: list[tuple[int, dict[str, Any]]], stream: str) -> str:
    return "".join(base64.b64decode(m["event"]["data"][stream]).decode()
                   for flags, m in frames if not flags
                   and stream in m.get("event", {}).get("data", {}))


def test_start_streams_start_output_and_end(server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        assert client.get("/health").status_code == 204
        frames = start(client, "echo out; echo err >&2; echo $A; pwd; exit 3",
                       **{"stdin": False})
        # with envs and cwd, as the SDK sends them
        message = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo $A; pwd"],
                               "envs": {"A": "from-envs"}, "cwd": "/tmp"}, "stdin": False}
        answer = client.post("/process.Process/Start", headers=STREAM,
                             content=connect.envelope(message))
        second = connect.read_envelopes(answer.content)
    first_flags, first = frames[0]
    assert first_flags == 0 and first["event"]["start"]["pid"] > 0
    assert output(frames, "stdout").startswith("out\n")
    assert output(frames, "stderr") == "err\n"
    ends = [m["event"]["end"] for flags, m in frames if not flags and "end" in m["event"]]
    assert ends == [{"exitCode": 3, "exited": True, "status": "exit status 3",
                     "error": "exit status 3"}]
    assert frames[-1] == (connect.END_STREAM, {})
    assert output(second, "stdout") == "from-envs\n/tmp\n"


def test_background_listed_then_killed_by_pid(server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client, client.stream(
            "POST", "/process.Process/Start", headers=STREAM,
            content=connect.envelope({"process": {"cmd": "/bin/bash",
                                                  "args": ["-l", "-c", "sleep 600"]}})
    ) as running:
        head = running.iter_bytes()
        chunk = next(head)
        pid = connect.read_envelopes(chunk[:5 + int.from_bytes(chunk[1:5], "big")])[0][1][
            "event"]["start"]["pid"]
        listed = unary(client, "List", {})
        assert listed.status_code == 200, listed.text
        entry = [p for p in listed.json()["processes"] if p["pid"] == pid]
        assert entry == [{"config": {"cmd": "/bin/bash", "args": ["-l", "-c", "sleep 600"],
                                     "envs": {}}, "pid": pid}]
        killed = unary(client, "SendSignal", {"process": {"pid": pid},
                                              "signal": "SIGNAL_SIGKILL"})
        assert (killed.status_code, killed.json()) == (200, {})
        rest = connect.read_envelopes(chunk[5 + int.from_bytes(chunk[1:5], "big"):]
                                      + b"".join(head))
    ends = [m["event"]["end"] for flags, m in rest if not flags and "end" in m["event"]]
    assert ends == [{"exitCode": -1, "exited": False, "status": "signal: killed",
                     "error": "signal: killed"}]
    with envd(server, box) as client:
        assert pid not in [p["pid"] for p in unary(client, "List", {}).json()["processes"]]
        gone = unary(client, "SendSignal", {"process": {"pid": pid},
                                            "signal": "SIGNAL_SIGKILL"})
        assert (gone.status_code, gone.json()["code"]) == (404, "not_found")


def test_a_left_stream_leaves_its_process_running_for_connect(
        server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        with client.stream("POST", "/process.Process/Start", headers=STREAM,
                           content=connect.envelope({"process": {
                               "cmd": "/bin/bash", "args": ["-l", "-c", "read x; echo got $x"]},
                               "stdin": True})) as running:
            chunk = next(running.iter_bytes())
        pid = connect.read_envelopes(chunk[:5 + int.from_bytes(chunk[1:5], "big")])[0][1][
            "event"]["start"]["pid"]
        assert pid in [p["pid"] for p in unary(client, "List", {}).json()["processes"]]
        with client.stream("POST", "/process.Process/Connect", headers=STREAM,
                           content=connect.envelope({"process": {"pid": pid}})) as followed:
            chunks = followed.iter_bytes()
            first = next(chunks)
            sent = unary(client, "SendInput", {"process": {"pid": pid},
                                               "input": {"stdin": base64.b64encode(
                                                   b"hello\n").decode()}})
            assert (sent.status_code, sent.json()) == (200, {})
            frames = connect.read_envelopes(first + b"".join(chunks))
    assert frames[0][1]["event"]["start"]["pid"] == pid
    assert output(frames, "stdout") == "got hello\n"


def test_close_stdin_ends_the_input(server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client, client.stream(
            "POST", "/process.Process/Start", headers=STREAM,
            content=connect.envelope({"process": {"cmd": "/bin/bash",
                                                  "args": ["-l", "-c", "wc -c"]},
                                      "stdin": True})) as running:
        chunks = running.iter_bytes()
        first = next(chunks)
        pid = connect.read_envelopes(first[:5 + int.from_bytes(first[1:5], "big")])[0][1][
            "event"]["start"]["pid"]
        for data in (b"abc", b"de"):
            sent = unary(client, "SendInput", {"process": {"pid": pid}, "input": {
                "stdin": base64.b64encode(data).decode()}})
            assert sent.status_code == 200, sent.text
        closed = unary(client, "CloseStdin", {"process": {"pid": pid}})
        assert (closed.status_code, closed.json()) == (200, {})
        frames = connect.read_envelopes(first + b"".join(chunks))
    assert output(frames, "stdout").strip() == "5"


def _envelopes(chunks: Iterator[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """A stream's envelopes, each as soon as it has come whole."""
    held = b""
    for chunk in chunks:
        held += chunk
        while len(held) >= 5 and len(held) >= 5 + int.from_bytes(held[1:5], "big"):
            size = 5 + int.from_bytes(held[1:5], "big")
            yield connect.read_envelopes(held[:size])[0]
            held = held[size:]


def test_a_pty_streams_pty_data_takes_input_and_resizes(server: Server,
                                                        box: dict[str, Any]) -> None:
    message = {"process": {"cmd": "/bin/bash", "args": ["-c", "stty size; read x; stty size"]},
               "pty": {"size": {"cols": 90, "rows": 20}}}
    shown, frames = b"", []
    with envd(server, box) as client, client.stream(
            "POST", "/process.Process/Start", headers=STREAM,
            content=connect.envelope(message)) as running:
        events = _envelopes(running.iter_bytes())
        for flags, frame in events:
            frames.append((flags, frame))
            if "start" in frame.get("event", {}):
                pid = frame["event"]["start"]["pid"]
            shown += base64.b64decode(frame.get("event", {}).get("data", {}).get("pty", ""))
            if b"20 90\r\n" in shown:
                break
        resized = unary(client, "Update", {"process": {"pid": pid},
                                           "pty": {"size": {"cols": 100, "rows": 40}}})
        assert (resized.status_code, resized.json()) == (200, {})
        typed = unary(client, "SendInput", {"process": {"pid": pid}, "input": {
            "pty": base64.b64encode(b"go\n").decode()}})
        assert (typed.status_code, typed.json()) == (200, {})
        frames += list(events)
    assert output(frames, "pty") == "20 90\r\ngo\r\n40 100\r\n"
    assert output(frames, "stdout") == output(frames, "stderr") == ""
    assert frames[-2][1]["event"]["end"]["exitCode"] == 0


@pytest.mark.parametrize("size", [{"cols": 0, "rows": 24}, {"cols": 80, "rows": 1001},
                                  {"cols": 80}, {"cols": "80", "rows": 24}, None])
def test_pty_sizes_out_of_bounds_are_refused(server: Server, box: dict[str, Any],
                                             size: Any) -> None:
    with envd(server, box) as client:
        answer = client.post("/process.Process/Start", headers=STREAM,
                             content=connect.envelope({"process": {"cmd": "/bin/bash"},
                                                       "pty": {"size": size}}))
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid_argument")
        assert "from 1 to 1000" in answer.json()["message"]
        update = unary(client, "Update", {"process": {"pid": 1}, "pty": {"size": size}})
        assert (update.status_code, update.json()["code"]) == (400, "invalid_argument")


def test_input_update_and_stream_input_refusals(server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        gone = unary(client, "Update", {"process": {"pid": 99999},
                                        "pty": {"size": {"cols": 80, "rows": 24}}})
        assert (gone.status_code, gone.json()["code"]) == (404, "not_found")
        both = unary(client, "SendInput", {"process": {"pid": 1}, "input": {
            "stdin": "eA==", "pty": "eA=="}})
        assert (both.status_code, both.json()["code"]) == (400, "invalid_argument")
        # a client stream that does not start with its process: the error ends its answer
        streamed = client.post("/process.Process/StreamInput", headers=STREAM,
                               content=connect.envelope({"data": {"input": {"pty": "eA=="}}}))
        assert streamed.status_code == 200
        [(flags, end)] = connect.read_envelopes(streamed.content)
        assert flags == connect.END_STREAM and end["error"]["code"] == "invalid_argument"
        other = unary(client, "Nope", {})
        assert (other.status_code, other.json()["code"]) == (501, "unimplemented")


def test_token_is_checked(server: Server, box: dict[str, Any]) -> None:
    with envd(server, box, token="wrong") as client:
        assert_e2b_error(client.get("/health"), 401)
        assert_e2b_error(unary(client, "List", {}), 401)
    with envd(server, {**box, "envdAccessToken": ""}) as client:
        client.headers.pop("X-Access-Token")
        assert_e2b_error(unary(client, "List", {}), 401)
    with httpx.Client(base_url=server.url + "/e2b") as bare:  # an API key is not enough
        assert_e2b_error(bare.post("/process.Process/List", json={},
                                   headers={"X-API-Key": server.key}), 401)


def test_other_tenants_and_stopped_sandboxes_are_not_found(
        server: Server, box: dict[str, Any]) -> None:
    # a tenant of this test's own: beta's sandbox list must stay empty for test_auth
    with e2b_client(server, server.keys.create("e2b-envd-other").key) as control:
        theirs = control.post("/v2/sandboxes", json={"templateID": "base"}).json()
        try:
            # alpha's token names alpha's sandbox only
            with envd(server, {**theirs, "envdAccessToken": box["envdAccessToken"]}) as c:
                assert_e2b_error(unary(c, "List", {}), 401)
        finally:
            assert control.delete(f"/sandboxes/{theirs['sandboxID']}").status_code == 204
        # its own (valid) token for a sandbox that has stopped: E2B's "not found"
        with envd(server, theirs) as client:
            for answer in (client.get("/health"), unary(client, "List", {})):
                message = assert_e2b_error(answer, 502)
                assert message == f"The sandbox {theirs['sandboxID']} was not found"
    with envd(server, box) as client:  # alpha's is untouched
        frames = start(client, "echo still")
        assert output(frames, "stdout") == "still\n"


def test_connect_errors_keep_their_code_through_the_error_shape(
        server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        answer = unary(client, "SendSignal", {"process": {"pid": 1}, "signal": "SIGNAL_X"})
    assert answer.status_code == 400
    assert json.loads(answer.content)["code"] == "invalid_argument"


def test_process_calls_are_audited_for_the_sandboxes_tenant(
        server: Server, box: dict[str, Any]) -> None:
    sid = box["sandboxID"]
    with envd(server, box) as client:
        start(client, "true")
        assert unary(client, "List", {}).status_code == 200  # a read: not audited
        unary(client, "SendSignal", {"process": {"pid": 999999},
                                     "signal": "SIGNAL_SIGKILL"})
    with server.http(server.key) as http:
        events = http.get("/v1/audit", params={"sandbox_id": sid}).json()["events"]
    done = [(e["action"], e["outcome"]) for e in reversed(events)]
    assert done == [("sandbox.create", "ok"), ("command.run", "ok"),
                    ("command.signal", "not_found")]
    assert all(e["tenant"] == "alpha" for e in events)
    assert [e["key_id"] for e in events if e["action"] != "sandbox.create"] == [
        f"e2b-sandbox:{sid}"] * 2


def test_stream_input_is_typed_in_as_it_arrives(server: Server, box: dict[str, Any]) -> None:
    """A ``StreamInput`` client stream reaches the process message by message, while the
    stream is still open (not once the client has sent it all)."""
    replied = threading.Event()
    seen: list[str] = []

    def follow(pid_box: list[int], started: threading.Event) -> None:
        with envd(server, box) as client, client.stream(
                "POST", "/process.Process/Start", headers=STREAM,
                content=connect.envelope({"process": {
                    "cmd": "/bin/bash", "args": ["-c", "read x; echo got $x; read y"]},
                    "stdin": True})) as answer:
            buffer = b""
            for chunk in answer.iter_bytes():
                buffer += chunk
                whole = _whole_envelopes(buffer)
                frames, buffer = connect.read_envelopes(buffer[:whole]), buffer[whole:]
                for _, message in frames:
                    event = message.get("event", {})
                    if "start" in event and not pid_box:
                        pid_box.append(int(event["start"]["pid"]))
                        started.set()
                    data = event.get("data", {}).get("stdout")
                    if data:
                        seen.append(base64.b64decode(data).decode())
                        if "got hello" in "".join(seen):
                            replied.set()

    pid: list[int] = []
    started = threading.Event()
    follower = threading.Thread(target=follow, args=(pid, started), daemon=True)
    follower.start()
    assert started.wait(60), "the process did not start"

    def body() -> Iterator[bytes]:
        yield connect.envelope({"start": {"process": {"pid": pid[0]}}})
        yield connect.envelope({"data": {"input": {"stdin": base64.b64encode(b"hello\n")
                                                   .decode()}}})
        # Only once the process has answered the first line does the stream go on.
        assert replied.wait(60), f"the input was held back while the stream was open: {seen}"
        yield connect.envelope({"data": {"input": {"stdin": base64.b64encode(b"bye\n")
                                                   .decode()}}})

    with envd(server, box) as client:
        answer = client.post("/process.Process/StreamInput", headers=STREAM, content=body())
    assert answer.status_code == 200, answer.text
    assert connect.read_envelopes(answer.content)[-1][0] == connect.END_STREAM
    follower.join(60)
    assert "".join(seen) == "got hello\n" and not follower.is_alive()


def _whole_envelopes(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole envelopes."""
    at = 0
    while len(data) - at >= 5:
        length = int.from_bytes(data[at + 1:at + 5], "big")
        if len(data) - at - 5 < length:
            break
        at += 5 + length
    return at
