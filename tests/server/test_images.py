"""Images over HTTP with the SDK: built from code, named per tenant, started from, kept
apart from other tenants, and every bad request or context refused with a clear error.
The builds here need no network (run, env, workdir and copy steps); package steps against
a test index are tests/integration/test_image_build.py's."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import pytest

from corral import (BuildFailedError, Image, InvalidArgumentError, NotFoundError, Sandbox,
                    SandboxNotRunningError)

from .conftest import Server, assert_error


@pytest.fixture(scope="module")
def built(server: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, str]:
    app = tmp_path_factory.mktemp("app")
    (app / "main.py").write_text("print('hello from the image')\n")
    (app / "cache.pyc").write_bytes(b"\0")
    image = (Image.base("python")
             .run_commands("echo built > /etc/corral-test && rm /etc/hostname")
             .env({"IMAGE_GREETING": "hi"})
             .add_local_dir(app, "/app", ignore=["*.pyc"], chown="user")
             .workdir("/app"))
    lines: list[str] = []
    info = image.build(name="test-env:1", on_log=lines.append, **server.sdk())
    assert info.name == "test-env:1" and info.id.startswith("sha256:")
    assert info.layers == 3 and info.workdir == "/app" and info.env["IMAGE_GREETING"] == "hi"
    assert any("[1/4] RUN echo built" in line for line in lines), lines
    assert not any("(cached)" in line for line in lines if "[1/4]" in line) or True
    return image, info.id


def test_a_sandbox_from_a_built_image_sees_every_step(server: Server,
                                                      built: tuple[Image, str]) -> None:
    with Sandbox.create("test-env:1", **server.sdk()) as sb:
        assert sb.info.image == "test-env:1"
        result = sb.commands.run("cat /etc/corral-test; test -e /etc/hostname || echo gone; "
                                 "echo $IMAGE_GREETING; pwd; ls; stat -c %u main.py; "
                                 "python3 main.py")
        assert result.stdout.split("\n")[:-1] == [
            "built", "gone", "hi", "/app", "main.py", "1000", "hello from the image"]


def test_a_rebuild_runs_nothing_and_create_takes_an_image(server: Server,
                                                          built: tuple[Image, str]) -> None:
    image, image_id = built
    lines: list[str] = []
    again = image.build(name="test-env:1", on_log=lines.append, **server.sdk())
    assert again.id == image_id
    steps = [line for line in lines if line.startswith("[")]
    assert len(steps) == 4 and all(line.endswith("(cached)") for line in steps), lines
    changed = image.run_commands("echo changed > /etc/corral-changed")
    lines.clear()
    info = changed.build(on_log=lines.append, **server.sdk())
    steps = [line for line in lines if line.startswith("[")]
    assert [line.endswith("(cached)") for line in steps] == [True] * 4 + [False], lines
    assert info.name is None and info.id != image_id
    with Sandbox.create(changed, **server.sdk()) as sb:  # built (cached), then started
        assert sb.commands.run("cat /etc/corral-changed").stdout == "changed\n"


def test_another_tenant_cannot_see_use_or_remove_an_image(server: Server,
                                                          built: tuple[Image, str]) -> None:
    _, image_id = built
    other = {"url": server.url, "api_key": server.other_key}
    for ref in ("test-env:1", image_id):
        with pytest.raises(NotFoundError):
            Sandbox.create(ref, **other)
    with server.http(server.other_key) as http:
        names = [i["name"] for i in http.get("/v1/images").json()["images"]]
        assert "test-env:1" not in names and "python" in names
        for ref in ("test-env:1", image_id):
            assert_error(http.get(f"/v1/images/{ref}"), 404, "not_found")
            assert_error(http.delete(f"/v1/images/{ref}"), 404, "not_found")
        body = {"spec": {"base": image_id, "steps": []}}
        assert_error(http.post("/v1/images", json=body), 404, "not_found")
    with server.http(server.key) as http:
        assert http.get("/v1/images/test-env:1").json()["id"] == image_id


def test_a_failing_step_names_itself_and_its_log_stays(server: Server) -> None:
    image = Image.base("python").run_commands("echo about to fail; exit 3")
    with pytest.raises(BuildFailedError, match=r"step 1 \(RUN echo about to fail; exit 3\) "
                                               r"failed with exit status 3:\nabout to fail"):
        image.build(name="broken", **server.sdk())
    with server.http(server.key) as http:
        response = http.post("/v1/images", json={"spec": image.spec.model_dump()})
        events = [line for line in response.iter_lines() if line]
        build_id = httpx.Response(200, content=events[0]).json()["build"]
        assert '"type":"error"' in events[-1] and "build_failed" in events[-1]
        info = http.get(f"/v1/images/builds/{build_id}").json()
        assert info["state"] == "failed" and "about to fail" in info["log"]
        assert "exit status 3" in info["error"]
    with server.http(server.other_key) as http:  # not theirs
        assert_error(http.get(f"/v1/images/builds/{build_id}"), 404, "not_found")


@pytest.mark.parametrize(("body", "status", "code", "says"), [
    ({"spec": {"base": "no-such-image"}}, 404, "not_found", "no image 'no-such-image'"),
    ({"spec": {"base": "python"}, "name": "python:2"}, 400, "invalid_argument",
     "names a public image"),
    ({"spec": {"base": "python"}, "name": "Bad Name"}, 400, "invalid_argument", "name"),
    ({"spec": {"base": "python", "steps": [{"kind": "pip", "packages": ["-e ."]}]}}, 400,
     "invalid_argument", "pip package"),
    ({"spec": {"base": "python", "steps": [{"kind": "copy", "sources": ["a"],
                                            "destination": "/a"}]}}, 400,
     "invalid_argument", "needs a build context"),
    ({"spec": {"base": "python"}, "context": "ctx-" + "0" * 32}, 404, "not_found",
     "no build context"),
])
def test_bad_builds_are_refused_before_anything_runs(server: Server, body: dict[str, object],
                                                     status: int, code: str, says: str) -> None:
    with server.http(server.key) as http:
        message = assert_error(http.post("/v1/images", json=body), status, code)
        assert says in message, message


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(("archive", "says"), [
    (_tar((_member("../escape"), b"x")), "leaves it"),
    (_tar((_member("/etc/escape"), b"x")), "absolute path"),
    (_tar((_member("a"), b"x"), (_member("b", tarfile.LNKTYPE, "a"), None)), "hard links"),
    (_tar((_member("dev", tarfile.CHRTYPE), None)), "hard links, devices"),
    (_tar((_member("link", tarfile.SYMTYPE, "/etc"), None), (_member("link/passwd"), b"x")),
     "not a folder|appears twice"),
    (b"this is not a tar archive" * 40, "not a tar archive"),
])
def test_hostile_build_contexts_are_refused(server: Server, archive: bytes, says: str,
                                            tmp_path: Path) -> None:
    with server.http(server.key) as http:
        response = http.post("/v1/images/contexts", content=archive,
                             headers={"Content-Type": "application/octet-stream"})
        message = assert_error(response, 400, "invalid_argument")
        assert pytest.importorskip("re").search(says, message), message
    assert not Path("/etc/escape").exists()


def test_a_removed_image_is_gone_and_prune_frees_its_layers(server: Server) -> None:
    image = Image.base("python").run_commands("echo to-prune > /etc/to-prune")
    info = image.build(name="to-prune", **server.sdk())
    with server.http(server.key) as http:
        assert http.delete("/v1/images/to-prune").status_code == 204
        assert_error(http.get("/v1/images/to-prune:latest"), 404, "not_found")
        with pytest.raises(NotFoundError):
            Sandbox.create(info.id, **server.sdk())
        pruned = http.post("/v1/images/prune").json()
        assert pruned["layers"] >= 1 and pruned["bytes_freed"] >= 0
        assert http.get("/v1/images/test-env:1").status_code in (200, 404)


def test_the_sdk_checks_steps_before_sending_them() -> None:
    with pytest.raises(InvalidArgumentError, match="pip package"):
        Image.base("python").pip_install("--index-url=http://evil")
    with pytest.raises(InvalidArgumentError, match="absolute path"):
        Image.base("python").workdir("relative")
    with pytest.raises(InvalidArgumentError, match="no such folder"):
        Image.base("python").add_local_dir("/nonexistent-folder", "/x")


def test_the_cli_builds_a_dockerfile_lists_inspects_and_removes(server: Server,
                                                               tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from corral.cli import app

    (tmp_path / "hello.txt").write_text("from the context\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM python\nARG WHO=world\nENV WHO=$WHO\nCOPY hello.txt /srv/\n"
        "RUN cat /srv/hello.txt > /srv/copied\nWORKDIR /srv\nCMD [\"cat\", \"copied\"]\n")
    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key})
    built = cli.invoke(app, ["image", "build", "-f", str(tmp_path / "Dockerfile"),
                             "--name", "cli-env:1", "--build-arg", "WHO=tests", str(tmp_path)])
    assert built.exit_code == 0, built.output
    assert "[3/4] RUN cat /srv/hello.txt" in built.output and built.output.endswith("cli-env:1\n")
    listed = cli.invoke(app, ["image", "ls", "--json"])
    assert listed.exit_code == 0 and '"cli-env:1"' in listed.output
    shown = cli.invoke(app, ["image", "inspect", "cli-env:1"])
    assert shown.exit_code == 0, shown.output
    assert '"WHO": "tests"' in shown.output and '"copied"' in shown.output
    with Sandbox.create("cli-env:1", **server.sdk()) as sb:
        assert sb.commands.run("cat copied").stdout == "from the context\n"
    assert cli.invoke(app, ["image", "rm", "cli-env:1"]).exit_code == 0
    missing = cli.invoke(app, ["image", "inspect", "cli-env:1"])
    assert missing.exit_code != 0 and "no image" in missing.output
    bad = tmp_path / "Bad"
    bad.write_text("FROM python\nEXPOSE 80\n")
    refused = cli.invoke(app, ["image", "build", "-f", str(bad), str(tmp_path)])
    assert refused.exit_code != 0 and "line 2: EXPOSE is not supported" in refused.output


def test_an_imported_archive_is_built_on_and_started_from(server: Server,
                                                         tmp_path: Path) -> None:
    from corral.node.images import ImageStore
    from tests.conftest import IMAGE_DIR
    from tests.fakes.oci_archive import oci_archive
    from tests.integration.test_oci_image import shell_layer

    layer = shell_layer(ImageStore(IMAGE_DIR).get("python").rootfs)
    archive = oci_archive(tmp_path / "shell.tar", [layer], {
        "Env": ["PATH=/usr/bin:/bin", "FROM_ARCHIVE=yes"], "WorkingDir": "/srv"})
    image = Image.from_oci_archive(archive).run_commands("echo built on it > /srv/made")
    info = image.build(name="from-archive:1", **server.sdk())
    assert info.base is None and info.env["FROM_ARCHIVE"] == "yes" and info.workdir == "/srv"
    with Sandbox.create("from-archive:1", **server.sdk()) as sb:
        result = sb.commands.run("read line < made; echo $line; echo $FROM_ARCHIVE; "
                                 "test -e /etc/passwd || "
                                 "echo no-passwd")
        assert result.stdout == "built on it\nyes\nno-passwd\n", result
    with server.http(server.key) as http:  # a bad archive: refused by name, nothing named
        answer = http.post("/v1/images/archives", params={"name": "junk:1"},
                           content=b"not an archive" * 100)
        assert answer.status_code == 400, answer.text
        assert_error(http.get("/v1/images/junk:1"), 404, "not_found")
    with server.http(server.other_key) as http:
        assert_error(http.get("/v1/images/from-archive:1"), 404, "not_found")


def test_an_images_user_runs_its_commands_and_code(server: Server) -> None:
    image = Image.base("python").run_commands("mkdir -p /srv/own").user("user")
    image.build(name="as-user:1", **server.sdk())
    with Sandbox.create("as-user:1", **server.sdk()) as sb:
        assert sb.commands.run("id -un; echo $HOME").stdout == "user\n/home/user\n"
        assert sb.commands.run("id -un", user="root").stdout == "root\n"  # still chosen
        assert sb.run_code("import getpass; getpass.getuser()").text == "'user'"
    with Sandbox.create("python", **server.sdk()) as sb:  # public images: root, as before
        assert sb.commands.run("id -un").stdout == "root\n"


def test_a_corral_toml_builds_with_overlapping_copies(server: Server, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('toml')\n")
    (tmp_path / "app" / "junk.log").write_text("x")
    (tmp_path / "corral.toml").write_text(
        'base = "python"\nlabels = {team = "data"}\ncmd = ["python3", "/srv/main.py"]\n\n'
        '[[steps]]\nkind = "copy"\nsources = ["app"]\ndestination = "/srv"\n'
        'ignore = ["*.log"]\n\n'
        '[[steps]]\nkind = "copy"\nsources = ["app/main.py"]\ndestination = "/opt/"\n')
    image = Image.from_toml(tmp_path / "corral.toml", context=tmp_path)
    info = image.build(name="toml-env:1", **server.sdk())
    assert info.labels == {"team": "data"} and info.cmd == ["python3", "/srv/main.py"]
    with Sandbox.create("toml-env:1", **server.sdk()) as sb:
        assert sb.commands.run("python3 /srv/main.py; ls /srv; ls /opt").stdout == (
            "toml\nmain.py\nmain.py\n")
    (tmp_path / "bad.toml").write_text('base = "python"\n[[steps]]\nkind = "teleport"\n')
    with pytest.raises(InvalidArgumentError, match="bad.toml"):
        Image.from_toml(tmp_path / "bad.toml")


def test_a_sandboxs_files_are_kept_as_an_image_it_runs_on(server: Server) -> None:
    from typer.testing import CliRunner

    from corral.cli import app

    with Sandbox.create(env={"CREATE_SECRET": "not-in-the-image"}, **server.sdk()) as sb:
        sb.commands.run("echo state > /work/state.txt; rm /etc/hostname; "
                        "mkdir -p /home/user/own && chown user /home/user/own")
        info = sb.snapshot_filesystem("kept-state:1")
        assert info.name == "kept-state:1" and info.steps[-1].startswith("SNAPSHOT")
        assert sb.commands.run("echo running").stdout == "running\n"  # it runs on
        cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key})
        unnamed = cli.invoke(app, ["sandbox", "snapshot", sb.id])
        assert unnamed.exit_code == 0 and unnamed.output.startswith("sha256:")
    with Sandbox.create("kept-state:1", **server.sdk()) as copy:
        result = copy.commands.run("cat /work/state.txt; test -e /etc/hostname || echo gone; "
                                   "stat -c %U /home/user/own; echo [$CREATE_SECRET]")
        assert result.stdout == "state\ngone\nuser\n[]\n", result
    built = Image.base("kept-state:1").run_commands("cat /work/state.txt > /work/again")
    built.build(name="on-a-snapshot:1", **server.sdk())
    with Sandbox.create("on-a-snapshot:1", **server.sdk()) as on_it:
        assert on_it.commands.run("cat /work/again").stdout == "state\n"
    with server.http(server.other_key) as http:  # not another tenant's to keep
        assert_error(http.post(f"/v1/sandboxes/{sb.id}/snapshot-filesystem", json={}), 404,
                     "not_found")
    stopped = Sandbox.connect(sb.id, **server.sdk())
    with pytest.raises(SandboxNotRunningError, match="stopped"):
        stopped.snapshot_filesystem()
