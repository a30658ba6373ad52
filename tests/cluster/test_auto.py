"""``corral serve --cluster auto``, as a user runs it: a Ray head on this machine, a node on
it, a sandbox through it, and nothing of Ray left once the server stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from tests.conftest import IMAGE_DIR, sandbox_data_dir

pytestmark = [pytest.mark.gvisor, pytest.mark.timeout(300)]
CORRAL = [sys.executable, "-c", "from corral.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ray_processes(data_dir: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(data_dir)], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines()
            if "gcs_server" in line or "raylet" in line]


def test_serve_cluster_auto_runs_sandboxes_and_stops_its_head() -> None:
    with sandbox_data_dir("corral-auto-test-") as data:
        port = _free_port()
        env = {**os.environ, "CORRAL_IMAGE_DIR": str(IMAGE_DIR), "CORRAL_LOG_LEVEL": "INFO"}
        log = open(data / "serve.log", "wb")  # noqa: SIM115
        server = subprocess.Popen([*CORRAL, "serve", "--cluster", "auto", "--port", str(port),
                                   "--data-dir", str(data)], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:  # the API answers (its database made), as `corral serve` prints
                assert server.poll() is None, (data / "serve.log").read_text()[-3000:]
                try:
                    if httpx.get(url + "/openapi.json", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.3)
            key = subprocess.run([*CORRAL, "keys", "create", "--data-dir", str(data)],
                                 env=env, capture_output=True, text=True, check=True
                                 ).stdout.strip()
            deadline = time.monotonic() + 180
            while True:  # its node has joined
                assert server.poll() is None, (data / "serve.log").read_text()[-3000:]
                try:
                    made = Sandbox.create(url=url, api_key=key, timeout=120)
                    break
                except Exception:  # noqa: BLE001 - not up yet, or no node yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            try:
                assert made.commands.run("echo auto").stdout == "auto\n"
                assert made.refresh().node
            finally:
                made.kill()
            assert (data / "cluster-secret").stat().st_mode & 0o777 == 0o600
            assert _ray_processes(data), "no Ray head under the data dir"
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(120)
            finally:
                if server.poll() is None:
                    server.kill()
                log.close()
        shown = (data / "serve.log").read_text()
        # uvicorn stops gracefully, then lets SIGTERM end the process as it would have
        assert server.returncode in (0, -signal.SIGTERM), shown[-3000:]
        assert "Application shutdown complete" in shown, shown[-3000:]
        deadline = time.monotonic() + 30
        while _ray_processes(data) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _ray_processes(data), "the Ray head outlived the server"
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/openapi.json", timeout=5)
