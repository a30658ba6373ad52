"""Processes inside the sandbox: spawn, stream, feed stdin, signal, time out, reap.

The agent is the sandbox's PID 1, so every orphan ends up as its child. One reaper thread
owns ``waitpid(-1)``; nothing else waits on a pid (``Popen.wait`` is never called), so an
exit status can never be stolen. A command's whole tree is killed on timeout: its process
group, its session, and every descendant found under ``/proc``, stopped first so that
none can fork away between the scan and the kill.
"""

from __future__ import annotations

import errno
import os
import queue
import selectors
import signal
import subprocess
import threading
import time

from corral.api import agent_protocol as proto
from corral.api.limits import MAX_ARGV

from .channel import Channel, Credits
from .errors import RequestError
from .root import Root
from .users import resolve_user

# typing is not imported at run time: every module the agent loads slows sandbox start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXIT_GRACE = 0.2  # seconds to keep draining output after the command's own exit
#: Looser than the node's bound (limits.MAX_ENV_VARS): a command gets the sandbox's
#: environment and its own, each within that bound.
MAX_ENV = 4096


class Proc:
    """One command the node started."""

    def __init__(self, req_id: int, popen: subprocess.Popen[bytes], argv: list[str]) -> None:
        self.req_id = req_id
        self.popen = popen
        self.argv = argv
        self.started = time.time()
        self.credits = Credits()
        self.stdin_queue: queue.Queue[tuple[int, bytes, bool]] | None = None
        self.reason: str | None = None
        self.status: int | None = None
        self.exited = threading.Event()


