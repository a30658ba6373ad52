"""The suite can fail: the same checks against runtimes started without one of their walls.

Each runtime is built here with a :class:`corral.runtime.base.Weakening` (a constructor
argument that only tests pass; no setting, flag or API field reaches it) and put into a
node of its own. Every check below then must raise ``AssertionError``: the attack it tries
succeeds. Were a check unable to fail, this test would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from corral.node import NodeSettings, SyncNode, SyncNodeSandbox
from corral.runtime import Runtime
from corral.runtime.base import Weakening
from corral.runtime.gvisor.runtime import GvisorRuntime
from corral.runtime.namespaces.runtime import NamespacesRuntime
from tests.conftest import IMAGE_DIR, WORKING, sandbox_data_dir

from ._checks import (
    check_32bit_syscalls_are_killed,
    check_host_describing_files_masked,
    check_privileged_syscalls,
    check_read_only_mounts_hold,
)


@contextmanager
def weakened_node(runtime: Runtime) -> Iterator[tuple[SyncNode, SyncNodeSandbox]]:
    """A sandbox of ``runtime`` in a node of its own (own data dir, so its own agent bundle),
    which has no other runtime."""
    with sandbox_data_dir("corral-weak-") as data_dir:
        with SyncNode(NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR),
                      runtimes={runtime.name: runtime}) as node:
            sb = node.create("python", runtime=runtime.name, timeout=300)
            try:
                yield node, sb
            finally:
                sb.kill()


@contextmanager
def weakened_sandbox(runtime: Runtime) -> Iterator[SyncNodeSandbox]:
    with weakened_node(runtime) as (_, sb):
        yield sb


def _must_fail(check: Callable[[], object], what: str) -> str:
    with pytest.raises(AssertionError) as caught:
        check()
    message = str(caught.value)
    assert "the hostile program itself broke" not in message, message
    return f"{what}: {message[:3000]}"


@pytest.mark.skipif("namespaces" not in WORKING, reason="namespaces does not work here")
def test_namespaces_without_seccomp_fails_the_privilege_checks(
        python_image: str) -> None:
    weak = NamespacesRuntime(Weakening(no_seccomp=True))
    with weakened_sandbox(weak) as sb:
        failure = _must_fail(lambda: check_privileged_syscalls(sb, "namespaces"), "seccomp")
        # Without the filter a nested user namespace, the keyring, io_uring... all open up.
        assert "unshare_user" in failure and "keyctl" in failure, failure
        assert "io_uring_setup" in failure and "clone_newuser" in failure, failure
        failure = _must_fail(lambda: check_32bit_syscalls_are_killed(sb), "seccomp")
        assert "not killed: ok" in failure, failure


@pytest.mark.skipif("namespaces" not in WORKING, reason="namespaces does not work here")
def test_namespaces_with_every_capability_fails_the_privilege_checks(
        python_image: str) -> None:
    weak = NamespacesRuntime(Weakening(all_capabilities=True))
    with weakened_sandbox(weak) as sb:
        failure = _must_fail(lambda: check_privileged_syscalls(sb, "namespaces"), "caps")
        assert "CapEff" in failure or "ffff" in failure, failure


@pytest.mark.skipif("namespaces" not in WORKING, reason="namespaces does not work here")
def test_namespaces_with_an_unmasked_proc_fails_the_leak_checks(
        python_image: str) -> None:
    weak = NamespacesRuntime(Weakening(unmasked_proc=True))
    with weakened_sandbox(weak) as sb:
        failure = _must_fail(lambda: check_host_describing_files_masked(sb), "proc")
        assert "/proc/cmdline" in failure and "/proc/kallsyms" in failure, failure


@pytest.mark.skipif("gvisor" not in WORKING, reason="gvisor does not work here")
def test_gvisor_with_more_capabilities_fails_the_privilege_checks(
        python_image: str) -> None:
    weak = GvisorRuntime(weakening=Weakening(all_capabilities=True))
    with weakened_sandbox(weak) as sb:
        failure = _must_fail(lambda: check_privileged_syscalls(sb, "gvisor"), "caps")
        assert "CapEff" in failure, failure
        # With CAP_SYS_ADMIN and CAP_SYS_PTRACE the Sentry lets the attacks through.
        assert "'mount': 'ok'" in failure and "'ptrace_agent': 'ok'" in failure, failure


@pytest.mark.skipif("gvisor" not in WORKING, reason="gvisor does not work here")
def test_gvisor_with_directfs_fails_the_read_only_mount_check(python_image: str) -> None:
    weak = GvisorRuntime(weakening=Weakening(gvisor_directfs=True))
    runsc, _ = weak.chosen()
    if not runsc.knows("directfs"):
        pytest.skip(f"runsc {runsc.version} has no directfs")
    with weakened_node(weak) as (node, sb):
        failure = _must_fail(lambda: check_read_only_mounts_hold(sb, node.node.agent_bundle),
                             "directfs")
        assert "wrote through the read-only bundle mount" in failure, failure


def test_full_strength_runtimes_take_no_weakening_from_outside() -> None:
    """What the server and the CLI build (get_runtime) is always full strength."""
    from corral.runtime import _make

    for name in ("gvisor", "namespaces"):
        runtime = _make(name, None)
        assert runtime._weakening == Weakening()  # type: ignore[attr-defined]
