"""Bash contexts for the kernel bridge: one persistent interactive ``bash`` per context.

The image needs no Jupyter kernel for Bash: each context is ``bash --noprofile --norc -i``
with its stdin, stdout and stderr on pipes, in a session of its own. Interactive, because
that is the shell whose Ctrl-C users know: SIGINT to its process group stops the running
command *and* the rest of the cell (loops included) and returns to the prompt, with every
variable, function, alias, ``cd`` and export kept.

A cell travels as one line on the shell's stdin, after the cell's code was written to a
file of the bridge's own (mode 0600), so nothing in the code (unbalanced quotes, a lone
``EOF``, NUL bytes) can reach the framing::

    \\builtin printf 'start %s\\n' TOKEN >&99; \\builtin source FILE </dev/null 99>&-

and the shell's ``PROMPT_COMMAND`` (read-only) reports ``end $?`` on the same fd 99 once
the cell is over, however it ended (finished, failed, a syntax error, interrupted). Fd 99
is a pipe only the bridge reads, and the cell runs with it closed: nothing the cell or its
children print can look like a status line, and ``TOKEN`` (random per cell) ties the
``end`` to this cell, not to a stray prompt of an earlier interrupt. The cell's stdin is
``/dev/null``: a ``read`` gets end-of-file, never the bridge's next line.

An interrupt is deferred until the cell's ``start`` line arrived: before that, bash may
still be reading the cell's line, and an interrupt would cut it. It is then repeated every
:data:`INTERRUPT_REPEAT` seconds while the cell runs (until the bridge's grace ends): a
SIGINT that lands while bash forks a command is taken by the child before it resets its
handlers, and bash, seeing the child exit normally, carries on (a loop would not stop),
as in a terminal where one presses Ctrl-C again. Output that arrives while no cell runs
(background jobs) is read and dropped, so a writer never blocks.
"""

from __future__ import annotations

import codecs
import os
import secrets
import shlex
import signal
import subprocess
import time
from typing import Any, Protocol

#: The shell's fd for status lines, closed inside every cell. High, so that cells' own
#: ``exec 3>file`` and the like never touch it.
STATUS_FD = 99
READ_SIZE = 1 << 16
#: Reads per wake-up (fairness between contexts), and per stream when a cell ends: a pipe
#: holds at most 1 MiB, so what is left after that came from a background job.
READ_BATCH = 16
DRAIN_BATCH = 32
STDERR_TAIL = 8 * 1024
INTERRUPT_REPEAT = 0.5
#: Error name of a cell whose last command exited non-zero (the value is the status).
EXIT_STATUS = "ExitStatus"
#: Error name of a cell stopped by an ``interrupt`` request (the value is the status).
INTERRUPTED = "KeyboardInterrupt"
_SETUP = (
    "PS1= PS2= PS0=; unset HISTFILE TMOUT MAILCHECK; set +H +o history; "
    f"PROMPT_COMMAND='\\builtin printf \"end %d\\n\" \"$?\" >&{STATUS_FD}'; "
    "readonly PROMPT_COMMAND; "
)


class Host(Protocol):
    """What a shell needs of the bridge (``kernel_bridge.Bridge``)."""

    def output(self, run: Any, name: str, text: str) -> None:
        """``name``: ``stdout`` or ``stderr``, the protocol's event kinds for them."""
    def error(self, run: Any, name: str, value: str, traceback: str) -> None: ...
    def finish(self, kernel: Any) -> None: ...
    def ready(self, kernel: Any) -> None: ...
    def drop_target(self, target: int) -> None: ...


