"""Pause and resume over HTTP with the SDK and the CLI: state kept (files, a kernel's
variables), any call on a paused sandbox resumes it, connect resumes it, the lifetime clock
stops, other tenants cannot pause or resume it, and a networked sandbox's exposed port
serves again once it is resumed."""

from __future__ import annotations

import shutil

import httpx
import pytest
from typer.testing import CliRunner

from corral import Sandbox
from corral.cli import app

from .conftest import Server, assert_error
from .test_ports import PORT, echo, start_app


def test_pause_keeps_state_and_any_call_resumes(server: Server, runtime: str) -> None:
    with Sandbox.create(runtime=runtime, timeout=600, **server.sdk()) as sb:
        sb.files.write("/work/kept.txt", "before the pause\n")
        sb.run_code("x = 41")
        paused = sb.pause()
        assert paused.state == "paused"
        assert [s.state for s in Sandbox.list(**server.sdk()) if s.id == sb.id] == ["paused"]
        assert sb.pause().state == "paused"  # pausing a paused one: it stays so
        # any call resumes it
        assert sb.commands.run("cat /work/kept.txt").stdout == "before the pause\n"
        assert sb.refresh().state == "running"
        assert sb.run_code("x + 1").text == "42"
        sb.pause()
        again = Sandbox.connect(sb.id, **server.sdk())  # connecting resumes it
        assert again.info.state == "running"
        assert again.files.read_text("/work/kept.txt") == "before the pause\n"
        again.close()
        assert sb.resume().state == "running"  # resuming a running one: nothing to do


def test_other_tenants_cannot_pause_or_resume(server: Server) -> None:
    with Sandbox.create(**server.sdk()) as sb:
        with server.http(server.other_key) as http:
            for action in ("pause", "resume"):
                assert_error(http.post(f"/v1/sandboxes/{sb.id}/{action}"), 404, "not_found")
        assert sb.refresh().state == "running"


def test_the_cli_pauses_and_resumes(server: Server) -> None:
    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key,
                         "COLUMNS": "200"})
    with Sandbox.create(**server.sdk()) as sb:
        done = cli.invoke(app, ["sandbox", "pause", sb.id])
        assert done.exit_code == 0, done.output
        assert sb.refresh().state == "paused"
        listed = cli.invoke(app, ["sandbox", "list", "--state", "paused", "--json"])
        assert sb.id in listed.output
        done = cli.invoke(app, ["sandbox", "resume", sb.id])
        assert done.exit_code == 0, done.output
        assert sb.refresh().state == "running"
    gone = cli.invoke(app, ["sandbox", "pause", sb.id])
    assert gone.exit_code != 0 and "stopped" in gone.output


def test_port_traffic_does_not_wake_a_paused_sandbox(server: Server) -> None:
    with Sandbox.create(public_ports=[8080], **server.sdk()) as sb:
        sb.pause()
        with server.http() as anyone:  # no credential: a public port
            response = anyone.get(f"/v1/sandboxes/{sb.id}/ports/8080/")
            assert_error(response, 410, "sandbox_not_running")
        assert sb.refresh().state == "paused"


@pytest.mark.skipif(shutil.which("nft") is None,
                    reason="needs nftables for a networked sandbox (scripts/install installs it)")
def test_a_networked_sandboxs_port_serves_again_after_a_resume(server: Server,
                                                               runtime: str) -> None:
    """gVisor: its app listens on netstack's loopback, which the checkpoint saves and the
    restore (into its network namespace, its address put back) brings back, listening;
    a connection to it open at the pause is dropped, not in the way. One client connection
    throughout: the server's kept-alive tunnel to the app, which the pause ended, is not
    reused after the resume. No network traffic: its policy allows nothing, and its port
    is reached through its agent."""
    with Sandbox.create("python", runtime=runtime, network={"allow": []}, timeout=600,
                        **server.sdk()) as sb:
        start_app(sb)
        url = sb.ports.url(PORT) + "echo"
        with httpx.Client(headers={"X-Corral-Port-Token": sb.ports.token}, timeout=30) as http:
            assert echo(http.get(url))["path"] == "/echo"
            assert sb.pause().state == "paused"
            assert_error(http.get(url), 410, "sandbox_not_running")  # no wake-up by port
            assert sb.resume().state == "running"
            assert echo(http.get(url))["path"] == "/echo"
        assert sb.info.network.model_dump() == {"allow": [], "deny": []}
