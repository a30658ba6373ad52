"""The agent binary on its own: its constants, its root seam, its users, its refusals.

Everything else it does is tested through the node (tests/unit/node, on the fake runtime)
and inside real sandboxes (tests/integration, tests/security).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from corral.api import agent_protocol, limits
from corral.runtime.agent_bundle import AGENT_SOURCES, agent_binary
from tests.fakes.agent import AgentProcess

pytestmark = pytest.mark.rootless


def _rust_constants() -> dict[str, int]:
    text = (AGENT_SOURCES / "src" / "proto.rs").read_text()
    found = {}
    for name, value in re.findall(r"pub const (\w+): (?:usize|i64) = ([^;]+);", text):
        found[name] = eval(value.replace("_", ""), {})  # noqa: S307 - arithmetic of our source
    return found


def test_the_agents_constants_are_the_nodes() -> None:
    rust = _rust_constants()
    assert rust == {
        "PROTOCOL_VERSION": agent_protocol.PROTOCOL_VERSION,
        "PREFIX": agent_protocol.HEADER.size,
        "MAX_HEADER": agent_protocol.MAX_HEADER,
        "MAX_DATA": agent_protocol.MAX_DATA,
        "CHUNK": agent_protocol.CHUNK,
        "STREAM_WINDOW": agent_protocol.STREAM_WINDOW,
        "MAX_PATH": limits.MAX_PATH,
        "NAME_MAX": limits.NAME_MAX,
        "MAX_LIST_DEPTH": limits.MAX_LIST_DEPTH,
        "MAX_LIST_ENTRIES": limits.MAX_LIST_ENTRIES,
        "MAX_ARGV": limits.MAX_ARGV,
        "MAX_PORT_CONNECTIONS": limits.MAX_PORT_CONNECTIONS,
        "MAX_WATCHES": agent_protocol.MAX_WATCHES,
        "MAX_WATCH_DIRS": agent_protocol.MAX_WATCH_DIRS,
        "MAX_WATCH_EVENTS": agent_protocol.MAX_WATCH_EVENTS,
    }


def test_the_binary_is_static() -> None:
    """Images bring any libc or none: the agent may need nothing of theirs."""
    out = subprocess.run(["file", "-L", str(agent_binary())], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("no `file` command here")
    assert "statically linked" in out.stdout or "static-pie linked" in out.stdout, out.stdout


@pytest.mark.skipif(shutil.which("cargo") is None and not Path.home().joinpath(
    ".cargo/bin/cargo").exists(), reason="cargo is not installed for this user")
def test_the_agents_own_unit_tests_pass(tmp_path: Path) -> None:
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    done = subprocess.run([cargo, "test", "--release", "--offline", "--quiet",
                           "--manifest-path", str(AGENT_SOURCES / "Cargo.toml"),
                           "--target-dir", str(tmp_path / "target")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test result: ok" in done.stdout


@pytest.mark.parametrize("argv", [["--root"], ["--root", "relative"], ["--other", "/x"],
                                  ["--root", "/a", "/b"]])
def test_other_arguments_are_refused(argv: list[str]) -> None:
    done = subprocess.run([str(agent_binary()), *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=30)
    assert done.returncode == 2
    assert "corral-agent:" in done.stderr


def test_a_given_root_holds_every_path(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "a.txt").write_text("hi")
    with AgentProcess(tmp_path) as agent:
        assert agent.hello["ev"] == "hello" and agent.hello["next_id"] == 1
        reply, _ = agent.call({"op": "stat", "path": "/work/a.txt"})
        assert (reply["ev"], reply["path"], reply["size"]) == ("ok", "/work/a.txt", 2)
        reply, _ = agent.call({"op": "stat", "path": "/"})
        assert (reply["type"], reply["name"]) == ("dir", "/")
        # `..` stays at the sandbox's root: the host's /etc/passwd is not under it.
        reply, _ = agent.call({"op": "stat", "path": "/../../etc/passwd"})
        assert reply["ev"] == "error" and reply["code"] == "not_found", reply
        assert "'/etc/passwd'" in reply["message"]


def test_links_out_of_a_given_root_are_refused(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "out").symlink_to("/etc")
    (tmp_path / "in").symlink_to("work")
    with AgentProcess(tmp_path) as agent:
        reply, _ = agent.call({"op": "stat", "path": "/out/passwd"})
        assert (reply["ev"], reply["code"]) == ("error", "permission_denied"), reply
        reply, _ = agent.call({"op": "exists", "path": "/in/x"})
        assert (reply["ev"], reply["exists"]) == ("ok", False)
        reply, data = agent.call({"op": "list", "path": "/"})
        assert reply["count"] == 3 and b'"target":"/etc"' in data


def test_users_come_from_the_roots_passwd(tmp_path: Path) -> None:
    """A user named in a request is the root's, not the host's (same uid here: no root)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        f"alice:x:{os.getuid()}:{os.getgid()}::/home/alice:/bin/sh\n")
    with AgentProcess(tmp_path) as agent:
        exit_event, out, _ = agent.run(["env"], user="alice")
        assert exit_event["exit_code"] == 0
        env = dict(line.split("=", 1) for line in out.decode().splitlines())
        assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/home/alice", "alice", "alice")
        reply, _ = agent.call({"op": "exec", "argv": ["true"], "user": "bob"})
        assert (reply["code"], reply["message"]) == (
            "not_found", "user 'bob' does not exist in this sandbox")
        reply, _ = agent.call({"op": "exec", "argv": ["true"], "user": 2**31})
        assert reply["code"] == "invalid_argument"


