"""The agent's root seam: ``/`` changes nothing; ``--root DIR`` maps every path under DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.agent.errors import RequestError
from corral.agent.files import check_path
from corral.agent.root import Root, from_argv
from corral.agent.users import resolve_user

pytestmark = pytest.mark.rootless


def test_the_real_root_maps_nothing() -> None:
    root = from_argv([])
    for path in ("/", "/work/a.txt", "/a/../b"):
        assert root.host(path) == path
        assert root.inside(path) == path


def test_a_given_root_holds_every_path(tmp_path: Path) -> None:
    root = from_argv(["--root", str(tmp_path)])
    assert root.host("/") == f"{tmp_path}/"
    assert root.host("/work/a.txt") == f"{tmp_path}/work/a.txt"
    assert root.host("/../../etc/passwd") == f"{tmp_path}/etc/passwd"
    assert root.inside(str(tmp_path)) == "/"
    assert root.inside(f"{tmp_path}/work") == "/work"
    assert root.inside(f"{tmp_path}x/work") is None
    assert root.inside("/etc/passwd") is None


@pytest.mark.parametrize("argv", [["--root"], ["--root", "relative"], ["--other", "/x"],
                                  ["--root", "/a", "/b"]])
def test_other_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        from_argv(argv)


def test_links_out_of_a_given_root_are_refused(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to("/etc")
    (tmp_path / "in").symlink_to("work")  # absolute links resolve on the host: out
    (tmp_path / "work").mkdir()
    root = Root(str(tmp_path))
    assert check_path("/in/x", root) == "/in/x"
    with pytest.raises(RequestError) as caught:
        check_path("/out/passwd", root)
    assert caught.value.code == "permission_denied"
    assert check_path("/out/passwd") == "/out/passwd"  # the real root: no such escape


def test_users_come_from_the_roots_passwd(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("alice:x:4242:4343::/home/alice:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("extra:x:77:alice\n")
    user = resolve_user("alice", Root(str(tmp_path)))
    assert (user.uid, user.gid, user.home, user.groups) == (4242, 4343, "/home/alice", (77,))
    if not os.path.exists("/etc/passwd") or "alice:" not in Path("/etc/passwd").read_text():
        with pytest.raises(RequestError):
            resolve_user("alice")
