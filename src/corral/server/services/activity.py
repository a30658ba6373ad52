"""What the server does to a sandbox on its own, what it sees of its use, and the reasons it
gives when it acts.

A sandbox is in use while anything of these is under way: an API call on it, a command or
code cell running in it, a command's or cell's output stream, a file transfer, or a
connection to one of its ports through the server. Calls and each piece of a transfer or
of port traffic *touch* it (its last use is now); streams, transfers and port connections
are also *open* for as long as they last (:meth:`Upkeep.opened`), and a sandbox with one
open is never idle, however quiet it is. Running commands are the agent's to tell (the
service asks it before acting).

:class:`Upkeep` is one live sandbox's: its last use (``time.monotonic()``, in memory: a
server restart counts as use), what is open, and what the server does to it on its own
(its ``idle_timeout`` and ``on_idle``, its ``paused_ttl``). When it was paused is the
node's (``NodeSandbox.paused_at``, kept in its record), so a paused TTL survives restarts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from corral.api.errors import InvalidArgumentError, RuntimeUnavailableError
from corral.node import NodeSandbox


def idle_reason(idle_timeout: float) -> str:
    """The stop reason of a sandbox its idle timeout stopped (``on_idle="kill"``)."""
    return f"idle timeout: no activity for {idle_timeout:g} s"


def idle_pause_reason(idle_timeout: float) -> str:
    """The state reason of a sandbox its idle timeout paused (``on_idle="pause"``)."""
    return f"paused: idle for {idle_timeout:g} s"


def idle_pause_failed_reason(idle_timeout: float, why: str) -> str:
    """The stop reason of a sandbox its idle timeout should have paused but could not."""
    return (f"{idle_reason(idle_timeout)}; pausing it instead (on_idle=pause) failed, so it "
            f"was stopped: {why}")


def paused_ttl_reason(paused_ttl: float) -> str:
    """The stop reason of a sandbox killed for staying paused past its ``paused_ttl``."""
    return f"paused for more than {paused_ttl:.15g} s (paused_ttl)"


@dataclass
class Upkeep:
    """One live sandbox's use so far, and what the server does to it on its own."""

    #: Seconds of no use after which it is stopped or paused; None: never.
    idle_timeout: float | None
    #: What its idle timeout does: "kill" or "pause".
    on_idle: str
    #: Seconds it may stay paused before it is killed.
    paused_ttl: float
    #: When it was last used (``time.monotonic()``).
    last: float = field(default_factory=time.monotonic)
    #: Streams, transfers and port connections open on it now.
    open: int = 0

    def touch(self) -> None:
        """Count a use now."""
        self.last = time.monotonic()

    def idle_past_timeout(self, now: float) -> bool:
        """Whether, at ``now`` (monotonic), nothing is open and its last use is at least its
        idle timeout ago (never without an idle timeout)."""
        return (self.idle_timeout is not None and not self.open
                and now - self.last >= self.idle_timeout)

    @contextmanager
    def opened(self) -> Iterator[None]:
        """Hold it in use while the block runs (a stream, a transfer, a port connection);
        its end is a use too, so the idle time counts from there."""
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
            self.touch()


async def ask_to_pause(sandbox: NodeSandbox, on_idle: str, on_timeout: str) -> None:
    """Give a new sandbox what its request asks of its idle timeout's and lifetime's ends;
    a pause its runtime cannot do is refused now rather than found out when it is due."""
    wanted = [f"{name}=pause" for name, action in (("on_idle", on_idle),
                                                   ("on_timeout", on_timeout))
              if action == "pause"]
    if not wanted:
        return
    try:
        sandbox.check_pausable()
    except RuntimeUnavailableError as exc:
        raise InvalidArgumentError(
            f"{' and '.join(wanted)} cannot be honoured: {exc.message}; or leave "
            f"{' and '.join(w.split('=')[0] for w in wanted)} at kill") from exc
    if on_timeout == "pause":
        await sandbox.set_on_timeout("pause")
