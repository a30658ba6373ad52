"""Run an ASGI app under uvicorn in a thread, as ``corral serve`` would, for one test scope."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

START_TIMEOUT = 60.0


@contextmanager
def serving(app: Any, scheme: str = "http", **config: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 and a free port; yields its base URL.

    Leaving shuts it down as SIGTERM would (its node stops the sandboxes it holds, or
    leaves them to the next server with ``keep_sandboxes``), and fails the test if it does
    not stop. ``config`` goes to ``uvicorn.Config`` (TLS files).
    """
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                       lifespan="on", **config))
    thread = threading.Thread(target=uv.run, name="corral-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(60)
    assert not thread.is_alive(), "the server did not shut down"
