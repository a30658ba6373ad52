"""The agent's entry point and request loop.

The main thread reads frames from the node and dispatches them. Quick operations (stat,
mkdir, starting a process, writing an upload chunk) run inline; anything that streams or
may block (file downloads) gets a thread of its own, so one slow stream never stalls the
channel.

When the node goes away (its end of the channel closes), the sandbox lives on: transfers in
flight are dropped, running commands keep running with their output discarded, and the
agent waits up to ``CORRAL_AGENT_ORPHAN_GRACE`` seconds for a restarted node to connect to
the socket at ``CORRAL_AGENT_SOCKET``. Past that, it kills everything and exits, which ends
the sandbox: no sandbox outlives its node for long.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from corral.api import agent_protocol as proto

from .channel import Channel, reconnect
from .errors import RequestError
from .files import DATA_KEY, Files
from .processes import ProcessTable
from .root import Root, from_argv

# typing is not imported at run time: every module the agent loads slows sandbox start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


MAX_MESSAGE = 2000
CAUGHT_SIGNALS = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO,
    signal.SIGPWR, signal.SIGXCPU, signal.SIGXFSZ, signal.SIGTSTP, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGABRT, signal.SIGTRAP,
)
DEFAULT_ORPHAN_GRACE = 600.0


class Agent:
    def __init__(self, channel: Channel, root: Root | None = None) -> None:
        """``root``: where the sandbox's ``/`` lies; ``/`` but for the tests' fake runtime."""
        self.channel = channel
        self.processes = ProcessTable(channel, root)
        self.files = Files(channel, root)
        simple: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            proto.OP_STAT: self.files.stat,
            proto.OP_EXISTS: self.files.exists,
            proto.OP_LIST: self.files.list,
            proto.OP_MKDIR: self.files.mkdir,
            proto.OP_REMOVE: self.files.remove,
            proto.OP_RENAME: self.files.rename,
            proto.OP_PING: lambda req: {"pid": os.getpid()},
            proto.OP_PROCESSES: lambda req: {"processes": self.processes.list()},
        }
        self._simple = simple
        self._last_id = 0

    def serve(self, socket_path: str | None = None, orphan_grace: float = 0.0) -> None:
        """Serve nodes until none comes back within ``orphan_grace``; then end the sandbox."""
        while True:
            self._serve_one()
            self.channel.detach()
            self.processes.detach()
            self.files.detach()
            fd = None
            if socket_path is not None and orphan_grace > 0:
                fd = reconnect(socket_path, time.monotonic() + orphan_grace)
            if fd is None:
                break
            self.channel.attach(fd, os.dup(fd))
        self.processes.kill_all()

    def _serve_one(self) -> None:
        # next_id: request ids the node must not reuse (commands started by a previous
        # node keep theirs, so that a re-attached node can still signal them).
        self.channel.send({"id": 0, "ev": proto.EV_HELLO, "version": proto.PROTOCOL_VERSION,
                           "pid": os.getpid(), "next_id": self._last_id + 1})
        while True:
            try:
                frame = self.channel.recv()
            except proto.ProtocolError as exc:
                _log(f"closing the channel: {exc}")
                return
            if frame is None:
                return
            header, data = frame
            req_id = header.get("id")
            if isinstance(req_id, int) and req_id > self._last_id:
                self._last_id = req_id
            self._dispatch(header, data)

    def _dispatch(self, req: dict[str, Any], data: bytes) -> None:
        req_id, op = req["id"], req.get("op")
        try:
            if op in self._simple:
                self._reply(req_id, self._simple[op](req))
            elif op == proto.OP_EXEC:
                self.processes.exec(req_id, req)
            elif op == proto.OP_CHUNK:
                self.files.write_chunk(req, data)
            elif op == proto.OP_CREDIT:
                self.processes.grant(req)
                target = req.get("target")
                credits = self.files.downloads.get(target) if isinstance(target, int) else None
                if credits is not None and isinstance(req.get("n"), int):
                    credits.give(req["n"])
            elif op == proto.OP_CANCEL:
                target = req.get("target")
                if isinstance(target, int):
                    self.files.cancel(target)
            elif op == proto.OP_STDIN:
                self.processes.stdin(req_id, req, data)
            elif op == proto.OP_SIGNAL:
                self.processes.signal(req)
                self._reply(req_id, {})
            elif op == proto.OP_WRITE:
                self.files.write_open(req_id, req)
            elif op == proto.OP_READ:
                threading.Thread(target=self._guarded, args=(req_id, self.files.read, req),
                                 daemon=True).start()
            else:
                raise RequestError("invalid_argument", f"unknown operation {op!r}")
        except RequestError as exc:
            self._fail(req_id, exc.code, exc.message)
        except Exception as exc:  # a bug in the agent must not end the sandbox
            self._fail(req_id, "agent_error", f"{type(exc).__name__}: {exc}")
            import traceback  # only here: it is slow to import

            _log(traceback.format_exc())

    def _guarded(self, req_id: int, handler: Callable[[int, dict[str, Any]], None],
                 req: dict[str, Any]) -> None:
        try:
            handler(req_id, req)
        except RequestError as exc:
            self._fail(req_id, exc.code, exc.message)
        except Exception as exc:
            self._fail(req_id, "agent_error", f"{type(exc).__name__}: {exc}")

    def _reply(self, req_id: int, result: dict[str, Any]) -> None:
        data = result.pop(DATA_KEY, b"")
        try:
            self.channel.send({"id": req_id, "ev": proto.EV_OK, **result}, data)
        except proto.ProtocolError as exc:
            self._fail(req_id, "resource_exhausted", f"the reply is too large: {exc}")

    def _fail(self, req_id: int, code: str, message: str) -> None:
        # Messages may echo request fields of any length: keep them well inside a frame.
        self.channel.send({"id": req_id, "ev": proto.EV_ERROR, "code": code,
                           "message": message[:MAX_MESSAGE]})


def _log(message: str) -> None:
    """A line on stderr, which the node keeps a tail of; nowhere once the node is gone."""
    try:
        print(f"corral-agent: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _orphan_grace() -> float:
    try:
        return max(0.0, float(os.environ.get("CORRAL_AGENT_ORPHAN_GRACE", DEFAULT_ORPHAN_GRACE)))
    except ValueError:
        return DEFAULT_ORPHAN_GRACE


def main() -> None:
    try:
        root = from_argv(sys.argv[1:])  # real runtimes pass no arguments: see .root
    except ValueError as exc:
        _log(str(exc))
        sys.exit(2)
    # As PID 1 the agent only gets signals it handles; a no-op handler (reset to the
    # default in every child at exec) keeps sandbox code from interrupting it. gVisor 2022
    # does not shield its init from signals sent inside the sandbox, so every catchable
    # signal whose default ends or stops a process gets one (not SIGSEGV and friends: a
    # real fault would loop). SIGKILL and SIGSTOP stay fatal there: the node then stops
    # the sandbox with the reason (SECURITY.md).
    for signum in CAUGHT_SIGNALS:
        signal.signal(signum, lambda *_: None)
    read_fd, write_fd = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    os.set_inheritable(read_fd, False)
    os.set_inheritable(write_fd, False)
    socket_path = os.environ.get("CORRAL_AGENT_SOCKET") or None
    Agent(Channel(read_fd, write_fd), root).serve(socket_path, _orphan_grace())


if __name__ == "__main__":
    main()
