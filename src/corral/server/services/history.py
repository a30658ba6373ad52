"""Each sandbox's command history: the last :data:`~corral.api.limits.HISTORY_COMMANDS`
commands started through the API (run, streamed, in the background, on a terminal, through
E2B's envd), each with the first :data:`~corral.api.limits.HISTORY_OUTPUT` bytes of its
stdout and stderr, its command line (as given, cut to as many bytes) and how it ended.

In memory, like the metrics samples (a restart loses it), and bounded three ways: per
command (the cuts above, ``truncated`` says so), per sandbox (the newest commands), and in
all (:data:`MAX_BYTES`: past it the histories of stopped sandboxes go first, the longest
stopped first, then the oldest commands of the largest history). A stopped sandbox's
history is kept for the server's metrics retention (``CORRAL_METRICS_RETENTION``), for at
most :data:`MAX_STOPPED` stopped sandboxes.

The command line and output are the tenant's own data, shown only to that tenant; they
are never logged.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from corral.api import models
from corral.api.limits import HISTORY_COMMANDS, HISTORY_OUTPUT

from ._series import past_retention

#: Bytes every history together may hold (command lines and output).
MAX_BYTES = 256 * 1024 * 1024
#: Stopped sandboxes whose history is kept at most.
MAX_STOPPED = 1024
#: Seconds between two sweeps of histories past their retention.
SWEEP_INTERVAL = 1.0


class Entry:
    """One command's record, filled in as it runs."""

    __slots__ = ("id", "cmd", "started_at", "ended_at", "exit_code", "signal", "reason",
                 "stdout", "stderr", "truncated", "_book")

    def __init__(self, book: _Book, command_id: int, cmd: str | Sequence[str]) -> None:
        self._book = book
        self.id = command_id
        self.cmd, self.truncated = _cut_cmd(cmd)
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.reason: str | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        book.grow(self.size)

    @property
    def size(self) -> int:
        cmd = self.cmd if isinstance(self.cmd, str) else "".join(self.cmd)
        return len(cmd) + len(self.stdout) + len(self.stderr)

    def feed(self, stream: str, data: bytes) -> None:
        """Keep what fits of a piece of ``stream``'s output."""
        kept = self.stdout if stream == "stdout" else self.stderr
        room = HISTORY_OUTPUT - len(kept)
        if len(data) > room:
            self.truncated = True
        if room > 0 and data:
            piece = data[:room]
            kept += piece
            self._book.grow(len(piece))

    def end(self, exit_code: int | None, signal: int | None, reason: str | None,
            truncated: bool = False) -> None:
        if self.ended_at is not None:
            return
        self.ended_at = time.time()
        self.exit_code, self.signal, self.reason = exit_code, signal, reason
        self.truncated = self.truncated or truncated

    def wire(self) -> models.CommandRecord:
        return models.CommandRecord(
            id=self.id, cmd=self.cmd, started_at=datetime.fromtimestamp(self.started_at, UTC),
            ended_at=(None if self.ended_at is None
                      else datetime.fromtimestamp(self.ended_at, UTC)),
            exit_code=self.exit_code, signal=self.signal, reason=self.reason,
            stdout=self.stdout.decode("utf-8", "replace"),
            stderr=self.stderr.decode("utf-8", "replace"), truncated=self.truncated)


class _Book:
    """One sandbox's history."""

    __slots__ = ("tenant", "stopped_at", "entries", "bytes", "_all")

    def __init__(self, tenant: str, all_: CommandHistory) -> None:
        self.tenant = tenant
        self.stopped_at: float | None = None
        self.entries: collections.deque[Entry] = collections.deque()
        self.bytes = 0
        self._all = all_

    def grow(self, n: int) -> None:
        self.bytes += n
        self._all.grow(n)

    def drop_oldest(self) -> None:
        old = self.entries.popleft()
        self.bytes -= old.size
        self._all.grow(-old.size)


class CommandHistory:
    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._books: dict[str, _Book] = {}
        self._bytes = 0
        self._swept = 0.0

    def grow(self, n: int) -> None:
        self._bytes += n
        if n > 0 and self._bytes > MAX_BYTES:
            self._shrink()

    def started(self, tenant: str, sandbox_id: str, command_id: int,
                cmd: str | Sequence[str]) -> Entry:
        """Record a command the tenant just started in its sandbox."""
        self._sweep()
        book = self._books.get(sandbox_id)
        if book is None or book.tenant != tenant:
            self.forget(sandbox_id)  # (another tenant's: never, ids are not reused)
            book = self._books[sandbox_id] = _Book(tenant, self)
        book.entries.append(Entry(book, command_id, cmd))
        while len(book.entries) > HISTORY_COMMANDS:
            book.drop_oldest()
        return book.entries[-1]

    def entry(self, sandbox_id: str, command_id: int) -> Entry | None:
        """The running command's record (the newest of that id), if it has one."""
        book = self._books.get(sandbox_id)
        if book is None:
            return None
        for entry in reversed(book.entries):
            if entry.id == command_id:
                return entry if entry.ended_at is None else None
        return None

    def of(self, tenant: str, sandbox_id: str) -> list[models.CommandRecord] | None:
        """The tenant's sandbox's history, newest first; None when none is kept (or the
        sandbox is not the tenant's)."""
        self._sweep()
        book = self._books.get(sandbox_id)
        if book is None or book.tenant != tenant:
            return None
        return [entry.wire() for entry in reversed(book.entries)]

    def stopped(self, sandbox_id: str) -> None:
        """The sandbox stopped: its history's retention starts now."""
        book = self._books.get(sandbox_id)
        if book is not None and book.stopped_at is None:
            book.stopped_at = time.time()
        self._sweep(force=True)

    def forget(self, sandbox_id: str) -> None:
        book = self._books.pop(sandbox_id, None)
        if book is not None:
            self._bytes -= book.bytes

    def _sweep(self, force: bool = False) -> None:
        """Drop histories past their retention, and the longest stopped past
        :data:`MAX_STOPPED`; at most once a :data:`SWEEP_INTERVAL` unless ``force``."""
        now = time.time()
        if not force and now - self._swept < SWEEP_INTERVAL:
            return
        self._swept = now
        stopped = [(book.stopped_at, sandbox_id) for sandbox_id, book in self._books.items()
                   if book.stopped_at is not None]
        for sandbox_id in past_retention(stopped, now, self.retention, MAX_STOPPED):
            self.forget(sandbox_id)

    def _shrink(self) -> None:
        """Back under :data:`MAX_BYTES`: stopped sandboxes' histories first (the longest
        stopped first), then the oldest commands of the largest history."""
        stopped = sorted((book.stopped_at, sandbox_id) for sandbox_id, book in self._books.items()
                         if book.stopped_at is not None)
        for _, sandbox_id in stopped:
            if self._bytes <= MAX_BYTES:
                return
            self.forget(sandbox_id)
        while self._bytes > MAX_BYTES:
            largest = max(self._books.values(), key=lambda book: book.bytes, default=None)
            if largest is None or len(largest.entries) <= 1:
                return  # one command's record is bounded on its own
            largest.drop_oldest()


def _cut_cmd(cmd: str | Sequence[str]) -> tuple[str | list[str], bool]:
    """The command line as given, cut to :data:`HISTORY_OUTPUT` characters in all."""
    if isinstance(cmd, str):
        return cmd[:HISTORY_OUTPUT], len(cmd) > HISTORY_OUTPUT
    kept: list[str] = []
    room = HISTORY_OUTPUT
    for arg in cmd:
        if room <= 0:
            return kept, True
        kept.append(arg[:room])
        room -= len(arg)
    return kept, room < 0
