"""The console's committed assets are what its build makes: ``npm ci`` from the lockfile,
then ``ui/build.mjs``, in a fresh copy of ``ui/``, gives byte for byte the files under
``src/corral/server/ui/dist`` (no more, no fewer).

``node_modules`` is installed once per lockfile content under the test cache
(``CORRAL_TEST_VENVS``); the test skips where Node or the npm registry is missing."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UI = REPO / "ui"
DIST = REPO / "src" / "corral" / "server" / "ui" / "dist"
CACHE = Path(os.environ.get("CORRAL_TEST_VENVS", "/var/cache/corral/test-venvs"))
SOURCES = ("package.json", "package-lock.json", "build.mjs", "src")


def node_modules() -> Path:
    """``node_modules`` as ``npm ci`` installs it from ``ui/package-lock.json``, made once
    per lockfile (skips without node and npm, or without the registry)."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node and npm are not installed (scripts/install --test installs them)")
    lock = (UI / "package-lock.json").read_bytes()
    folder = CACHE / f"console-npm-{hashlib.sha256(lock).hexdigest()[:12]}"
    if (folder / "node_modules").is_dir():
        return folder / "node_modules"
    building = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(UI / name, building / name)
    try:
        installed = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                                    "--quiet"],
                                   cwd=building, capture_output=True, text=True, timeout=600)
        failure = installed.stderr.strip()[-300:] if installed.returncode else ""
    except subprocess.TimeoutExpired:
        failure = "npm ran for over 600 s"
    if failure:
        shutil.rmtree(building, ignore_errors=True)
        pytest.skip(f"could not install the console's packages from npm (offline?): {failure}")
    try:
        building.rename(folder)
    except OSError:  # another run finished first
        shutil.rmtree(building, ignore_errors=True)
    return folder / "node_modules"


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
