"""Blocking faces derived from async cores: one mechanism for the node and the SDK.

A proxy wraps an async object and a running anyio blocking portal; each method made by
:func:`blocking` runs its async twin on that portal and waits. The logic exists once, in
the async core, so the two faces cannot drift.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal

T = TypeVar("T")


class Proxy:
    """Base of blocking wrappers: the async object and the portal its calls run on."""

    def __init__(self, inner: Any, portal: BlockingPortal) -> None:
        self._inner = inner
        self._portal = portal


class CommandIds:
    """Mixed into the blocking command handles of the node and the SDK: id and pid."""

    _inner: Any

    @property
    def id(self) -> int:
        return int(self._inner.id)

    @property
    def pid(self) -> int:
        return int(self._inner.pid)


def blocking(name: str, source: type) -> Callable[..., Any]:
    """A method that runs ``self._inner.<name>`` on the proxy's portal and waits for it."""

    def method(self: Proxy, *args: Any, **kwargs: Any) -> Any:
        return self._portal.call(functools.partial(getattr(self._inner, name), *args, **kwargs))

    method.__name__ = name
    method.__doc__ = getattr(source, name).__doc__
    return method


def iterate(portal: BlockingPortal, iterator: AsyncIterator[T]) -> Iterator[T]:
    """A blocking iterator over an async one; leaving it early closes the async one."""
    done = False
    try:
        while True:
            try:
                yield portal.call(iterator.__anext__)
            except StopAsyncIteration:
                done = True
                return
    finally:
        aclose = getattr(iterator, "aclose", None)
        if not done and aclose is not None:
            portal.call(aclose)
