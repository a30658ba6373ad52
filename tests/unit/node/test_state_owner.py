"""The lifecycle owns sandbox states: the table, the listeners, persistence, and that
nothing else in the code assigns a state or a stop reason."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import pytest

import corral
from corral.node import Node, SandboxState
from corral.node import records
from corral.node.lifecycle import TRANSITIONS, IllegalTransition

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]
S = SandboxState
SOURCE = Path(corral.__file__).parent


def test_the_table_covers_every_state_and_ends_in_stopped() -> None:
    assert set(TRANSITIONS) == set(SandboxState)
    assert TRANSITIONS[S.STOPPED] == frozenset()
    # Every state can reach STOPPED: no sandbox can be stuck where it cannot be stopped.
    for state in SandboxState:
        seen, frontier = {state}, [state]
        while frontier:
            for after in TRANSITIONS[frontier.pop()]:
                if after not in seen:
                    seen.add(after)
                    frontier.append(after)
        assert S.STOPPED in seen, state


async def test_listeners_see_each_transition_in_order(node: Node) -> None:
    seen: list[tuple[str, SandboxState, str | None]] = []
    unsubscribe = node.on_state(lambda sb, state: seen.append((sb.id, state, sb.stop_reason)))
    sandbox = await node.create("python", runtime="fake")
    await sandbox.stop("because a test said so")
    unsubscribe()
    other = await node.create("python", runtime="fake")
    await other.kill()
    assert seen == [(sandbox.id, S.RUNNING, None),
                    (sandbox.id, S.STOPPING, "because a test said so"),
                    (sandbox.id, S.STOPPED, "because a test said so")]


async def test_an_illegal_move_is_refused_and_changes_nothing(node: Node) -> None:
    sandbox = await node.create("python", runtime="fake")
    with pytest.raises(IllegalTransition, match="running -> starting"):
        node.lifecycle.move(sandbox, S.STARTING)
    with pytest.raises(IllegalTransition, match="running -> stopped"):
        node.lifecycle.move(sandbox, S.STOPPED)
    assert sandbox.state is S.RUNNING
    await sandbox.kill()
    with pytest.raises(IllegalTransition, match="stopped -> running"):
        node.lifecycle.move(sandbox, S.RUNNING)


async def test_the_first_reason_is_kept_and_a_second_stop_waits_for_the_same_end(
        node: Node) -> None:
    sandbox = await node.create("python", runtime="fake")
    await asyncio.gather(sandbox.stop("first"), sandbox.stop("second"), sandbox.kill())
    assert (sandbox.state, sandbox.stop_reason) == (S.STOPPED, "first")
    await sandbox.stop("after the end")  # a stopped sandbox returns at once
    assert sandbox.stop_reason == "first"


async def test_each_transition_is_persisted_with_its_state(node: Node) -> None:
    written: list[str] = []
    sandbox = await node.create("python", runtime="fake")
    directory = sandbox.handle.spec.directory
    assert records.read(directory).state == "running"
    node.on_state(lambda sb, state: written.append(
        json.loads((directory / records.RECORD_NAME).read_text())["state"])
        if state is not S.STOPPED else None)
    await node.lifecycle.stop(sandbox, "test")
    assert written == ["stopping"]  # written before the listeners ran; the dir then goes
    assert not directory.exists()


async def test_set_timeout_rewrites_the_record(node: Node) -> None:
    sandbox = await node.create("python", runtime="fake", timeout=100)
    await sandbox.set_timeout(5000)
    record = records.read(sandbox.handle.spec.directory)
    assert record.expires_at == sandbox.expires_at and record.expires_at - record.created_at > 4000
    await sandbox.kill()


# -- nothing else assigns a state --------------------------------------------------------

OWNED = ("state", "stop_reason")


def _state_assignments(tree: ast.AST) -> list[tuple[int, str, str, str]]:
    """(line, enclosing function, attribute, value) of every assignment to an attribute
    the lifecycle owns (:data:`OWNED`)."""
    found: list[tuple[int, str, str, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef,
                                                    ast.AsyncFunctionDef)) else function
            if isinstance(child, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                while targets:
                    target = targets.pop()
                    if isinstance(target, (ast.Tuple, ast.List)):
                        targets += target.elts  # a, b.state = ...
                    elif isinstance(target, ast.Attribute) and target.attr in OWNED:
                        value = ast.unparse(child.value) if child.value else ""
                        found.append((child.lineno, name, target.attr, value))
            visit(child, name)

    visit(tree, "")
    return found


def _offenders(relative: str, source: str) -> list[str]:
    bad = []
    for line, function, attribute, value in _state_assignments(ast.parse(source)):
        if relative == "node/lifecycle.py":
            continue  # the owner
        if (relative, function) == ("node/sandbox.py", "__init__") and (attribute, value) in (
                ("state", "SandboxState.STARTING"), ("stop_reason", "None")):
            continue  # a new sandbox's first state, and no reason yet
        if (attribute == "state" and relative.startswith("runtime/")
                and value.startswith("RuntimeState.")):
            continue  # a runtime handle's own state, not the sandbox's
        bad.append(f"{relative}:{line}: .{attribute} = {value}")
    return bad


def test_only_the_lifecycle_assigns_a_sandbox_state_or_stop_reason() -> None:
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        offenders += _offenders(relative, path.read_text())
    assert offenders == []


@pytest.mark.parametrize("relative, source", [
    ("node/node.py", "def f(sb):\n    sb.state = SandboxState.STOPPED\n"),
    ("server/services/sandboxes.py", "async def g(x):\n    x.sandbox.state = 'stopped'\n"),
    ("node/sandbox.py",
     "class S:\n    def stop(self):\n        self.state = SandboxState.STOPPED\n"),
    ("node/pools.py", "def h(sb):\n    sb.state: SandboxState = SandboxState.RUNNING\n"),
    ("node/node.py", "def k(sb):\n    sb.env, sb.state = {}, SandboxState.RUNNING\n"),
    ("server/services/sandboxes.py", "async def r(sb):\n    sb.stop_reason = 'idle'\n"),
])
def test_the_rule_catches_a_stray_assignment(relative: str, source: str) -> None:
    assert _offenders(relative, source)
