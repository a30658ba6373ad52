"""``corral sandbox create | list | exec | kill`` against the running server."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from corral import Sandbox
from corral.cli import app

from .conftest import Server


def runner(server: Server) -> CliRunner:
    return CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key,
                          "COLUMNS": "250"})


def test_create_list_exec_kill(server: Server) -> None:
    cli = runner(server)
    made = cli.invoke(app, ["sandbox", "create", "--meta", "suite=cli", "--meta", "n=1",
                            "--timeout", "300"])
    assert made.exit_code == 0, made.output
    sid = made.stdout.strip()
    try:
        assert Sandbox.connect(sid, **server.sdk()).info.metadata == {"suite": "cli", "n": "1"}

        table = cli.invoke(app, ["sandbox", "list", "--meta", "suite=cli"])
        assert table.exit_code == 0, table.output
        assert sid in table.stdout and "running" in table.stdout
        listed = cli.invoke(app, ["sandbox", "list", "--meta", "suite=cli", "--meta", "n=1",
                                  "--json"])
        assert [sb["id"] for sb in json.loads(listed.stdout)] == [sid]
        other = cli.invoke(app, ["sandbox", "list", "--meta", "suite=none", "--json"])
        assert json.loads(other.stdout) == []

        ran = cli.invoke(app, ["sandbox", "exec", sid, "--", "sh", "-c",
                               "echo out; echo err >&2; exit 3"])
        assert ran.exit_code == 3, ran.output
        assert ran.stdout == "out\n" and "err\n" in ran.stderr
        slow = cli.invoke(app, ["sandbox", "exec", "--timeout", "1", sid, "--", "sleep", "30"])
        assert slow.exit_code == 124 and "timed out" in slow.stderr
    finally:
        killed = cli.invoke(app, ["sandbox", "kill", sid])
    assert killed.exit_code == 0, killed.output
    stopped = cli.invoke(app, ["sandbox", "list", "--state", "stopped", "--json"])
    assert sid in {sb["id"] for sb in json.loads(stopped.stdout)}


def test_create_json_and_flags_over_env(server: Server) -> None:
    cli = CliRunner(env={"CORRAL_URL": "http://127.0.0.1:9", "CORRAL_API_KEY": "crl_wrong"})
    made = cli.invoke(app, ["sandbox", "create", "--json", "--url", server.url,
                            "--api-key", server.key])
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    assert info["state"] == "running"
    assert cli.invoke(app, ["sandbox", "kill", info["id"], "--url", server.url,
                            "--api-key", server.key]).exit_code == 0


def test_errors_exit_125_with_a_message(server: Server) -> None:
    cli = runner(server)
    missing = cli.invoke(app, ["sandbox", "exec", "sbx-000000000000", "--", "true"])
    assert missing.exit_code == 125 and "no sandbox" in missing.stderr
    unauthenticated = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": ""}).invoke(
        app, ["sandbox", "list"])
    assert unauthenticated.exit_code == 125 and "API key" in unauthenticated.stderr
    assert cli.invoke(app, ["sandbox", "create", "--meta", "novalue"]).exit_code == 2


def test_network_policy_from_the_command_line(server: Server) -> None:
    cli = runner(server)
    made = cli.invoke(app, ["sandbox", "create", "--net", "allow:198.51.100.0/24:443",
                            "--net", "deny:198.51.100.7", "--json"])
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    try:
        assert info["network"] == {"allow": ["198.51.100.0/24:443"], "deny": ["198.51.100.7"]}
        shown = cli.invoke(app, ["sandbox", "network", info["id"]])
        assert json.loads(shown.stdout) == info["network"]
        changed = cli.invoke(app, ["sandbox", "network", info["id"], "--net", "all"])
        assert changed.exit_code == 0 and json.loads(changed.stdout) == "all"
        bad = cli.invoke(app, ["sandbox", "network", info["id"], "--net", "allow:10.0.0.1"])
        assert bad.exit_code == 125 and "10.0.0.0/8 is never reachable" in bad.output
        assert Sandbox.connect(info["id"], **server.sdk()).info.network == "all"
        cli.invoke(app, ["sandbox", "network", info["id"], "--net", "allow:listed.example"])
        looked = cli.invoke(app, ["sandbox", "exec", info["id"], "--", "getent", "hosts",
                                  "unlisted.example"])  # NXDOMAIN from the node itself
        assert looked.exit_code != 0
        shown = cli.invoke(app, ["sandbox", "logs", info["id"], "--json"])
        assert shown.exit_code == 0, shown.output
        seen = {(e["kind"], e["name"], e["reason"]) for e in json.loads(shown.stdout)}
        assert seen == {("dns", "unlisted.example", "not-allowed")}  # (A and AAAA asked)
        table = cli.invoke(app, ["sandbox", "logs", info["id"]])
        assert "unlisted.example" in table.stdout and "not-allowed" in table.stdout
    finally:
        cli.invoke(app, ["sandbox", "kill", info["id"]])


def test_ports_and_their_urls_from_the_command_line(server: Server) -> None:
    cli = runner(server)
    made = cli.invoke(app, ["sandbox", "create", "--public-port", "8000", "--json"])
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    sid, token = info["id"], info["ports"]["token"]
    try:
        shown = cli.invoke(app, ["sandbox", "ports", sid])
        assert shown.exit_code == 0, shown.output
        assert f"token:  {token}" in shown.stdout and "public: 8000" in shown.stdout
        private = cli.invoke(app, ["sandbox", "ports", sid, "--private", "--json"])
        assert json.loads(private.stdout)["public"] == []
        both = cli.invoke(app, ["sandbox", "ports", sid, "--public", "80", "--private"])
        assert both.exit_code == 125 and "not both" in both.output
        url = cli.invoke(app, ["sandbox", "url", sid, "8000"])
        assert url.stdout.strip() == f"{server.url}/v1/sandboxes/{sid}/ports/8000/"
        with_token = cli.invoke(app, ["sandbox", "url", sid, "8000", "--host", "--token"])
        port = server.url.rsplit(":", 1)[1]
        assert with_token.stdout.strip() == (f"http://8000-{sid}.localhost:{port}/"
                                             f"?token={token}")
        signed = cli.invoke(app, ["sandbox", "url", sid, "8000", "--signed", "60"])
        assert "corral_signature=" in signed.stdout
        assert cli.invoke(app, ["sandbox", "url", sid, "70000"]).exit_code == 125
        too_long = cli.invoke(app, ["sandbox", "url", sid, "8000", "--signed", "90000"])
        assert too_long.exit_code == 125 and "expires_in" in too_long.output
    finally:
        cli.invoke(app, ["sandbox", "kill", sid])