def test_a_command_gets_only_its_environment(tmp_path: Path) -> None:
    env = {"CORRAL_AGENT_SECRET": "x", "PATH": "/usr/bin:/bin"}
    with AgentProcess(tmp_path, env=env) as agent:
        _, out, _ = agent.run(["env"], env={"A": "1"})
    names = {line.split("=", 1)[0] for line in out.decode().splitlines()}
    assert names == {"A", "HOME", "USER", "LOGNAME", "PATH"}


@pytest.mark.parametrize("frame", [
    b"\x00\x00\x00\x05\x00\x00\x00\x00nope!",          # not JSON
    b"\x00\x00\x00\x02\x00\x00\x00\x00[]",             # not an object
    b"\x00\x00\x00\x09\x00\x00\x00\x00{\"id\":-1}",      # a negative id
    b"\xff\xff\xff\xff\x00\x00\x00\x00",               # a header past the bound
    b"\x00\x00\x00\x02\x7f\xff\xff\xff{}",             # data past the bound
])
def test_a_frame_out_of_protocol_closes_the_channel(tmp_path: Path, frame: bytes) -> None:
    with AgentProcess(tmp_path) as agent:
        agent.send_raw(frame)
        assert agent.process.wait(timeout=30) == 0  # no node socket: the agent ends
        assert agent.process.stderr is not None
        assert b"closing the channel" in agent.process.stderr.read()


def test_unknown_operations_and_bad_fields_get_errors(tmp_path: Path) -> None:
    with AgentProcess(tmp_path) as agent:
        reply, _ = agent.call({"op": "format-disk"})
        assert (reply["code"], reply["message"]) == (
            "invalid_argument", 'unknown operation "format-disk"')
        for bad in ({"argv": []}, {"argv": ["a\0"]}, {"cmd": ""}, {"argv": ["x"], "cmd": "x"},
                    {"argv": ["true"], "env": {"A=B": "c"}}, {"argv": ["true"], "timeout": 0},
                    {"argv": ["true"], "cwd": "rel"}, {"argv": ["true"], "user": [1]},
                    {"argv": ["x\ud800"]}):
            reply, _ = agent.call({"op": "exec", **bad})
            assert reply["ev"] == "error" and reply["code"] == "invalid_argument", (bad, reply)
        reply, _ = agent.call({"op": "exec", "argv": ["/no/such/program"]})
        assert (reply["code"], reply["message"]) == (
            "not_found", "executable '/no/such/program' not found")
        reply, _ = agent.call({"op": "exec", "argv": ["true"], "cwd": "/nowhere"})
        assert reply["code"] == "not_found"
        reply, _ = agent.call({"op": "signal", "target": 999, "signal": 15})
        assert reply["code"] == "not_found"
        reply, _ = agent.call({"op": "ping"})
        assert reply["ev"] == "ok" and reply["pid"] == agent.process.pid


def test_signals_sent_to_the_agent_are_ignored(tmp_path: Path) -> None:
    """Fault signals too: sent by a process (not a real fault), they must not end it."""
    with AgentProcess(tmp_path) as agent:
        for signum in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                       signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                       signal.SIGSEGV, signal.SIGABRT):
            os.kill(agent.process.pid, signum)
        reply, _ = agent.call({"op": "ping"})
        assert reply["ev"] == "ok" and agent.process.poll() is None
        os.kill(agent.process.pid, signal.SIGKILL)
        assert agent.process.wait(timeout=30) == -signal.SIGKILL
