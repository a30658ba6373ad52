"""The command history's bounds: the newest 100 commands, 16 KiB of each stream and of
the command line, every history within MAX_BYTES, stopped sandboxes' kept for the
retention; a tenant sees its own only."""

from __future__ import annotations

import time

import pytest

from corral.api.limits import HISTORY_COMMANDS, HISTORY_OUTPUT
from corral.server.services import history as history_module
from corral.server.services.history import CommandHistory


def test_the_newest_commands_are_kept_newest_first() -> None:
    book = CommandHistory(retention=60)
    for i in range(HISTORY_COMMANDS + 5):
        book.started("t", "sbx-a", i, f"echo {i}").end(0, None, None)
    shown = book.of("t", "sbx-a")
    assert shown is not None and len(shown) == HISTORY_COMMANDS
    assert [c.id for c in shown] == list(range(HISTORY_COMMANDS + 4, 4, -1))
    assert shown[0].cmd == f"echo {HISTORY_COMMANDS + 4}" and shown[0].exit_code == 0


def test_output_and_command_lines_are_cut() -> None:
    book = CommandHistory(retention=60)
    entry = book.started("t", "sbx-a", 1, ["sh", "-c", "x" * (HISTORY_OUTPUT * 2)])
    assert entry.truncated
    assert sum(len(a) for a in entry.cmd) == HISTORY_OUTPUT and entry.cmd[:2] == ["sh", "-c"]
    entry.feed("stdout", b"a" * (HISTORY_OUTPUT - 1))
    entry.feed("stdout", b"bc")
    entry.feed("stderr", b"err")
    (record,) = book.of("t", "sbx-a") or []
    assert record.stdout == "a" * (HISTORY_OUTPUT - 1) + "b" and record.stderr == "err"
    assert record.ended_at is None and record.exit_code is None
    assert book.entry("sbx-a", 1) is entry
    entry.end(3, None, None)
    assert book.entry("sbx-a", 1) is None  # ended: nothing more goes in
    short = book.started("t", "sbx-a", 2, "echo hi")
    assert short.cmd == "echo hi" and not short.truncated
    long = book.started("t", "sbx-a", 3, "y" * (HISTORY_OUTPUT + 1))
    assert long.cmd == "y" * HISTORY_OUTPUT and long.truncated


def test_tenants_see_their_own_only() -> None:
    book = CommandHistory(retention=60)
    book.started("alpha", "sbx-a", 1, "true")
    assert book.of("beta", "sbx-a") is None
    assert book.of("alpha", "sbx-b") is None
    assert book.of("alpha", "sbx-a")


def test_a_stopped_sandbox_is_kept_for_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    book = CommandHistory(retention=30)
    book.started("t", "sbx-a", 1, "true")
    book.started("t", "sbx-b", 1, "true")
    book.stopped("sbx-a")
    assert book.of("t", "sbx-a")
    later = time.time() + 31
    monkeypatch.setattr(history_module.time, "time", lambda: later)
    assert book.of("t", "sbx-a") is None
    assert book.of("t", "sbx-b")  # still live


def test_every_history_together_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "MAX_BYTES", 10 * HISTORY_OUTPUT)
    book = CommandHistory(retention=3600)
    stopped = book.started("t", "sbx-old", 1, "x")
    stopped.feed("stdout", b"o" * HISTORY_OUTPUT)
    book.stopped("sbx-old")
    for i in range(20):  # a live sandbox's 20 commands of 16 KiB each: twice the budget
        book.started("t", "sbx-live", i, "y").feed("stdout", b"l" * HISTORY_OUTPUT)
    assert book.of("t", "sbx-old") is None  # the stopped one went first
    live = book.of("t", "sbx-live") or []
    assert 1 <= len(live) < 20 and live[0].id == 19  # then its oldest commands
    assert sum(len(c.stdout) + len(c.cmd) for c in live) <= 10 * HISTORY_OUTPUT
