"""Blocking faces derived from async cores: one mechanism for the node and the SDK.

A proxy wraps an async object and a running anyio blocking portal; each method made here
runs its async twin on that portal and waits. The logic exists once, in the async core,
so the two faces cannot drift, and neither can their types: a blocking method takes
exactly its twin's parameters (``ParamSpec``) and returns what awaiting the twin gives.

Adding a method to an async class is one line in its blocking face, by what it returns::

    class Files(Proxy[AsyncFiles]):
        read = blocking(AsyncFiles.read)                     # awaited value, as is
        read_stream = blocking_iter(AsyncFiles.read_stream)  # async iterator -> iterator

    class Commands(Proxy[AsyncCommands]):
        start = blocking_wrapped(AsyncCommands.start, CommandHandle)  # a blocking face of it

A method is looked up on the wrapped object by name at each call, as ``self._inner.run``
would be, so an override in a subclass of the async class is the one that runs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Concatenate, Generic, ParamSpec, Protocol, TypeVar

from anyio.from_thread import BlockingPortal

P = ParamSpec("P")
T = TypeVar("T")
W = TypeVar("W")
Inner = TypeVar("Inner")
F = TypeVar("F", bound=Callable[..., object])


class Proxy(Generic[Inner]):
    """Base of blocking wrappers: the async object and the portal its calls run on."""

    def __init__(self, inner: Inner, portal: BlockingPortal) -> None:
        self._inner = inner
        self._portal = portal


class _HasIds(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def pid(self) -> int: ...


Handle = TypeVar("Handle", bound=_HasIds)


class CommandIds(Proxy[Handle]):
    """Base of the blocking command handles of the node and the SDK: id and pid."""

    @property
    def id(self) -> int:
        return self._inner.id

    @property
    def pid(self) -> int:
        return self._inner.pid


def blocking(fn: Callable[Concatenate[Inner, P], Awaitable[T]]
             ) -> Callable[Concatenate[Proxy[Inner], P], T]:
    """The blocking twin of the async method ``fn``: runs it on the proxy's portal and
    waits for its value."""
    name = fn.__name__

    def method(self: Proxy[Inner], /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound: Callable[P, Awaitable[T]] = getattr(self._inner, name)
        return self._portal.call(functools.partial(bound, *args, **kwargs))

    return twin(method, fn)


def blocking_wrapped(fn: Callable[Concatenate[Inner, P], Awaitable[T]],
                     wrap: Callable[[T, BlockingPortal], W]
                     ) -> Callable[Concatenate[Proxy[Inner], P], W]:
    """Like :func:`blocking`, for a method whose value needs a blocking face of its own:
    returns ``wrap(value, portal)`` (a proxy class, or :func:`iterate`)."""
    name = fn.__name__

    def method(self: Proxy[Inner], /, *args: P.args, **kwargs: P.kwargs) -> W:
        bound: Callable[P, Awaitable[T]] = getattr(self._inner, name)
        return wrap(self._portal.call(functools.partial(bound, *args, **kwargs)),
                    self._portal)

    return twin(method, fn, same_return=False)


def blocking_iter(fn: Callable[Concatenate[Inner, P], AsyncIterator[T]]
                  ) -> Callable[Concatenate[Proxy[Inner], P], Iterator[T]]:
    """The blocking twin of an async generator method: an iterator over its items."""
    name = fn.__name__

    def method(self: Proxy[Inner], /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        bound: Callable[P, AsyncIterator[T]] = getattr(self._inner, name)
        return iterate(bound(*args, **kwargs), self._portal)

    return twin(method, fn, same_return=False)


def twin(method: F, fn: Callable[..., object], same_return: bool = True) -> F:
    """``method``, named and documented as its async twin ``fn``, with its signature
    (less the return annotation, where ``method`` returns something else)."""
    method.__name__ = fn.__name__
    method.__doc__ = fn.__doc__
    method.__wrapped__ = fn  # type: ignore[attr-defined]
    if not same_return:
        signature = inspect.signature(fn).replace(return_annotation=inspect.Signature.empty)
        method.__signature__ = signature  # type: ignore[attr-defined]
    return method


def iterate(iterator: AsyncIterator[T], portal: BlockingPortal) -> Iterator[T]:
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
