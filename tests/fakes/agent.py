"""``AgentProcess``: the agent binary driven directly over its channel, frame by frame.

For tests of the agent's own answers (its path rule, its root seam, what it does with a
frame out of protocol) with nothing of the node in between. The agent runs as a plain
subprocess with ``--root`` (see ``agent/src/paths.rs``), no isolation.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

from corral.api import agent_protocol as proto
from corral.runtime.agent_bundle import agent_binary, agent_env

REPLY_TIMEOUT = 30.0

#: One frame: its header and its data.
Frame = tuple[dict[str, Any], bytes]


class AgentProcess:
    """One agent over ``root``; use as a context manager."""

    def __init__(self, root: Path, *, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [str(agent_binary()), "--root", str(root)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env if env is not None else agent_env(orphan_grace=0))
        self._next = 1
        self._pending: tuple[threading.Thread, list[Frame | BaseException | None]] | None = None
        self.hello = self.read()[0]

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=REPLY_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def send_raw(self, frame: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(frame)
        self.process.stdin.flush()

    def send(self, header: dict[str, Any], data: bytes = b"") -> int:
        """Send a request (``id`` filled in unless given); returns its id."""
        if "id" not in header:
            header = {"id": self._next, **header}
            self._next += 1
        self.send_raw(proto.encode(header, data))
        return int(header["id"])

    def read(self, timeout: float = REPLY_TIMEOUT) -> Frame:
        """The next frame from the agent; AssertionError if none comes in time."""
        found = self._wait(timeout)
        assert found, f"the agent said nothing within {timeout:g} s"
        self._pending = None
        outcome = found[0]
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None, "the agent closed its channel"
        return outcome

    def assert_quiet(self, seconds: float) -> None:
        """Assert that the agent sends no frame (nor closes its channel) for ``seconds``."""
        found = self._wait(seconds)
        assert not found, f"the agent sent {found[0]!r}"

    def _wait(self, timeout: float) -> list[Frame | BaseException | None]:
        """The next frame once read (a list of one), or an empty list if none came in time:
        a read that timed out leaves its thread waiting, and the next read takes its frame."""
        if self._pending is None:
            result: list[Frame | BaseException | None] = []
            thread = threading.Thread(target=self._read_frame, args=(result,), daemon=True)
            thread.start()
            self._pending = (thread, result)
        thread, found = self._pending
        thread.join(timeout)
        return found

    def _read_frame(self, result: list[Frame | BaseException | None]) -> None:
        try:
            assert self.process.stdout is not None
            prefix = self.process.stdout.read(proto.HEADER.size)
            if len(prefix) < proto.HEADER.size:
                result.append(None)
                return
            head_len, data_len = proto.parse_prefix(prefix, proto.MAX_REPLY_HEADER)
            head = self.process.stdout.read(head_len)
            data = self.process.stdout.read(data_len) if data_len else b""
            result.append((proto.parse_header(head), data))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result.append(exc)

    def call(self, header: dict[str, Any], data: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """One request and its (first) reply."""
        req_id = self.send(header, data)
        frame = self.read()
        assert frame[0]["id"] == req_id, frame
        return frame

    def run(self, argv: list[str], **fields: Any) -> tuple[dict[str, Any], bytes, bytes]:
        """Run a command to its end: (exit event, stdout, stderr)."""
        req_id = self.send({"op": "exec", "argv": argv, **fields})
        out, err = bytearray(), bytearray()
        while True:
            header, data = self.read()
            assert header["id"] == req_id, header
            if header["ev"] == "error":
                raise AssertionError(f"exec refused: {header}")
            if header["ev"] == "stdout":
                out += data
            elif header["ev"] == "stderr":
                err += data
            elif header["ev"] == "exit":
                return header, bytes(out), bytes(err)
            if header["ev"] in ("stdout", "stderr"):
                self.send({"op": "credit", "target": req_id, "n": 1})