class BashShell:
    """One context's bash: its process, pipes and the cell it runs.

    The bridge owns the loop: it registers :meth:`targets`, calls :meth:`readable` when
    one has data, :meth:`execute`, :meth:`interrupt` and :meth:`kill`; the shell calls the
    bridge back (:class:`Host`) with output, the error, the end of a cell and readiness.
    """

    noun = "shell"

    def __init__(self, host: Host, name: str, language: str, cwd: str, env: dict[str, str],
                 run_dir: str, start_timeout: float) -> None:
        self.host = host
        self.name = name
        self.language, self.cwd, self.env = language, cwd, env
        self.run: Any = None
        self.dead: str | None = None
        self.ready_req: int | None = None
        self.stderr = bytearray()  # what the shell said outside cells (start failures)
        self.start_deadline = time.monotonic() + start_timeout
        self.count = 0
        self.cell_file = os.path.join(run_dir, f"{name}.sh")
        self.token = ""
        self.started = False
        self.pending_interrupt = False
        self.interrupt_again: float | None = None
        self.status_buffer = bytearray()
        self.decoders = {name: _decoder() for name in ("stdout", "stderr")}
        shell_env = dict(os.environ)
        shell_env.pop("PYDEVD_DISABLE_FILE_VALIDATION", None)  # the bridge's, for ipykernel
        shell_env.update(env)
        shell_env.pop("PROMPT_COMMAND", None)
        #: The context's own environment, which a cell's variables are put back to.
        self.base_env = shell_env
        #: Variables of the last cell's own, put back as the next line starts.
        self.restore: dict[str, str | None] = {}
        status_read, status_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                ["bash", "--noprofile", "--norc", "--noediting", "+m", "-i"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=shell_env, pass_fds=(status_write,), start_new_session=True)
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        try:
            with open(f"/proc/{self.process.pid}/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        self.in_fd, self.out_fd, self.err_fd = (
            _fileno(self.process.stdin), _fileno(self.process.stdout),
            _fileno(self.process.stderr))
        self.status_fd = status_read
        for fd in (self.out_fd, self.err_fd, self.status_fd):
            os.set_blocking(fd, False)
        # The first "cell" sets the shell up; its end is the context's readiness. Before
        # it, the shell has fd ``status_write`` and no function or alias of a user.
        self.send(_SETUP, self.new_token(),
                  before=f"exec {STATUS_FD}>&{status_write} {status_write}>&-; ")

    def targets(self) -> list[int]:
        return [fd for fd in (self.out_fd, self.err_fd, self.status_fd) if fd >= 0]

    # -- the bridge's calls ----------------------------------------------------------------

    def execute(self, run: Any, code: str, env: dict[str, str] | None = None) -> None:
        """Start a cell (the bridge checked that none runs and the shell is ready), with
        ``env`` (names the bridge checked) exported for it alone: the next line puts them
        back to the context's own values, so that an interrupted cell is undone too."""
        os.makedirs(os.path.dirname(self.cell_file), mode=0o700, exist_ok=True)
        fd = os.open(self.cell_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        run.msg_id = self.new_token()
        self.send(self.env_line(env or {}) + f"\\builtin source {shlex.quote(self.cell_file)} "
                  f"</dev/null {STATUS_FD}>&-", run.msg_id)
        self.count += 1
        run.execution_count = self.count
        self.run = run
        self.decoders = {name: _decoder() for name in self.decoders}

    def interrupt(self) -> None:
        """SIGINT to the shell's process group, once the shell has read the cell's line."""
        if self.started:
            self.signal(signal.SIGINT)
            self.interrupt_again = time.monotonic() + INTERRUPT_REPEAT
        else:
            self.pending_interrupt = True

    def tick(self, now: float) -> None:
        """Called by the bridge's loop (at least every 100 ms): repeat an interrupt."""
        if self.interrupt_again is not None and now >= self.interrupt_again:
            self.interrupt()

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except OSError:
            pass

    def readable(self, target: object) -> bool:
        """Read what ``target`` has, if it is one of this shell's; False if it is not."""
        if target == self.status_fd:
            self.read_status()
        elif target == self.out_fd:
            self.out_fd = self.read(self.out_fd, "stdout", READ_BATCH)
        elif target == self.err_fd:
            self.err_fd = self.read(self.err_fd, "stderr", READ_BATCH)
        else:
            return False
        return True

    def drain(self) -> None:
        """Read what the pipes still hold (a cell's last output, before its end)."""
        if self.out_fd >= 0:
            self.out_fd = self.read(self.out_fd, "stdout", DRAIN_BATCH)
        if self.err_fd >= 0:
            self.err_fd = self.read(self.err_fd, "stderr", DRAIN_BATCH)
        run = self.run
        if run is not None and self.ready_req is None:
            for name, decoder in self.decoders.items():
                text = decoder.decode(b"", final=True)
                if text:
                    self.host.output(run, name, text)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        try:
            self.process.kill()
            self.process.wait(timeout=10)
        except Exception:
            pass
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                if stream is not None:
                    stream.close()
            except Exception:
                pass
        if self.status_fd >= 0:
            os.close(self.status_fd)
        self.out_fd = self.err_fd = self.status_fd = -1
        try:
            os.unlink(self.cell_file)
        except OSError:
            pass

    # -- internals -------------------------------------------------------------------------

    def env_line(self, env: dict[str, str]) -> str:
        """Commands that undo the last cell's variables and set this one's."""
        parts = []
        for name, value in self.restore.items():
            parts.append(f"\\builtin unset {name}" if value is None
                         else f"\\builtin export {name}={shlex.quote(value)}")
        parts += [f"\\builtin export {name}={shlex.quote(value)}" for name, value in env.items()]
        self.restore = {name: self.base_env.get(name) for name in env}
        return "".join(f"{part}; " for part in parts)

    def new_token(self) -> str:
        self.token, self.started, self.pending_interrupt = secrets.token_hex(16), False, False
        self.interrupt_again = None
        return self.token

    def send(self, command: str, token: str, before: str = "") -> None:
        line = f"{before}\\builtin printf 'start %s\\n' {token} >&{STATUS_FD}; {command}\n"
        view = memoryview(line.encode())
        while view:  # a short line into an empty pipe: this does not block
            view = view[os.write(self.in_fd, view):]

    def read(self, fd: int, name: str, batch: int) -> int:
        """Read up to ``batch`` chunks from ``fd``; returns the fd, or -1 at its end."""
        for _ in range(batch):
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return fd
            except OSError:
                chunk = b""
            if not chunk:
                self.host.drop_target(fd)
                return -1
            run = self.run
            if run is None or self.ready_req is not None:
                if name == "stderr":  # kept for the reason of a failed start
                    self.stderr += chunk
                    del self.stderr[:-STDERR_TAIL]
            elif run.cut:
                run.truncated = True  # over the cap: dropped without decoding
            else:
                text = self.decoders[name].decode(chunk)
                if text:
                    self.host.output(run, name, text)
        return fd

    def read_status(self) -> None:
        try:
            chunk = os.read(self.status_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.host.drop_target(self.status_fd)
            self.status_fd = -1
            return
        self.status_buffer += chunk
        while (end := self.status_buffer.find(b"\n")) >= 0:
            line = bytes(self.status_buffer[:end]).decode("ascii", "replace").split()
            del self.status_buffer[:end + 1]
            if line == ["start", self.token]:
                self.started = True
                if self.pending_interrupt:
                    self.pending_interrupt = False
                    self.interrupt()
            elif len(line) == 2 and line[0] == "end" and self.started:
                self.started, self.token, self.interrupt_again = False, "", None
                self.ended(int(line[1]) if line[1].isdigit() else -1)
        del self.status_buffer[:-4096]  # a line that long is not ours

    def ended(self, status: int) -> None:
        self.drain()
        if self.ready_req is not None:
            self.stderr.clear()  # the shell's greeting (no job control without a tty)
            self.host.ready(self)
            return
        run = self.run
        if run is None:
            return
        if status != 0:
            self.host.error(run, INTERRUPTED if run.interrupted else EXIT_STATUS,
                            str(status), "")
        self.host.finish(self)


def _fileno(stream: Any) -> int:
    return int(stream.fileno())


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")
