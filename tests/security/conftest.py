"""Fixtures of the hostile-program suite: one attacker and one victim sandbox per runtime
and module, host canaries, and a report of how a neighbour's latency held up under abuse.

Every test runs a hostile program inside a real sandbox and asserts two things: the attack
failed, and nothing outside the attacker's sandbox changed (the host's canary files, the
victim sandbox's files and its answers, the host's mounts). The attacks themselves live in
:mod:`tests.security._checks` (shared with ``test_weakened.py``, which shows they fail
against deliberately weakened runtimes) and in ``programs/``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corral.node import SyncNode, SyncNodeSandbox
from tests.conftest import runtime_params

pytest.register_assert_rewrite("tests.security._checks")

from ._checks import Victim  # noqa: E402 - after the rewrite hook, for assert messages


@pytest.fixture(scope="module", params=runtime_params())
def runtime(request: pytest.FixtureRequest) -> str:
    """Module-scoped here, so that one attacker/victim pair serves a module's checks."""
    return str(request.param)


@pytest.fixture(scope="module")
def attacker(node: SyncNode, runtime: str) -> Iterator[SyncNodeSandbox]:
    """The sandbox that runs the hostile programs (shared by a module's checks)."""
    sb = node.create("python", runtime=runtime, timeout=900, metadata={"role": "attacker"})
    try:
        yield sb
    finally:
        sb.kill()


@pytest.fixture(scope="module")
def victim(node: SyncNode, runtime: str) -> Iterator[Victim]:
    """A neighbour on the same runtime holding a secret; it must stay intact and answer."""
    sb = node.create("python", runtime=runtime, timeout=900, metadata={"role": "victim"})
    try:
        secret = f"victim-secret-{uuid.uuid4().hex}"
        sb.files.write(Victim.PATH, secret)
        yield Victim(sb, secret, node.node.sandboxes_dir / sb.id)
    finally:
        sb.kill()


@dataclass(frozen=True)
class Canary:
    """Host files with a random secret that no sandbox may read or change."""

    secret: str
    paths: tuple[Path, ...]
    digests: dict[Path, str] = field(default_factory=dict)

    def assert_intact(self) -> None:
        for path in self.paths:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == self.digests[path], path
        leftovers = [p for p in Path("/tmp").glob("corral-slip-*")]
        assert not leftovers, f"a sandbox wrote to the host's /tmp: {leftovers}"


@pytest.fixture(scope="session")
def canary() -> Iterator[Canary]:
    secret = f"host-canary-{uuid.uuid4().hex}"
    paths = (Path(f"/root/corral-canary-{uuid.uuid4().hex}"),
             Path(f"/tmp/corral-canary-{uuid.uuid4().hex}"))
    digests = {}
    for path in paths:
        path.write_text(secret + "\n")
        os.chmod(path, 0o644)
        digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        yield Canary(secret, paths, digests)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


# -- the latency report ----------------------------------------------------------------------

_LATENCIES: list[tuple[str, str, int, float, float]] = []


def record_latency(runtime: str, attack: str, samples: list[float]) -> None:
    """Keep a neighbour's exec round trips (seconds) measured during one attack."""
    if samples:
        ordered = sorted(samples)
        _LATENCIES.append((runtime, attack, len(ordered), ordered[len(ordered) // 2],
                           ordered[-1]))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _LATENCIES:
        return
    terminalreporter.section("neighbour exec latency during resource abuse (reported only)")
    terminalreporter.write_line(f"{'runtime':<11} {'attack':<16} {'n':>4} {'p50 ms':>9} "
                                f"{'max ms':>9}")
    for runtime, attack, n, p50, worst in _LATENCIES:
        terminalreporter.write_line(f"{runtime:<11} {attack:<16} {n:>4} {p50 * 1000:>9.1f} "
                                    f"{worst * 1000:>9.1f}")
