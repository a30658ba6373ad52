"""Each async class's blocking face has every method, with the same parameters.

The async methods (and async generator methods) are found by introspection, so one added
to an async class without its blocking twin fails here. A twin made by ``blocking`` and
its relatives also has to wrap the async method of its own name, not a neighbour's.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from types import FunctionType

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from corral import node, sdk
from corral._blocking import Proxy, blocking, blocking_iter, blocking_wrapped, iterate
from corral.node import sync as node_sync
from corral.node.interpreter import NodeCodeInterpreter
from corral.node.network import SandboxNetwork
from corral.sdk.files import AsyncWatchHandle
from corral.sdk.network import AsyncNetwork
from corral.sdk import sync as sdk_sync

PAIRS = [
    (sdk.AsyncSandbox, sdk_sync.Sandbox),
    (sdk.AsyncCommands, sdk_sync.Commands),
    (sdk.AsyncCommandHandle, sdk_sync.CommandHandle),
    (sdk.AsyncFiles, sdk_sync.Files),
    (AsyncWatchHandle, sdk_sync.WatchHandle),
    (sdk.AsyncCodeInterpreter, sdk_sync.CodeInterpreter),
    (AsyncNetwork, sdk_sync.Network),
    (sdk.AsyncVolume, sdk_sync.Volume),
    (node.NodeSandbox, node_sync.SyncNodeSandbox),
    (node.NodeCommands, node_sync.SyncNodeCommands),
    (node.NodeCommandHandle, node_sync.SyncNodeCommandHandle),
    (node.NodeFiles, node_sync.SyncNodeFiles),
    (node.NodeWatch, node_sync.SyncNodeWatch),
    (NodeCodeInterpreter, node_sync.SyncNodeCodeInterpreter),
    (SandboxNetwork, node_sync.SyncNodeNetwork),
    (node.Node, node_sync.SyncNode),
]
#: Async methods whose blocking twin has another name.
RENAMED = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__",
           "__aiter__": "__iter__"}
#: Async methods with no blocking twin, and why.
NO_TWIN = {(node.Node, "start"): "SyncNode() starts its node",
           (node.Node, "start_for_build"): "the image builder's own, on the node's loop",
           (NodeCodeInterpreter, "reattach"): "the node's own, as a sandbox resumes",
           (NodeCodeInterpreter, "inherit"): "the node's own, as a sandbox is restored "
                                             "from a snapshot"}


def _is_public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def _parameters(cls: type, name: str) -> list[tuple[str, object, object, object]]:
    """The parameters a caller passes (``self`` left out), as comparable tuples."""
    params = list(inspect.signature(getattr(cls, name)).parameters.values())
    if isinstance(inspect.getattr_static(cls, name), FunctionType):
        params = params[1:]  # an instance method: its self
    return [(p.name, p.kind, p.default, p.annotation) for p in params]


def _function(fn: object) -> object:
    return getattr(fn, "__func__", fn)


def problems(async_cls: type, sync_cls: type) -> list[str]:
    """What the blocking face ``sync_cls`` lacks or gets wrong of ``async_cls``."""
    found = []
    for name in sorted(filter(_is_public, dir(async_cls))):
        fn = getattr(async_cls, name)
        if not callable(fn) or isinstance(inspect.getattr_static(async_cls, name), property):
            continue
        twin = RENAMED.get(name, name)
        if _is_async(fn) and (async_cls, name) in NO_TWIN:
            continue
        if not hasattr(sync_cls, twin):
            if _is_async(fn):
                found.append(f"{sync_cls.__name__} has no {twin} (for {name})")
            continue
        if name.startswith("__") and not _is_async(fn):
            continue  # __init__, __repr__ and the like need not match
        wrapped = getattr(getattr(sync_cls, twin), "__wrapped__", None)
        if wrapped is not None and _function(wrapped) is not _function(fn):
            found.append(f"{sync_cls.__name__}.{twin} wraps {wrapped.__qualname__}")
        if _parameters(sync_cls, twin) != _parameters(async_cls, name):
            found.append(f"{sync_cls.__name__}.{twin} takes other parameters than "
                         f"{async_cls.__name__}.{name}")
    return found


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS,
                         ids=[f"{a.__module__}.{a.__name__}" for a, _ in PAIRS])
def test_every_async_method_has_a_blocking_twin(async_cls: type, sync_cls: type) -> None:
    assert problems(async_cls, sync_cls) == []


def test_the_twins_are_found_by_introspection() -> None:
    names = {name for name in dir(sdk.AsyncCommandHandle)
             if _is_public(name) and _is_async(getattr(sdk.AsyncCommandHandle, name))}
    assert {"wait", "kill", "aclose", "__aiter__", "__aenter__", "__aexit__"} <= names
    for async_cls, _ in PAIRS:  # each pair is checked on something
        assert any(_is_async(getattr(async_cls, name)) for name in dir(async_cls))


# -- the check itself can fail ---------------------------------------------------------------


class Core:
    async def run(self, cmd: str, *, timeout: float = 1.0) -> str:
        """Run it."""
        return f"ran {cmd} within {timeout:g}"

    async def other(self, cmd: str, *, timeout: float = 1.0) -> str:
        return cmd

    async def events(self, count: int) -> AsyncIterator[int]:
        for n in range(count):
            yield n

    async def child(self) -> Core:
        return Core()


class Face(Proxy[Core]):
    run = blocking(Core.run)
    other = blocking(Core.other)
    events = blocking_iter(Core.events)
    child = blocking_wrapped(Core.child, lambda core, portal: Face(core, portal))


class Missing(Proxy[Core]):
    run = blocking(Core.run)
    events = blocking_iter(Core.events)
    child = blocking_wrapped(Core.child, Face)


class Crossed(Face):
    other = blocking(Core.run)


class Drifted(Face):
    def run(self, cmd: str, *, timeout: float = 2.0) -> str:
        return "drifted"


@pytest.mark.parametrize(("face", "expected"), [
    (Face, []),
    (Missing, ["Missing has no other (for other)"]),
    (Crossed, ["Crossed.other wraps Core.run"]),
    (Drifted, ["Drifted.run takes other parameters than Core.run"]),
])
def test_the_check_reports_a_missing_crossed_or_drifted_twin(face: type,
                                                             expected: list[str]) -> None:
    assert problems(Core, face) == expected


# -- the twins behave as their async methods -------------------------------------------------


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as started:
        yield started


def test_a_twin_returns_the_awaited_value_and_keeps_the_name(portal: BlockingPortal) -> None:
    face = Face(Core(), portal)
    assert face.run("ls", timeout=2) == "ran ls within 2"
    assert (Face.run.__name__, Face.run.__doc__) == ("run", "Run it.")
    assert isinstance(face.child(), Face)
    assert list(face.events(3)) == [0, 1, 2]


def test_a_twin_calls_the_wrapped_objects_own_method(portal: BlockingPortal) -> None:
    class Special(Core):
        async def run(self, cmd: str, *, timeout: float = 1.0) -> str:
            return "special"

    assert Face(Special(), portal).run("ls") == "special"


def test_leaving_a_blocking_iterator_early_closes_the_async_one(
        portal: BlockingPortal) -> None:
    closed: list[bool] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for n in range(10):
                yield n
        finally:
            closed.append(True)

    blocking_numbers = iterate(numbers(), portal)
    assert [next(blocking_numbers), next(blocking_numbers)] == [0, 1]
    assert closed == []
    blocking_numbers.close()
    assert closed == [True]


def test_the_twins_show_the_async_signature() -> None:
    shown: Callable[..., object] = sdk_sync.Sandbox.create
    assert "timeout" in inspect.signature(shown).parameters
    assert list(inspect.signature(sdk_sync.Commands.start).parameters)[:2] == ["self", "cmd"]
