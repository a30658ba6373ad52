"""Shared fixtures: a node per test session, one parametrized over every working runtime.

Integration tests need root, cgroups, and the ``python`` image (built on first use, which
takes about a minute on a fresh machine and is cached under ``CORRAL_IMAGE_DIR``); the
tests of other languages' kernels the ``code-interpreter`` image, built the same way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral.node import NodeSettings, SyncNode, SyncNodeSandbox
from corral.node.images import ImageStore
from corral.runtime import RUNTIME_NAMES, available_runtimes
from corral.runtime.host import sweep, sweep_networks, unmount_volume

IMAGE_DIR = Path(os.environ.get("CORRAL_IMAGE_DIR", "/var/lib/corral/images"))
_PROBED = available_runtimes() if os.geteuid() == 0 else {}
WORKING = [name for name, (_, status) in _PROBED.items() if status.ok]


def runtime_params() -> list[object]:
    """One pytest param per runtime; those that cannot work here are skipped with why."""
    params: list[object] = []
    for name in RUNTIME_NAMES:
        status = _PROBED.get(name)
        reason = status[1].detail if status else "integration tests need root"
        marks = [] if name in WORKING else [pytest.mark.skip(reason=f"{name}: {reason}")]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(scope="session")
def python_image() -> str:
    if os.geteuid() != 0:  # building it, and every runtime that would run it, need root
        pytest.skip("needs root: the real python image and runtimes (the rootless tests "
                    "are in tests/unit)")
    ImageStore(IMAGE_DIR).ensure("python", progress=lambda line: None)
    return "python"


@pytest.fixture(scope="session")
def code_interpreter_image(python_image: str) -> str:
    """The image with R, JavaScript, TypeScript and Java kernels (built on first use: some
    minutes, then cached beside ``python``)."""
    ImageStore(IMAGE_DIR).ensure("code-interpreter", progress=lambda line: None)
    return "code-interpreter"


@contextmanager
def sandbox_data_dir(prefix: str) -> Iterator[Path]:
    """A temporary data dir sandboxes can use, swept of their leftovers before deletion.

    Mode 0711: namespaces sandboxes' own uids traverse it to their root (pytest's tmp_path
    sits in a 0700 folder). Should a test have crashed a node, what it left is swept first:
    never delete through a sandbox's mounts, nor through a volume a node left mounted.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chmod(tmp, 0o711)
        yield Path(tmp)
        settings = NodeSettings(data_dir=Path(tmp), image_dir=IMAGE_DIR)
        sweep(settings.data_dir / "sandboxes", settings.node_key, set())
        if os.geteuid() == 0:
            sweep_networks(settings.node_key, set())
            for folder in (settings.data_dir / "volumes").glob("vol-*"):
                if folder.is_dir() and not folder.is_symlink():
                    unmount_volume(folder)


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-test-") as path:
        yield path


@pytest.fixture(scope="session")
def node(data_dir: Path, python_image: str) -> Iterator[SyncNode]:
    with SyncNode(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR)) as n:
        yield n


@pytest.fixture(params=runtime_params())
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _fresh(node: SyncNode, runtime: str) -> Iterator[SyncNodeSandbox]:
    sb = node.create("python", runtime=runtime, timeout=600)
    try:
        yield sb
    finally:
        sb.kill()


@pytest.fixture
def sandbox(node: SyncNode, runtime: str) -> Iterator[SyncNodeSandbox]:
    """A fresh sandbox with default limits, killed after the test."""
    yield from _fresh(node, runtime)


@pytest.fixture
def neighbour(node: SyncNode, runtime: str) -> Iterator[SyncNodeSandbox]:
    """A second sandbox on the same runtime: the one that must stay unharmed."""
    yield from _fresh(node, runtime)