class ProcessTable:
    """The commands running in this sandbox, keyed by the node's request id."""

    def __init__(self, channel: Channel, root: Root | None = None) -> None:
        self._channel = channel
        self._root = root or Root()
        self._lock = threading.Lock()
        self._by_id: dict[int, Proc] = {}
        self._by_pid: dict[int, Proc] = {}
        self._orphan_status: dict[int, int] = {}
        self._have_children = threading.Event()
        threading.Thread(target=self._reap_forever, name="reaper", daemon=True).start()

    # -- requests ---------------------------------------------------------------------

    def exec(self, req_id: int, req: dict[str, Any]) -> None:
        """Start a command; its events follow on ``req_id``."""
        argv = _argv(req)
        env = _env(req.get("env"))
        cwd = req.get("cwd", "/")
        if not isinstance(cwd, str) or "\0" in cwd or not cwd.startswith("/"):
            raise RequestError("invalid_argument", "cwd must be an absolute path")
        if not os.path.isdir(self._root.host(cwd)):
            raise RequestError("not_found", f"working directory {cwd!r} does not exist")
        timeout = req.get("timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise RequestError("invalid_argument", "timeout must be a positive number")
        user = resolve_user(req.get("user"), self._root)
        env.setdefault("HOME", user.home)
        env.setdefault("USER", user.name)
        env.setdefault("LOGNAME", user.name)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        want_stdin = bool(req.get("stdin", False))
        with self._lock:
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self._root.host(cwd),
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    user=user.uid if user.uid != os.getuid() else None,
                    group=user.gid if user.gid != os.getgid() else None,
                    extra_groups=user.groups if user.uid != os.getuid() else None,
                )
            except FileNotFoundError:
                raise RequestError("not_found", f"executable {argv[0]!r} not found") from None
            except PermissionError:
                raise RequestError("permission_denied", f"cannot execute {argv[0]!r}") from None
            except BlockingIOError:  # EAGAIN from fork: the pids limit is used up
                raise RequestError("resource_exhausted",
                                   "cannot start a process: the sandbox's pids limit is reached"
                                   ) from None
            except OSError as exc:
                raise RequestError("invalid_argument", f"cannot start {argv[0]!r}: {exc}") from None
            proc = Proc(req_id, popen, argv)
            self._by_id[req_id] = proc
            self._by_pid[popen.pid] = proc
            early = self._orphan_status.pop(popen.pid, None)
        self._have_children.set()
        go = threading.Event()
        try:
            # Every helper thread starts before "started" is sent: if the pids limit stops
            # one, the command is undone and refused instead of left half-served.
            if want_stdin:
                proc.stdin_queue = queue.Queue()
                threading.Thread(target=self._feed_stdin, args=(proc,), daemon=True).start()
            if timeout is not None:
                timer = threading.Timer(float(timeout), self._time_out, args=(proc,))
                timer.daemon = True
                timer.start()
            threading.Thread(target=self._pump, args=(proc, go), daemon=True).start()
        except RuntimeError:
            _kill_tree(popen.pid)
            if proc.stdin_queue is not None:
                proc.stdin_queue.put((-1, b"", True))
            with self._lock:
                self._by_id.pop(req_id, None)
            raise RequestError("resource_exhausted", "cannot start a thread to serve the "
                               "command: the sandbox's pids limit is reached") from None
        self._channel.send({"id": req_id, "ev": proto.EV_STARTED, "pid": popen.pid})
        go.set()
        if early is not None:
            self._record_exit(proc, early)

    def stdin(self, req_id: int, req: dict[str, Any], data: bytes) -> None:
        """Queue bytes (and/or EOF) for a command's stdin; acked once written."""
        proc = self._get(req.get("target"))
        if proc.stdin_queue is None:
            raise RequestError("invalid_argument", "the command was not started with stdin open")
        proc.stdin_queue.put((req_id, data, bool(req.get("eof", False))))

    def signal(self, req: dict[str, Any]) -> None:
        """Send a signal to a command's process group."""
        proc = self._get(req.get("target"))
        signum = req.get("signal")
        valid = set(signal.Signals)
        if not isinstance(signum, int) or signum not in valid:
            raise RequestError("invalid_argument", f"unknown signal {signum!r}")
        if signum == signal.SIGKILL:
            proc.reason = proc.reason or proto.REASON_KILLED
            _kill_tree(proc.popen.pid)
            return
        try:
            os.killpg(proc.popen.pid, signum)
        except ProcessLookupError:
            pass

    def grant(self, req: dict[str, Any]) -> None:
        """Credit a command's output stream (flow control)."""
        target, count = req.get("target"), req.get("n")
        with self._lock:
            proc = self._by_id.get(target) if isinstance(target, int) else None
        if proc is not None and isinstance(count, int):
            proc.credits.give(count)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            procs = [p for p in self._by_id.values() if not p.exited.is_set()]
        # argv may be long (a whole script): listings show its start only.
        return [
            {"id": p.req_id, "pid": p.popen.pid, "argv": [a[:256] for a in p.argv[:32]],
             "started_at": p.started}
            for p in procs[:1000]
        ]

    def detach(self) -> None:
        """The node went away: keep every command running, drop its output from now on."""
        with self._lock:
            procs = list(self._by_id.values())
        for proc in procs:
            proc.credits.close()

    def kill_all(self) -> None:
        with self._lock:
            pids = [p.popen.pid for p in self._by_id.values()]
        for pid in pids:
            _kill_tree(pid)

    # -- internals ----------------------------------------------------------------------

    def _get(self, target: object) -> Proc:
        with self._lock:
            proc = self._by_id.get(target) if isinstance(target, int) else None
        if proc is None or proc.exited.is_set():
            raise RequestError("not_found", f"no running command with id {target!r}")
        return proc

    def _time_out(self, proc: Proc) -> None:
        if not proc.exited.is_set():
            proc.reason = proto.REASON_TIMEOUT
            _kill_tree(proc.popen.pid)

    def _feed_stdin(self, proc: Proc) -> None:
        assert proc.stdin_queue is not None and proc.popen.stdin is not None
        fd = proc.popen.stdin.fileno()
        broken = False
        while True:
            req_id, data, eof = proc.stdin_queue.get()
            if req_id < 0:
                break
            error = None
            if broken:
                error = "stdin is closed"
            else:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if eof:
                        proc.popen.stdin.close()
                        broken = True
                except OSError as exc:
                    broken = True
                    error = f"writing stdin: {exc.strerror}"
            if error:
                self._channel.send({"id": req_id, "ev": proto.EV_ERROR,
                                    "code": "invalid_argument", "message": error})
            else:
                self._channel.send({"id": req_id, "ev": proto.EV_OK})

    def _pump(self, proc: Proc, go: threading.Event) -> None:
        """Forward stdout/stderr until both reach EOF or the command exited a while ago."""
        go.wait()
        sel = selectors.DefaultSelector()
        assert proc.popen.stdout is not None and proc.popen.stderr is not None
        streams = {proc.popen.stdout.fileno(): proto.EV_STDOUT,
                   proc.popen.stderr.fileno(): proto.EV_STDERR}
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        deadline: float | None = None
        while streams:
            if proc.exited.is_set() and deadline is None:
                deadline = time.monotonic() + EXIT_GRACE
            if deadline is not None and time.monotonic() >= deadline:
                break
            for key, _ in sel.select(timeout=0.05):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, proto.CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    del streams[fd]
                    continue
                if proc.credits.take():
                    self._channel.send({"id": proc.req_id, "ev": streams[fd]}, chunk)
        sel.close()
        proc.exited.wait()
        proc.popen.stdout.close()
        proc.popen.stderr.close()
        status = proc.status if proc.status is not None else 0
        exit_code = os.waitstatus_to_exitcode(status)
        event: dict[str, Any] = {"id": proc.req_id, "ev": proto.EV_EXIT, "reason": proc.reason}
        if exit_code < 0:
            event.update(exit_code=128 - exit_code, signal=-exit_code)
        else:
            event.update(exit_code=exit_code, signal=None)
        if proc.stdin_queue is not None:
            proc.stdin_queue.put((-1, b"", True))
        self._channel.send(event)
        with self._lock:
            self._by_id.pop(proc.req_id, None)

    def _record_exit(self, proc: Proc, status: int) -> None:
        proc.status = status
        proc.popen.returncode = os.waitstatus_to_exitcode(status)
        proc.exited.set()

    def _reap_forever(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                self._have_children.clear()
                self._have_children.wait(timeout=1.0)
                continue
            except InterruptedError:
                continue
            with self._lock:
                proc = self._by_pid.pop(pid, None)
                if proc is None:
                    # An orphan, or a child whose Popen has not registered yet.
                    if len(self._orphan_status) < 1024:
                        self._orphan_status[pid] = status
            if proc is not None:
                self._record_exit(proc, status)


def _argv(req: dict[str, Any]) -> list[str]:
    argv, cmd = req.get("argv"), req.get("cmd")
    if (argv is None) == (cmd is None):
        raise RequestError("invalid_argument", "give exactly one of argv or cmd")
    if cmd is not None:
        if not isinstance(cmd, str) or not cmd or "\0" in cmd:
            raise RequestError("invalid_argument", "cmd must be a non-empty string without NUL")
        if not os.path.exists("/bin/sh"):
            raise RequestError("not_found", "this image has no /bin/sh; pass argv instead")
        return ["/bin/sh", "-c", cmd]
    if (not isinstance(argv, list) or not argv or len(argv) > MAX_ARGV
            or not all(isinstance(a, str) and "\0" not in a for a in argv) or not argv[0]):
        raise RequestError("invalid_argument", "argv must be a non-empty list of strings")
    return list(argv)


def _env(env: object) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise RequestError("invalid_argument", "env must be an object of strings")
    for key, value in env.items():
        if (not isinstance(key, str) or not isinstance(value, str) or not key
                or "=" in key or "\0" in key or "\0" in value):
            raise RequestError("invalid_argument", f"invalid environment variable {key!r}")
    return dict(env)


def _stat_ids(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgrp, session) of a pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def _kill_tree(leader: int) -> None:
    """SIGKILL ``leader``, its group, its session and all descendants."""
    me = os.getpid()
    doomed: set[int] = set()
    for _ in range(50):
        table: dict[int, tuple[int, int, int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != me:
                ids = _stat_ids(int(name))
                if ids is not None:
                    table[int(name)] = ids
        found = {leader} & table.keys()
        found |= {pid for pid, (_, pgrp, sid) in table.items() if leader in (pgrp, sid)}
        grew = True
        while grew:
            more = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
            found |= more
            grew = bool(more)
        new = found - doomed
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        doomed |= new
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
