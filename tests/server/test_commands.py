"""Commands over HTTP: results, streaming callbacks, stdin, signals, timeouts, background."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time

import pytest

from corral import CommandTimeoutError, Sandbox

from .conftest import Server


def test_exit_code_and_separate_streams(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("echo out; echo err >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr, r.signal, r.reason) == (7, "out\n", "err\n",
                                                                      None, None)
    r = sandbox.commands.run(["echo", "$HOME; rm -rf /"], cwd="/tmp", env={"X": "1"})
    assert r.stdout == "$HOME; rm -rf /\n"
    r = sandbox.commands.run('echo "$X $(pwd) $(id -u)"', env={"X": "1"}, cwd="/tmp",
                             user="user")
    assert r.stdout == "1 /tmp 1000\n"


def test_callbacks_stream_before_the_command_ends(sandbox: Sandbox) -> None:
    seen: list[tuple[str, str, float]] = []
    marker = threading.Event()

    def on_stdout(text: str) -> None:
        seen.append(("out", text, time.monotonic()))
        if "first" in text:
            marker.set()

    # The command only ends once the test has seen "first": a callback that arrived late
    # would make it wait for the file forever (and the command timeout fail the test).
    handle = sandbox.commands.start(
        "echo first; echo warn >&2; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo last")
    waiter = threading.Thread(target=lambda: seen.append(
        ("result", handle.wait(on_stdout=on_stdout,
                               on_stderr=lambda t: seen.append(("err", t, 0.0))).stdout, 0.0)))
    waiter.start()
    assert marker.wait(30), "stdout did not arrive while the command ran"
    assert any(p.pid == handle.pid for p in sandbox.commands.list())
    sandbox.files.write("/tmp/go", b"")
    waiter.join(30)
    assert [t for kind, t, _ in seen if kind == "err"] == ["warn\n"]
    assert seen[-1][:2] == ("result", "first\nlast\n")

    chunks: list[str] = []
    r = sandbox.commands.run("for i in 1 2 3; do echo $i; done; exit 3",
                             on_stdout=chunks.append)
    assert "".join(chunks) == "1\n2\n3\n" and r.exit_code == 3 and r.stdout == "1\n2\n3\n"


def test_stdin_to_a_started_command(sandbox: Sandbox) -> None:
    with sandbox.commands.start(["sha256sum"], stdin=True) as handle:
        data = b"".join(b"line %d\n" % i for i in range(100_000))  # ~1 MiB: several requests
        handle.send_stdin(data[:1000])
        handle.send_stdin(data[1000:], eof=True)
        r = handle.wait()
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    # Inline stdin, and stdin larger than one request.
    assert sandbox.commands.run(["cat"], stdin="hello").stdout == "hello"
    big = bytes(range(256)) * 4096  # 1 MiB
    r = sandbox.commands.run(["sha256sum"], stdin=big)
    assert r.stdout.split()[0] == hashlib.sha256(big).hexdigest()


def test_signal_and_kill(sandbox: Sandbox) -> None:
    handle = sandbox.commands.start("trap 'echo got TERM; exit 5' TERM; echo ready; "
                                    "while true; do sleep 0.1; done")
    events = iter(handle)
    assert next(events).data == b"ready\n"
    handle.signal(signal.SIGTERM)
    r = handle.wait()
    assert (r.exit_code, r.stdout) == (5, "got TERM\n")

    handle = sandbox.commands.start(["sleep", "600"])
    handle.kill()
    r = handle.wait()
    assert r.signal == signal.SIGKILL and r.exit_code == 128 + signal.SIGKILL
    assert all(p.pid != handle.pid for p in sandbox.commands.list())


def test_command_timeout_kills_and_raises(sandbox: Sandbox) -> None:
    with pytest.raises(CommandTimeoutError) as caught:
        sandbox.commands.run("echo started; sleep 60", timeout=1)
    result = caught.value.result
    assert result.reason == "timeout" and result.stdout == "started\n"
    with pytest.raises(CommandTimeoutError):
        sandbox.commands.run("sleep 60", timeout=1, on_stdout=lambda _: None)


def test_background_command_over_raw_http(server: Server, default_sandbox: Sandbox) -> None:
    base = f"/v1/sandboxes/{default_sandbox.id}/commands"
    with server.http(server.key) as http:
        started = http.post(base, json={"cmd": "yes | head -c 10000000; sleep 600",
                                        "background": True})
        assert started.status_code == 200, started.text
        command = started.json()
        assert set(command) == {"id", "pid"}
        listed = http.get(base).json()["processes"]
        assert command["pid"] in [p["pid"] for p in listed]
        signalled = http.post(f"{base}/{command['id']}/signal", json={"signal": 9})
        assert signalled.status_code == 204, signalled.text
        deadline = time.monotonic() + 10
        while command["pid"] in [p["pid"] for p in http.get(base).json()["processes"]]:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        streamed = http.post(base, json={"cmd": "echo a; echo b >&2; exit 4", "stream": True})
        assert streamed.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in streamed.text.splitlines()]
        assert events[0]["type"] == "started" and events[-1]["type"] == "exit"
        assert events[-1]["exit_code"] == 4
        kinds = {e["type"] for e in events[1:-1]}
        assert kinds == {"stdout", "stderr"}


def test_unknown_command_id(default_sandbox: Sandbox, server: Server) -> None:
    base = f"/v1/sandboxes/{default_sandbox.id}/commands/987654"
    with server.http(server.key) as http:
        assert http.post(f"{base}/signal", json={"signal": 9}).status_code == 404
        assert http.post(f"{base}/stdin", content=b"x").status_code == 404
