"""Gathering a command's output into a :class:`~corral.api.models.CommandResult`: pure logic
shared by the node and the SDK (no I/O of its own), as :mod:`.code_events` is for cells.

Both sides see a command as a run of :class:`Output` chunks and then an end; the capture
below decodes each stream incrementally for the callbacks (a UTF-8 character split across
two chunks reaches the callback whole), keeps up to
:data:`~corral.api.limits.MAX_CAPTURE` bytes of each stream, and builds the result when the
end arrives.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from . import models
from .limits import MAX_CAPTURE

#: Gets a running command's output as text, decoded incrementally (bad bytes replaced).
OutputCallback = Callable[[str], None]
StreamName = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class Output:
    """A chunk of a running command's output, as it arrived (bytes: output need not be text)."""

    stream: StreamName
    data: bytes


class OutputCapture:
    """One command's output: decoded for callbacks as it comes, kept up to a bound."""

    def __init__(self, on_stdout: OutputCallback | None = None,
                 on_stderr: OutputCallback | None = None) -> None:
        self._callbacks: dict[StreamName, OutputCallback | None] = {
            "stdout": on_stdout, "stderr": on_stderr}
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace")
                          for name in self._callbacks}
        self._kept: dict[StreamName, bytearray] = {"stdout": bytearray(),
                                                   "stderr": bytearray()}
        self.truncated = False

    def feed(self, chunk: Output) -> None:
        """Pass a chunk to its callback (as text) and keep what fits."""
        callback = self._callbacks[chunk.stream]
        if callback is not None:
            text = self._decoders[chunk.stream].decode(chunk.data)
            if text:
                callback(text)
        kept = self._kept[chunk.stream]
        room = MAX_CAPTURE - len(kept)
        self.truncated = self.truncated or len(chunk.data) > room
        kept += chunk.data[:max(room, 0)]

    def result(self, end: models.ExitEvent) -> models.CommandResult:
        """The command's result, once it ended as ``end`` says; flushes the decoders."""
        for name, callback in self._callbacks.items():
            tail = self._decoders[name].decode(b"", final=True)
            if callback is not None and tail:
                callback(tail)
        return models.CommandResult(
            exit_code=end.exit_code, stdout=self._kept["stdout"].decode("utf-8", "replace"),
            stderr=self._kept["stderr"].decode("utf-8", "replace"), signal=end.signal,
            reason=end.reason, duration=end.duration, truncated=self.truncated)
