"""The console's committed assets are what its build makes: ``npm ci`` from the lockfile,
then ``ui/build.mjs``, in a fresh copy of ``ui/``, gives byte for byte the files under
``src/corral/server/ui/dist`` (no more, no fewer).

``node_modules`` is installed once per lockfile content under the test cache
(``CORRAL_TEST_VENVS``, see ``tests/_npm.py``); the test skips where Node is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests import _npm

REPO = Path(__file__).resolve().parents[2]
UI = REPO / "ui"
DIST = REPO / "src" / "corral" / "server" / "ui" / "dist"
SOURCES = ("package.json", "package-lock.json", "build.mjs", "src")


def node_modules() -> Path:
    """``node_modules`` as ``npm ci`` installs it from ``ui/package-lock.json``, made once
    per lockfile."""
    files = {name: (UI / name).read_bytes() for name in ("package.json", "package-lock.json")}
    return _npm.installed("console-npm", files, ["ci", "--ignore-scripts"],
                          "the console's packages") / "node_modules"


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_the_committed_assets_are_the_build_of_the_sources(tmp_path: Path) -> None:
    modules = node_modules()
    work = tmp_path / "ui"
    work.mkdir()
    for name in SOURCES:
        source = UI / name
        if source.is_dir():
            shutil.copytree(source, work / name)
        else:
            shutil.copy(source, work / name)
    shutil.copytree(modules, work / "node_modules", symlinks=True)
    built = tmp_path / "dist"
    ran = subprocess.run(["node", "build.mjs", "--out", str(built)], cwd=work,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    fresh, committed = tree(built), tree(DIST)
    assert sorted(fresh) == sorted(committed), (
        "the committed console assets differ from a fresh build: run `npm ci && npm run "
        "build` in ui/ and commit src/corral/server/ui/dist")
    for name, content in fresh.items():
        assert committed[name] == content, f"{name} differs from a fresh build of ui/"


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() -> None:
    page = (DIST / "index.html").read_text()
    scripts = page.count("<script")
    assert scripts == 1 and '<script type="module" src="/ui/assets/' in page, page
    assert "<style" not in page and " style=" not in page, page
    assert "http://" not in page and "https://" not in page, page
    assets = tree(DIST / "assets")
    assert {Path(name).suffix for name in assets} == {".js", ".css"}, sorted(assets)
    for name in assets:
        assert f"/ui/assets/{name}" in page, f"{name} is built but the page does not load it"
