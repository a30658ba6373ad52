"""The real e2b SDKs against Corral's E2B control plane and envd's process service
(``E2B_SANDBOX_URL`` on the same mount): each release line in a virtualenv
of its own (their ``connectrpc``/``protobuf-py`` pins clash with each other), made once
under :data:`VENVS` and reused, and skipped when PyPI cannot be reached to make it.

2.45.1 is the last release that sends ``POST /sandboxes`` and checks the key's form
(``e2b_`` and hex: a ``corral keys create --e2b`` key); 2.63.0 sends ``/v2/sandboxes``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server

VENVS = Path(os.environ.get("CORRAL_TEST_VENVS", "/var/cache/corral/test-venvs"))
DRIVER = Path(__file__).with_name("e2b_sdk_drive.py")


def sdk_python(version: str) -> Path:
    """The python of a virtualenv holding ``e2b==version``, made if missing (skip if
    PyPI is out of reach)."""
    venv = VENVS / f"e2b-{version}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    VENVS.mkdir(parents=True, exist_ok=True)
    building = VENVS / f"e2b-{version}.{os.getpid()}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
    try:
        installed = subprocess.run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", f"e2b=={version}"],
            capture_output=True, text=True, timeout=600)
        failure = installed.stderr.strip()[-300:] if installed.returncode else ""
    except subprocess.TimeoutExpired:
        failure = "pip ran for over 600 s"
    if failure:
        shutil.rmtree(building, ignore_errors=True)
        pytest.skip(f"could not install e2b=={version} from PyPI (offline?): {failure}")
    # A venv's bin/python finds its packages relative to itself, so it survives the move;
    # renaming makes a half-made venv never look finished.
    try:
        building.rename(venv)
    except OSError:  # another run finished first
        shutil.rmtree(building, ignore_errors=True)
    return python


@pytest.mark.parametrize("version", ["2.45.1", "2.63.0"])
def test_the_real_sdk_drives_the_control_plane_and_commands(server: Server, version: str) -> None:
    python = sdk_python(version)
    key = server.keys.create("alpha", e2b=True).key
    tag = uuid.uuid4().hex[:12]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "E2B_API_URL": server.url + "/e2b", "E2B_SANDBOX_URL": server.url + "/e2b",
           "E2B_API_KEY": key,
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    ran = subprocess.run([str(python), str(DRIVER), tag], env=env, capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-4000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])

    sync = seen["sync"]
    first, second = sync["ids"]
    assert (sync["template"], sync["state"]) == ("python", "running")
    assert sync["metadata"] == {"suite": f"{tag}-sync", "n": "1"}
    assert sync["shortened"] is True
    assert sync["pages"] == [[first], [second]]  # one a page, by start time
    # The samples the server took so far (maybe none yet): every one sane.
    assert all(row == [True, True, True, True] for row in sync["metrics"])
    assert sync["connected"] == second
    assert sync["killed"] == [True, True] and sync["killed_again"] is False
    assert sync["pages_after"] == [[]]  # one empty page: the killed ones are gone
    assert sync["not_found"] == "SandboxNotFoundException"

    done = seen["async"]
    assert done["state"] == "running" and done["listed"] == [done["id"]]
    assert done["killed"] is True
    assert done["not_found"] == "SandboxNotFoundException"
    commands = seen["commands"]
    assert commands["run"] == ["hi\n", "oops\n", 0]
    assert commands["failed"] == ["CommandExitException", 3, "partial\n"]
    assert commands["envs_cwd"] == "x\n/tmp\n"
    # E2B's default user, and the tools its base template has.
    assert commands["default_user"] == "user\n/home/user\n/home/user\n"
    assert commands["root"] == "root\n/root\nroot\n"
    assert commands["tools"].startswith("Python 3.") and commands["tools"].endswith("ok\n")
    assert commands["listed"] == [["/bin/bash", ["-l", "-c", "sleep 600"]]]
    assert commands["killed"] is True and commands["killed_wait"] == -1
    assert commands["killed_again"] is False
    assert commands["stdin"] == "got hello\n"
    assert seen["async_commands"] == {"run": ["async\n", 0], "listed": True, "killed": True}
    state = seen["state"]
    assert state["closed"] == [False, ["SandboxException", True]]  # a 400, as E2B's
    assert state["internet"] is False
    assert state["exceptions_refused"] == ["SandboxException", True]
    snapshot_id, names = state["snapshot"]
    assert snapshot_id.startswith("snap-") and names == ["first"]
    assert state["listed"] == [snapshot_id]
    assert state["copy"] == [True, "kept\n"]
    assert state["forks"] == ["kept\n", "kept\n"]
    assert state["too_many"] is not None and state["too_many"][1] is True
    assert state["deleted"] == [True, False]
    assert state["paused"] == [True, False, "paused"]
    assert state["resumed"] == ["running", "kept\n"]
    # Directory watches, recursive: the polling watcher (sync) and the stream (async).
    changes = [["create", "sub"], ["create", "sub/f"], ["write", "sub/f"],
               ["rename", "sub/f"], ["create", "sub/g"], ["remove", "sub/g"],
               ["create", "end"]]
    for flow in ("watch", "async_watch"):
        events = seen[flow]["events"]
        assert all(change in events for change in changes), (flow, events)
        assert [events.index(change) for change in changes] == sorted(
            events.index(change) for change in changes), (flow, events)
    assert seen["watch"]["after_stop"] == "SandboxException"
    _check_files(seen["files"], seen["async_files"])
    with server.http(server.key) as http:
        # The policy the last update_network set, as Corral enforces it.
        assert http.get(f"/v1/sandboxes/{state['id']}").json()["network"] == {
            "allow": ["example.org"], "deny": []}
        for sid in (first, second, done["id"], state["id"]):
            assert http.get(f"/v1/sandboxes/{sid}").json()["state"] == "stopped"


@pytest.mark.parametrize("version", ["2.45.1", "2.63.0"])
def test_the_real_sdk_drives_a_pty(server: Server, version: str) -> None:
    """``sb.pty``: create (size, envs, cwd), typed input and its echo, resize, Ctrl-C,
    StreamInput (2.59 and later), kill; sync and async."""
    python = sdk_python(version)
    key = server.keys.create("alpha", e2b=True).key
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "E2B_API_URL": server.url + "/e2b", "E2B_SANDBOX_URL": server.url + "/e2b",
           "E2B_API_KEY": key, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    ran = subprocess.run([str(python), str(DRIVER), uuid.uuid4().hex[:12], "pty"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-4000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])

    pty = seen["pty"]
    lines = pty["first"].split("\r\n")
    assert lines[0] == "tty; stty size; echo $A $PWD $TERM", lines  # echoed as typed
    assert re.search(r"\r/dev/pts/\d+$", lines[1]), lines  # after bracketed-paste codes
    assert lines[2:4] == ["30 100", "x /tmp xterm-256color"], lines
    assert "\r50 132\r\n" in pty["resized"]
    # Ctrl-C ended the sleep (not the shell, which went on to the next line).
    assert "not-interrupted" not in pty["interrupted"]
    assert re.search(r"[\r\n]after\r\n", pty["interrupted"]), pty["interrupted"]
    assert pty.get("streamed", True) is True
    assert pty["listed"] == [["/bin/bash", ["-i", "-l"]]]
    assert pty["killed"] is True and pty["killed_wait"] == -1
    assert pty["resize_gone"] in ("NotFoundException", "SandboxException"), pty
    assert seen["async_pty"] == {"resized": True, "killed": True, "killed_wait": -1}


def _check_files(files: dict[str, Any], done: dict[str, Any]) -> None:
    assert files["write"] == ["a.txt", "/home/user/notes/a.txt", "file"]
    assert files["read"] == "hello"
    assert files["bytes"] is True and files["gzip"] is True
    assert files["file_like"] == [True, "abcd"]
    assert files["write_files"] == ["/tmp/m/1.txt", "/home/user/m2.txt"]
    assert files["list"] == ["/tmp/m/1.txt"]
    assert {"/home/user/notes", "/home/user/notes/a.txt", "/home/user/m2.txt"} <= set(
        files["list_depth"])
    assert files["exists"] == [True, False]
    assert files["info"] == ["a.txt", "file", 5, "-rw-r--r--", "user", "user", True,
                             "/home/user/notes/a.txt"]
    assert files["make_dir"] == [True, False]
    assert files["rename"] == ["/tmp/d/b.bin", False]
    assert files["removed"] is False
    # root's write lands in root's home; the default user owns what it creates, not what
    # was there before it.
    assert files["owners"] == ["/root/r.txt", "root", "user", "user", "root"]
    assert files["link"] == ["symlink", "/tmp/m/1.txt"]
    assert files["missing"] == "FileNotFoundException"
    assert files["missing_is_file_not_found"] is True
    assert files["dir_target"] == "InvalidArgumentException"
    assert files["unknown_user"] == "AuthenticationException"
    assert files["download_url"] == "hello"
    assert files["download_url_root"] == "r"
    assert files["upload_url"] == [200, "up", "user"]
    assert files["expired"] == 401 and files["forged"] == 401
    assert files["metadata"] == "InvalidArgumentException"
    assert files["include_entry"] == "SandboxException"  # unimplemented, not the SDK's own
    assert done == {"read": "async", "file_like": 100_000, "write_files": ["/tmp/w/1", "/tmp/w/2"],
                    "listed": ["1", "2"], "made": [True, False], "moved": "/home/user/b.txt",
                    "exists": False, "missing": "FileNotFoundException", "owner": "user"}
