"""A 1 GiB file goes up and comes back through the SDK and the server without either
holding it: the test streams it from a generator and hashes as it goes, and the process
(server, SDK and test share it) grows by less than :data:`RSS_BOUND` meanwhile."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator

from corral import Sandbox

from .conftest import Server

GIB = 1024**3
CHUNK = 1024 * 1024
#: How much the process may grow while 1 GiB passes through it: a memory bound, not speed.
RSS_BOUND = 256 * 1024 * 1024


class PeakRss:
    """Samples this process's resident set every 50 ms in a thread; ``peak`` is the most."""

    def __init__(self) -> None:
        self.baseline = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _content(size: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """``size`` bytes in 1 MiB chunks, no two alike, hashed into ``digest`` as they go."""
    block = bytearray(os.urandom(CHUNK))
    for index in range(size // CHUNK):
        block[:8] = index.to_bytes(8, "little")
        chunk = bytes(block)
        digest.update(chunk)
        yield chunk


def test_one_gib_up_and_down_in_bounded_memory(server: Server) -> None:
    with Sandbox.create("python", timeout=600, resources={"disk": "1.5G", "memory": "2G"},
                        **server.sdk()) as sb, PeakRss() as rss:
        sent = hashlib.sha256()
        started = time.monotonic()
        assert sb.files.write("/work/big.bin", _content(GIB, sent)) == GIB
        upload_s = time.monotonic() - started

        inside = sb.commands.run(
            ["python3", "-c", "import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],'rb')"
             "\nfor b in iter(lambda: f.read(1<<20), b''): h.update(b)\nprint(h.hexdigest())",
             "/work/big.bin"], timeout=120)
        assert inside.exit_code == 0, inside.stderr
        assert inside.stdout.strip() == sent.hexdigest()

        received, size = hashlib.sha256(), 0
        started = time.monotonic()
        for chunk in sb.files.read_stream("/work/big.bin"):
            received.update(chunk)
            size += len(chunk)
        download_s = time.monotonic() - started

    print(f"\n1 GiB upload {upload_s:.1f}s, download {download_s:.1f}s, "
          f"peak RSS growth {rss.growth / 2**20:.1f} MiB")
    assert size == GIB
    assert received.hexdigest() == sent.hexdigest()
    assert rss.growth < RSS_BOUND, f"the process grew by {rss.growth / 2**20:.0f} MiB"
