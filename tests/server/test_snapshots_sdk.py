"""Snapshots and forks through the SDK and the CLI, against the session's server: a memory
snapshot starts sandboxes where its sandbox was (a kernel's variable and a file), is
listed, deleted, and no other tenant's; a fork's copies have their own ids, tokens and
files; a files-only snapshot works on each runtime; what a memory snapshot fixes may not
be given; out-of-range counts and ttls are refused by the SDK and by the server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from corral import InvalidArgumentError, NotFoundError, RuntimeUnavailableError, Sandbox
from corral.cli import app
from corral.sdk import Snapshot
from corral.sdk.snapshots import AsyncSnapshot
from tests.conftest import WORKING
from tests.unit.test_blocking import problems

from .conftest import Server, assert_error

needs_gvisor = pytest.mark.skipif("gvisor" not in WORKING,
                                  reason="memory snapshots need gVisor, which does not "
                                         "work here")


@contextlib.contextmanager
def deleted_after(snapshot_id: str, server: Server) -> Iterator[None]:
    """Delete the snapshot at the end, unless the test already did."""
    try:
        yield
    finally:
        with contextlib.suppress(NotFoundError):
            Snapshot.delete(snapshot_id, **server.sdk())


def kill_all(ids: list[str], server: Server) -> None:
    for sandbox_id in ids:
        with contextlib.suppress(NotFoundError):
            sb = Sandbox.connect(sandbox_id, **server.sdk())
            try:
                sb.kill()
            finally:
                sb.close()


def listed(server: Server) -> list[str]:
    return [info.id for info in Snapshot.list(**server.sdk())]


def test_the_blocking_snapshot_calls_match_the_async_ones() -> None:
    assert problems(AsyncSnapshot, Snapshot) == []


@needs_gvisor
def test_a_memory_snapshot_starts_sandboxes_where_it_was(server: Server) -> None:
    with Sandbox.create(runtime="gvisor", timeout=600, **server.sdk()) as sb:
        sb.run_code("token = 'kept in memory'")
        sb.files.write("/work/kept.txt", "kept on disk\n")
        snap = sb.snapshot("before", ttl=3600)
        with deleted_after(snap.id, server):
            assert (snap.memory, snap.sandbox_id, snap.runtime, snap.name) == (
                True, sb.id, "gvisor", "before")
            assert snap.id in listed(server)
            assert Snapshot.get(snap.id, **server.sdk()).expires_at == snap.expires_at
            with Sandbox.create(snapshot=snap, timeout=600, metadata={"from": "snapshot"},
                                **server.sdk()) as again:
                assert again.id != sb.id
                assert again.info.runtime == "gvisor"
                assert again.info.metadata == {"from": "snapshot"}
                assert again.run_code("token").text == "'kept in memory'"
                assert again.files.read_text("/work/kept.txt") == "kept on disk\n"
            sb.run_code("token = 'changed after'")  # the source ran on, apart
            assert sb.run_code("token").text == "'changed after'"

            with server.http(server.other_key) as theirs:
                assert_error(theirs.get(f"/v1/snapshots/{snap.id}"), 404, "not_found")
                assert_error(theirs.delete(f"/v1/snapshots/{snap.id}"), 404, "not_found")
                started = theirs.post("/v1/sandboxes", json={"snapshot": snap.id})
                if started.status_code == 201:  # a leak: do not leave it running
                    theirs.delete(f"/v1/sandboxes/{started.json()['id']}")
                assert_error(started, 404, "not_found")
                assert snap.id not in [s["id"] for s in
                                       theirs.get("/v1/snapshots").json()["snapshots"]]
            assert snap.id in listed(server)  # their delete did nothing

            Snapshot.delete(snap.id, **server.sdk())
            assert snap.id not in listed(server)
            with pytest.raises(NotFoundError):
                Sandbox.create(snapshot=snap.id, **server.sdk())
            with pytest.raises(NotFoundError):
                Snapshot.get(snap.id, **server.sdk())


@needs_gvisor
def test_fork_makes_copies_each_with_its_own_id_token_and_files(server: Server) -> None:
    with Sandbox.create(runtime="gvisor", timeout=600, **server.sdk()) as sb:
        sb.run_code("token = 'before the fork'")
        copies = sb.fork(3, timeout=600, metadata={"copy": "yes"})
        with contextlib.ExitStack() as killing:  # each killed, its own connection closed
            for copy in copies:
                killing.enter_context(copy)
            assert len(copies) == 3
            assert len({sb.id, *(c.id for c in copies)}) == 4
            tokens = {c.info.ports.token for c in copies if c.info.ports is not None}
            assert sb.info.ports is not None
            assert len(tokens | {sb.info.ports.token}) == 4
            for copy in copies:
                assert copy.info.metadata == {"copy": "yes"}
                assert copy.run_code("token").text == "'before the fork'"
            copies[0].files.write("/work/only-here.txt", "one copy's\n")
            assert copies[0].files.exists("/work/only-here.txt")
            assert not copies[1].files.exists("/work/only-here.txt")
            assert not sb.files.exists("/work/only-here.txt")
        # Closing the copies' connections left the source's alone.
        assert sb.run_code("token").text == "'before the fork'"


def test_a_files_only_snapshot_on_each_runtime(server: Server, runtime: str) -> None:
    with Sandbox.create(runtime=runtime, timeout=600, **server.sdk()) as sb:
        sb.files.write("/work/kept.txt", "files only\n")
        snap = sb.snapshot(memory=False)
        with deleted_after(snap.id, server):
            assert (snap.memory, snap.runtime, snap.sandbox_id) == (False, runtime, sb.id)
            with Sandbox.create(snapshot=snap.id, runtime=runtime, env={"FROM": "snap"},
                                timeout=600, **server.sdk()) as again:
                assert again.files.read_text("/work/kept.txt") == "files only\n"
                assert again.commands.run("echo $FROM").stdout == "snap\n"
                assert again.info.runtime == runtime
            with pytest.raises(InvalidArgumentError, match="leave image out"):
                Sandbox.create("python", snapshot=snap.id, **server.sdk())


@pytest.mark.skipif("namespaces" not in WORKING, reason="namespaces do not work here")
def test_a_memory_snapshot_on_namespaces_is_refused_and_nothing_kept(server: Server) -> None:
    with Sandbox.create(runtime="namespaces", timeout=600, **server.sdk()) as sb:
        with pytest.raises(RuntimeUnavailableError):
            sb.snapshot()
        assert [s for s in Snapshot.list(**server.sdk()) if s.sandbox_id == sb.id] == []


@needs_gvisor
def test_what_a_memory_snapshot_fixes_may_not_be_given(server: Server) -> None:
    with Sandbox.create(runtime="gvisor", timeout=600, **server.sdk()) as sb:
        snap = sb.snapshot()
        with deleted_after(snap.id, server):
            choices: list[dict[str, Any]] = [
                {"image": "python"}, {"runtime": "gvisor"}, {"env": {"A": "1"}},
                {"network": "all"}, {"resources": {"memory": "1G"}}]
            for given in choices:
                with pytest.raises(InvalidArgumentError, match="leave them out") as caught:
                    Sandbox.create(snapshot=snap.id, **given, **server.sdk())
                assert next(iter(given)) in caught.value.message


def test_out_of_range_counts_and_ttls_are_refused(server: Server,
                                                  default_sandbox: Sandbox) -> None:
    for count in (0, 17):
        with pytest.raises(InvalidArgumentError, match="count"):
            default_sandbox.fork(count)
    for ttl in (59, 7_776_001):
        with pytest.raises(InvalidArgumentError, match="ttl must be 60 to 7776000 seconds"):
            default_sandbox.snapshot(ttl=ttl)
    with pytest.raises(InvalidArgumentError, match="snapshot"):
        Sandbox.create(snapshot="snap-not-hex", **server.sdk())
    # The server refuses them too, whatever a client checks.
    with server.http(server.key) as http:
        base = f"/v1/sandboxes/{default_sandbox.id}"
        for count in (0, 17):
            assert_error(http.post(f"{base}/fork", json={"count": count}), 400,
                         "invalid_argument")
        assert_error(http.post(f"{base}/snapshots", json={"ttl": 59}), 400,
                     "invalid_argument")
    assert [s for s in Snapshot.list(**server.sdk())
            if s.sandbox_id == default_sandbox.id] == []


@needs_gvisor
def test_the_cli_snapshots_lists_forks_and_removes(server: Server) -> None:
    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key,
                         "COLUMNS": "200"})
    started: list[str] = []
    with Sandbox.create(runtime="gvisor", timeout=600, **server.sdk()) as sb:
        sb.run_code("token = 'from the cli'")
        made = cli.invoke(app, ["snapshot", "create", sb.id, "--name", "cli", "--ttl", "600"])
        assert made.exit_code == 0, made.output
        snap_id = made.stdout.strip()
        files = cli.invoke(app, ["snapshot", "create", sb.id, "--files-only", "--json"])
        assert files.exit_code == 0, files.output
        files_id = json.loads(files.stdout)["id"]
        try:
            with deleted_after(snap_id, server), deleted_after(files_id, server):
                shown = cli.invoke(app, ["snapshot", "ls", "--json"])
                assert shown.exit_code == 0, shown.output
                mine = {s["id"]: s for s in json.loads(shown.stdout)}
                assert (mine[snap_id]["name"], mine[snap_id]["memory"]) == ("cli", True)
                assert mine[files_id]["memory"] is False
                table = cli.invoke(app, ["snapshot", "ls"])
                assert snap_id in table.stdout and "memory" in table.stdout
                got = cli.invoke(app, ["snapshot", "get", snap_id])
                assert json.loads(got.stdout)["sandbox_id"] == sb.id

                created = cli.invoke(app, ["sandbox", "create", "--snapshot", snap_id])
                assert created.exit_code == 0, created.output
                started.append(created.stdout.strip())
                again = Sandbox.connect(started[-1], **server.sdk())
                try:
                    assert again.run_code("token").text == "'from the cli'"
                finally:
                    again.close()

                forked = cli.invoke(app, ["sandbox", "fork", sb.id, "-n", "2"])
                assert forked.exit_code == 0, forked.output
                copies = forked.stdout.split()
                started.extend(copies)
                assert len(set(copies)) == 2 and sb.id not in copies
                for copy_id in copies:
                    copy = Sandbox.connect(copy_id, **server.sdk())
                    try:
                        assert copy.run_code("token").text == "'from the cli'"
                    finally:
                        copy.close()

                removed = cli.invoke(app, ["snapshot", "rm", snap_id, files_id])
                assert removed.exit_code == 0, removed.output
                assert not {snap_id, files_id} & set(listed(server))
                gone = cli.invoke(app, ["snapshot", "get", snap_id])
                assert gone.exit_code == 125 and "no snapshot" in gone.output
        finally:
            kill_all(started, server)
    refused = cli.invoke(app, ["sandbox", "fork", sb.id, "-n", "17"])
    assert refused.exit_code == 2  # typer's own range check, before any call
