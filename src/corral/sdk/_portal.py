"""The event loop behind the blocking face: one daemon thread, shared by every sync object.

A daemon thread never holds the interpreter open at exit, so a script that forgets to
close a sandbox still ends (its sandbox then ends at its timeout).

Calls made on a class rather than an object (``Sandbox.create``, ``connect``, ``list``)
have no proxy to find a portal through; :class:`blocking_constructor` and
:func:`blocking_static` give them theirs, typed like :func:`corral._blocking.blocking`.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, ParamSpec, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from corral._blocking import twin

__all__ = ["blocking_constructor", "blocking_static", "portal"]

P = ParamSpec("P")
T = TypeVar("T")
W = TypeVar("W")
_lock = threading.Lock()
_portal: BlockingPortal | None = None


def portal() -> BlockingPortal:
    """The shared portal, started on first use."""
    global _portal
    with _lock:
        if _portal is None:
            ready: queue.Queue[BlockingPortal] = queue.Queue()

            async def serve() -> None:
                async with BlockingPortal() as started:
                    ready.put(started)
                    await started.sleep_until_stopped()

            threading.Thread(target=anyio.run, args=(serve,), name="corral-sdk",
                             daemon=True).start()
            _portal = ready.get()
        return _portal


class blocking_constructor(Generic[P, T]):  # lower case: it is used like classmethod
    """The blocking twin of an async classmethod that makes an object: on a proxy class
    ``cls``, ``cls(await fn(...))`` (a subclass gets instances of itself)."""

    def __init__(self, fn: Callable[P, Awaitable[T]]) -> None:
        self._fn = fn

    def __get__(self, obj: object, owner: Callable[[T], W]) -> Callable[P, W]:
        fn = self._fn

        def construct(*args: P.args, **kwargs: P.kwargs) -> W:
            return owner(portal().call(functools.partial(fn, *args, **kwargs)))

        return twin(construct, fn, same_return=False)


def blocking_static(fn: Callable[P, Awaitable[T]]) -> staticmethod[P, T]:
    """The blocking twin of an async staticmethod (or classmethod) whose value is
    returned as is."""

    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return portal().call(functools.partial(fn, *args, **kwargs))

    return staticmethod(twin(call, fn))
