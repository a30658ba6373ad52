"""Volumes over HTTP with the SDK and the CLI: created, mounted at create (read-write and
read-only, by several sandboxes at once), their files reached with no sandbox, kept from
other tenants, and every bad request refused with a clear error."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from corral import (AlreadyExistsError, InvalidArgumentError, NotFoundError,
                    ResourceExhaustedError, Sandbox, Volume)
from corral.cli import app

from .conftest import Server, assert_error


def test_a_volume_is_shared_outlives_its_sandboxes_and_has_files_without_one(
        server: Server) -> None:
    volume = Volume.create("shared-data", size="64M", **server.sdk())
    try:
        assert volume.info.size_mib == 64 and volume.info.in_use_by == []
        volume.files.write("/in/hello.txt", b"from the api\n")
        with Sandbox.create(volumes={"/data": volume}, **server.sdk()) as writer, \
                Sandbox.create(volumes={"/ro": {"volume": "shared-data", "read_only": True}},
                               runtime="namespaces", **server.sdk()) as reader:
            assert writer.info.volumes[0].model_dump() == {
                "path": "/data", "volume": "shared-data", "read_only": False}
            assert writer.commands.run("cat /data/in/hello.txt").stdout == "from the api\n"
            writer.commands.run("echo from a sandbox > /data/out.txt; "
                                "chown 1000:1000 /data/out.txt")
            assert reader.commands.run("cat /ro/out.txt").stdout == "from a sandbox\n"
            denied = reader.commands.run("echo x > /ro/nope")
            assert denied.exit_code != 0 and "Read-only" in denied.stderr
            assert sorted(Volume.from_name("shared-data", **server.sdk()).info.in_use_by) == \
                sorted([writer.id, reader.id])
            with pytest.raises(InvalidArgumentError, match="in use"):
                volume.delete()
        assert volume.files.read("/out.txt") == b"from a sandbox\n"
        assert volume.files.stat("/out.txt").uid == 1000
        names = sorted(e.name for e in volume.files.list("/"))
        assert names == ["in", "out.txt"]
        with Sandbox.create(volumes={"/again": "shared-data"}, **server.sdk()) as later:
            assert later.commands.run("cat /again/out.txt").stdout == "from a sandbox\n"
        volume.files.remove("/in", recursive=True)
        assert not volume.files.exists("/in")
    finally:
        volume.delete()
    with pytest.raises(NotFoundError):
        Volume.from_name("shared-data", **server.sdk())


def test_another_tenant_cannot_see_mount_or_touch_a_volume(server: Server) -> None:
    volume = Volume.create("private-vol", size="32M", **server.sdk())
    other = {"url": server.url, "api_key": server.other_key}
    try:
        volume.files.write("/secret", b"alpha's")
        with pytest.raises(NotFoundError):
            Sandbox.create(volumes={"/x": "private-vol"}, **other)
        assert "private-vol" not in [v.name for v in Volume.list(**other)]
        with server.http(server.other_key) as http:
            for method, path in [("GET", "/v1/volumes/private-vol"),
                                 ("DELETE", "/v1/volumes/private-vol"),
                                 ("GET", "/v1/volumes/private-vol/files?path=/secret"),
                                 ("GET", "/v1/volumes/private-vol/files/list?path=/")]:
                assert_error(http.request(method, path), 404, "not_found")
        # the same name is free for the other tenant, and a volume of its own
        theirs = Volume.create("private-vol", size="32M", **other)
        assert not theirs.files.exists("/secret")
        theirs.delete()
    finally:
        volume.delete()


def test_bad_volume_requests_are_refused(server: Server) -> None:
    with server.http(server.key) as http:
        for body, code in [({"name": "Bad Name"}, "invalid_argument"),
                           ({"name": "ok", "size": "lots"}, "invalid_argument"),
                           ({"name": "ok", "size": 0}, "invalid_argument")]:
            assert_error(http.post("/v1/volumes", json=body), 400, code)
    volume = Volume.create("dup-vol", size="32M", **server.sdk())
    try:
        with pytest.raises(AlreadyExistsError):
            Volume.create("dup-vol", size="32M", **server.sdk())
        for mounts, says in [({"/": "dup-vol"}, "mount"), ({"/proc/x": "dup-vol"}, "mount"),
                             ({"relative": "dup-vol"}, "absolute"),
                             ({"/a": "no-such-vol"}, "no volume")]:
            with pytest.raises((InvalidArgumentError, NotFoundError), match=says):
                Sandbox.create(volumes=mounts, **server.sdk())
        with pytest.raises(ResourceExhaustedError):
            Volume.create("too-big", size="200000G", **server.sdk())
        with pytest.raises(InvalidArgumentError, match="from a sandbox that mounts it"):
            volume.files.watch("/")
        # what only a sandbox's files have
        for call in (lambda: volume.files.write("/a", b"x", user="user"),
                     lambda: volume.files.mkdir("/d", user=1000),
                     lambda: volume.files.download_url("/a"),
                     lambda: volume.files.upload_url("/a")):
            with pytest.raises(InvalidArgumentError):
                call()
        assert not volume.files.exists("/a") and not volume.files.exists("/d")
    finally:
        volume.delete()


def test_the_cli_creates_fills_mounts_and_removes_a_volume(server: Server, tmp_path) -> None:
    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key,
                         "COLUMNS": "200"})
    assert cli.invoke(app, ["volume", "create", "cli-vol", "--size", "32M"]).exit_code == 0
    source = tmp_path / "a.csv"
    source.write_bytes(b"x,y\n1,2\n")
    put = cli.invoke(app, ["volume", "put", "cli-vol", str(source), "/raw/a.csv"])
    assert put.exit_code == 0, put.output
    made = cli.invoke(app, ["sandbox", "create", "--volume", "/data=cli-vol:ro"])
    assert made.exit_code == 0, made.output
    sandbox_id = made.output.strip().splitlines()[-1]
    ran = cli.invoke(app, ["sandbox", "exec", sandbox_id, "--", "wc", "-l", "/data/raw/a.csv"])
    assert ran.exit_code == 0 and ran.output.startswith("2 ")
    listed = cli.invoke(app, ["volume", "ls"])
    assert "cli-vol" in listed.output and sandbox_id in listed.output
    assert cli.invoke(app, ["sandbox", "kill", sandbox_id]).exit_code == 0
    got = cli.invoke(app, ["volume", "get", "cli-vol", "/raw/a.csv"])
    assert got.output == "x,y\n1,2\n"
    assert "/raw/a.csv" in cli.invoke(app, ["volume", "files", "cli-vol", "/", "-d", "2"]).output
    assert cli.invoke(app, ["volume", "rm", "cli-vol"]).exit_code == 0


def test_an_images_non_root_user_can_write_at_a_volumes_root(server: Server) -> None:
    volume = Volume.create("user-writable", size="32M", **server.sdk())
    try:
        with Sandbox.create(volumes={"/data": volume}, **server.sdk()) as sb:
            made = sb.commands.run("echo mine > /data/by-user && stat -c %U /data/by-user",
                                   user="user")
            assert made.exit_code == 0 and made.stdout == "user\n", made
            other = sb.commands.run("rm /data/by-user", user="nobody")  # sticky: not theirs
            assert other.exit_code != 0
    finally:
        volume.delete()
