"""Tests for corral.node.image_addons: pinned wheels unpacked as zips (hash checked, paths
kept inside the tree), kernelspecs written by Corral, and the pins in the cache key.

Nothing here reaches a registry: the download step is a runner that drops a wheel made
here into pip's destination, as ``pip download`` would. The real fetch is exercised by
building the ``code-interpreter`` image (tests/integration/test_kernels.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from corral.api.errors import InternalError, InvalidArgumentError
from corral.node.image_addons import (
    Kernelspec,
    NpmTree,
    PypiWheel,
    add_kernelspec,
    add_wheel,
)
from corral.node.images import BUILTIN_IMAGES


def make_wheel(folder: Path, members: dict[str, bytes]) -> Path:
    path = folder / "kern-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def fake_pip(wheel: Path):  # type: ignore[no-untyped-def]
    """A runner whose ``pip download`` leaves ``wheel`` in its ``--dest``."""
    def run(step: str, argv: list[str], cwd: Path | None) -> None:
        assert "--no-deps" in argv and "--only-binary=:all:" in argv and "kern==1.0" in argv
        dest = Path(argv[argv.index("--dest") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
    return run


def test_a_wheels_data_is_unpacked_under_its_prefix(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    wheel = make_wheel(tmp_path, {
        "kern/__init__.py": b"print('never run')",
        "kern-1.0.data/data/share/jupyter/kernels/k/k.jar": b"jar",
        "kern-1.0.dist-info/METADATA": b"Name: kern"})
    pin = PypiWheel("kern", "1.0", hashlib.sha256(wheel.read_bytes()).hexdigest())
    add_wheel(str(tree), pin, fake_pip(wheel))
    jar = tree / "usr/local/share/jupyter/kernels/k/k.jar"
    assert jar.read_bytes() == b"jar" and oct(jar.stat().st_mode & 0o777) == "0o644"
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert files == ["usr/local/share/jupyter/kernels/k/k.jar"]  # modules not installed


def test_a_wheel_with_another_hash_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    wheel = make_wheel(tmp_path, {"kern-1.0.data/data/x": b"x"})
    with pytest.raises(InternalError, match="not the pinned"):
        add_wheel(str(tree), PypiWheel("kern", "1.0", "0" * 64), fake_pip(wheel))
    assert list(tree.iterdir()) == []


@pytest.mark.parametrize("member", ["kern-1.0.data/data/../../../escape",
                                    "kern-1.0.data/data/a/../../../../escape"])
def test_a_wheel_cannot_write_outside_the_tree(tmp_path: Path, member: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    wheel = make_wheel(tmp_path, {member: b"x"})
    pin = PypiWheel("kern", "1.0", hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(InternalError, match="unsafe member"):
        add_wheel(str(tree), pin, fake_pip(wheel))
    assert not (tmp_path / "escape").exists()


def test_a_symlink_in_the_tree_is_not_followed_out(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    os.symlink(tmp_path / "outside", tree / "usr" / "local")
    (tmp_path / "outside").mkdir()
    spec = Kernelspec("k", "K", "k", ("k", "{connection_file}"))
    with pytest.raises(InternalError, match="outside the image tree|symlink"):
        add_kernelspec(str(tree), spec)
    assert list((tmp_path / "outside").iterdir()) == []


def test_kernelspecs_are_written_by_corral(tmp_path: Path) -> None:
    spec = Kernelspec("java", "Java", "java", ("java", "-jar", "/j.jar", "{connection_file}"),
                      interrupt_mode="message")
    add_kernelspec(str(tmp_path), spec)
    doc = json.loads((tmp_path / "usr/local/share/jupyter/kernels/java/kernel.json").read_text())
    assert doc == {"argv": ["java", "-jar", "/j.jar", "{connection_file}"],
                   "display_name": "Java", "language": "java", "interrupt_mode": "message",
                   "env": {}, "metadata": {}}


@pytest.mark.parametrize("bad", [
    lambda: PypiWheel("kern", "1.0", "abc"),
    lambda: PypiWheel("kern", "1.0; rm", "0" * 64),
    lambda: PypiWheel("--index-url=x", "1.0", "0" * 64),
    lambda: PypiWheel("kern", "1.0", "0" * 64, prefix="relative"),
    lambda: NpmTree("../x", "/opt/x"),
    lambda: NpmTree("tslab", "opt"),
    lambda: Kernelspec("k", "K", "k", ("k",)),
    lambda: Kernelspec("k", "K", "k", ("k", "{connection_file}"), interrupt_mode="never"),
])
def test_pins_are_validated(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError):
        bad()


def test_the_code_interpreter_recipe_pins_what_it_adds() -> None:
    python, full = BUILTIN_IMAGES["python"], BUILTIN_IMAGES["code-interpreter"]
    assert set(python.packages) < set(full.packages)
    assert {"r-cran-irkernel", "openjdk-17-jdk-headless", "nodejs"} <= set(full.packages)
    assert [spec.name for spec in full.kernelspecs] == ["ir", "jslab", "tslab", "java"]
    assert not (python.wheels or python.npm or python.kernelspecs)
    [tslab] = full.npm
    lock = json.loads(tslab.files()["package-lock.json"])
    assert lock["packages"]["node_modules/tslab"]["version"] == "1.0.22"
    assert all(entry.get("integrity", "").startswith("sha512-")
               for name, entry in lock["packages"].items() if name)
    # Each pin is in the cache key: a new version is a new image, not a changed one.
    [jjava] = full.wheels
    moved = dataclasses.replace(full, wheels=(dataclasses.replace(jjava, version="1.0a9"),))
    assert moved.cache_key() != full.cache_key()
    java = full.kernelspecs[-1]
    respec = dataclasses.replace(full, kernelspecs=(*full.kernelspecs[:-1], dataclasses.replace(
        java, interrupt_mode="signal")))
    assert respec.cache_key() != full.cache_key()
