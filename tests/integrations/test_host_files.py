"""CVE-2026-25592's class: a model-chosen host path never writes outside the directories the
developer allow-listed — not through '..', an absolute path, a symlink (planted before or in
the path), nor a Windows-style path; every check comes before the first byte is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral import InvalidArgumentError, PermissionDeniedError
from corral.integrations import HostDirectories, SandboxTools

from .conftest import Corral

HOSTILE = ["../../etc/cron.d/x", "/root/.bashrc", "/etc/cron.d/x", "..\\..\\evil.txt",
           "C:\\Users\\Public\\Startup\\evil.bat", "C:/Windows/evil.bat",
           "sub/../../escape.txt", "ok\x00.txt", "\\\\server\\share\\x", "a/\n/b"]


@pytest.fixture
def area(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    return allowed, outside


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_write_nothing(area: tuple[Path, Path], path: str) -> None:
    allowed, outside = area
    before = _files_under(allowed.parent)
    with pytest.raises((PermissionDeniedError, InvalidArgumentError)):
        HostDirectories(allowed).write_bytes(path, b"payload")
    assert _files_under(allowed.parent) == before


def test_symlinks_out_are_refused(area: tuple[Path, Path]) -> None:
    allowed, outside = area
    (allowed / "link-dir").symlink_to(outside)
    (allowed / "link-file").symlink_to(outside / "target")
    dirs = HostDirectories(allowed)
    for path in ("link-dir/x", str(allowed / "link-dir" / "x"), "link-dir/deeper/x"):
        with pytest.raises(PermissionDeniedError):
            dirs.write_bytes(path, b"payload")
    # A link at the name itself is replaced, never written through.
    dirs.write_bytes("link-file", b"payload")
    assert not (outside / "target").exists() and _files_under(outside) == set()
    assert not (allowed / "link-file").is_symlink()
    with pytest.raises(PermissionDeniedError):
        dirs.read_bytes("link-dir/secret")


def test_the_allow_list_itself_may_be_a_symlink(area: tuple[Path, Path]) -> None:
    allowed, outside = area
    alias = allowed.parent / "alias"
    alias.symlink_to(allowed)
    written = HostDirectories(alias).write_bytes("a/b.txt", b"ok")
    assert written == allowed / "a" / "b.txt" and written.read_bytes() == b"ok"
    assert HostDirectories(alias).read_bytes(str(alias / "a" / "b.txt")) == b"ok"
    assert not any(p.name.endswith(".tmp") for p in allowed.rglob("*"))


def test_nothing_is_allowed_by_default(tmp_path: Path) -> None:
    with pytest.raises(PermissionDeniedError):
        HostDirectories().write_bytes(str(tmp_path / "x"), b"")


@pytest.mark.anyio
async def test_download_checks_the_host_path_before_fetching(corral: Corral,
                                                              area: tuple[Path, Path]) -> None:
    allowed, outside = area
    tools = SandboxTools(download_dirs=HostDirectories(allowed), connect=corral.sdk())
    try:
        await tools.write_file("/work/out.txt", "result")
        for path in ("../outside/x", str(outside / "x"), "/root/.bashrc"):
            with pytest.raises(PermissionDeniedError):
                await tools.download("/work/out.txt", path)
        assert _files_under(outside) == set()
        where = await tools.download("/work/out.txt", "reports/out.txt")
        assert Path(where).read_text() == "result" and where == str(allowed / "reports/out.txt")
        with pytest.raises(PermissionDeniedError):
            await tools.upload(str(outside / "x"), "/work/x")  # upload_dirs: none given
    finally:
        await tools.aclose()


def test_model_facing_tools_take_no_host_path() -> None:
    from corral.integrations.agent_framework import CorralTools

    for tool in CorralTools().tools():
        assert set(tool.parameters()["properties"]) <= {"code", "command", "path", "content"}
    assert os.path.basename(__file__)  # the host functions are methods, never tools
