"""Rootless fixtures: a node on the fake runtime, each test on data dirs of its own.

Nothing here needs root, cgroups or a built image: the fake image
(:mod:`tests.fakes.image`) is written into a temporary image dir, and the fake runtime
(:mod:`tests.fakes.runtime`) runs the real agent as a plain subprocess over a copy of it.
The agent bundle a node builds at start (unused by the fake runtime) is built once per
session and shared. After each test, every sandbox the fake runtime made must be gone:
its directory removed and its agent ended.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.node import Node, NodeSettings
from corral.runtime.agent_bundle import ensure_bundle
from tests.fakes.image import make_image
from tests.fakes.runtime import FakeRuntime, descendants


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def agent_bundles() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="corral-bundle-") as tmp:
        ensure_bundle(Path(tmp))
        yield Path(tmp)


@pytest.fixture
def node_settings(agent_bundles: Path) -> Iterator[NodeSettings]:
    """A data dir and an image dir with the fake ``python`` image, removed afterwards.

    Short paths under /tmp: a sandbox's channel socket path must fit in 108 bytes.
    """
    with tempfile.TemporaryDirectory(prefix="corral-") as tmp:
        data, images = Path(tmp) / "data", Path(tmp) / "images"
        data.mkdir()
        (data / "agent").symlink_to(agent_bundles)
        make_image(images)
        yield NodeSettings(data_dir=data, image_dir=images, tune_cgroups=False)


@pytest.fixture
def fake_runtime() -> Iterator[FakeRuntime]:
    runtime = FakeRuntime()
    yield runtime
    me = os.getpid()
    agents = {pid for pid in descendants(me) if _serves(pid, runtime)}
    assert not agents, f"agents still running after the test: {agents}"
    left = [str(spec.directory) for spec in runtime.created if spec.directory.exists()]
    assert not left, f"sandbox directories left behind: {left}"


def _serves(pid: int, runtime: FakeRuntime) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(os.fsencode(spec.directory) in cmdline for spec in runtime.created)


@pytest.fixture
async def node(node_settings: NodeSettings, fake_runtime: FakeRuntime) -> AsyncIterator[Node]:
    async with Node(node_settings, runtimes={"fake": fake_runtime}) as started:
        yield started
