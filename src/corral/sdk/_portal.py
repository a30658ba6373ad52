"""The event loop behind the blocking face: one daemon thread, shared by every sync object.

A daemon thread never holds the interpreter open at exit, so a script that forgets to
close a sandbox still ends (its sandbox then ends at its timeout).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

T = TypeVar("T")
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


def blocking(name: str, source: type) -> Callable[..., Any]:
    """A method that runs ``self._inner.<name>`` on the portal and waits for it."""

    def method(self: Proxy, *args: Any, **kwargs: Any) -> Any:
        return portal().call(functools.partial(getattr(self._inner, name), *args, **kwargs))

    method.__name__ = name
    method.__doc__ = getattr(source, name).__doc__
    return method


def iterate(iterator: AsyncIterator[T]) -> Iterator[T]:
    """A blocking iterator over an async one; leaving it early closes the async one."""
    done = False
    try:
        while True:
            try:
                yield portal().call(iterator.__anext__)
            except StopAsyncIteration:
                done = True
                return
    finally:
        aclose = getattr(iterator, "aclose", None)
        if not done and aclose is not None:
            portal().call(aclose)


class Proxy:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
