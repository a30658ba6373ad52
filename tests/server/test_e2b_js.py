"""The published e2b JS SDK (npm, ``tests/server/e2b_js/package.json``) against a real
``corral serve``, with Node's own test runner: the JS line of E2B compatibility.

The packages are installed once per ``package.json`` content under the test cache
(``CORRAL_TEST_VENVS``, see ``tests/_npm.py``); the tests skip where Node 20 is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests import _npm

from .conftest import Server

SUITE = Path(__file__).with_name("e2b_js")


def js_modules() -> Path:
    """A folder holding ``node_modules`` for :data:`SUITE`'s ``package.json``, made if
    missing (skips without Node 20 or the registry)."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed")
    shown = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    version = tuple(int(part) for part in re.findall(r"\d+", shown)[:3])
    if version < (20, 18, 1):
        pytest.skip(f"the e2b JS SDK needs Node 20.18.1 or newer, not {shown}")
    return _npm.installed("e2b-js", {"package.json": (SUITE / "package.json").read_bytes()},
                          ["install"], "the e2b JS SDK")


def test_the_js_sdk_passes_its_suite(server: Server) -> None:
    modules = js_modules()
    key = server.keys.create("alpha", e2b=True).key
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "NODE_PATH": str(modules / "node_modules"),
           "E2B_API_URL": server.url + "/e2b", "E2B_SANDBOX_URL": server.url + "/e2b",
           "E2B_API_KEY": key, "CORRAL_TEST_TAG": uuid.uuid4().hex[:12],
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    # ES modules resolve bare names from the importing file's folders, not NODE_PATH: the
    # suite runs from a copy beside the installed node_modules.
    for test_file in SUITE.glob("*.test.mjs"):
        shutil.copy(test_file, modules / test_file.name)
    ran = subprocess.run(["node", "--test", "--test-reporter=spec",
                          *sorted(p.name for p in SUITE.glob("*.test.mjs"))],
                         cwd=modules, env=env, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-6000:]
    declared = sum(p.read_text().count("\ntest(") for p in SUITE.glob("*.test.mjs"))
    summary = dict(re.findall(r"^ℹ (tests|pass|fail|skipped|cancelled) (\d+)$", ran.stdout,
                              re.MULTILINE))
    assert summary == {"tests": str(declared), "pass": str(declared), "fail": "0",
                       "skipped": "0", "cancelled": "0"}, ran.stdout[-3000:]
