"""The event loop behind the blocking face: one daemon thread, shared by every sync object.

A daemon thread never holds the interpreter open at exit, so a script that forgets to
close a sandbox still ends (its sandbox then ends at its timeout).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from corral import _blocking
from corral._blocking import blocking

__all__ = ["Proxy", "blocking", "iterate", "portal"]

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


def iterate(iterator: AsyncIterator[T]) -> Iterator[T]:
    """A blocking iterator over an async one, on the shared portal."""
    return _blocking.iterate(portal(), iterator)


class Proxy(_blocking.Proxy):
    """A blocking wrapper whose calls run on the shared portal."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner, portal())
