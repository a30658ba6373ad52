"""The kernel bridge: the code contexts of one sandbox, driven over JSON lines.

Runs inside the sandbox, on the image's ``python3``, started by the node as an ordinary
command with its stdin open. It imports nothing from Corral: it is run as a script from
the read-only agent bundle, and loads its sibling :mod:`bash_shell` by path. A Python
context is a Jupyter kernel (the image needs ``jupyter_client``, ``pyzmq`` and
``ipykernel``); a Bash context is a persistent interactive ``bash`` (see
:mod:`bash_shell`), which needs neither.

Protocol: one JSON object per line. The node sends requests ``{"id": n, "op": ...}``:

* ``create {ctx, language, cwd, env}``: start a kernel (``language``: ``python`` or
  ``bash``); ``ok`` once it answers.
* ``execute {ctx, code, timeout, max_output}``: run a cell; ``stdout``/``stderr``
  (``text``), ``result`` (``main``, ``data``: a MIME bundle), ``error`` (``name``,
  ``value``, ``traceback``) events, then ``done`` or ``died``.
* ``interrupt {ctx}``, ``restart {ctx}``, ``delete {ctx}``, ``ping``: one ``ok``.

Any request may be answered ``{"ev": "fail", "code", "message"}`` instead. The bridge
speaks first: ``{"id": 0, "ev": "hello", "pid"}``.

One thread and one ``zmq.Poller`` serve everything (stdin, every kernel's shell and
iopub sockets, their stderr pipes, every shell's pipes), so no lock is needed and a
flooding kernel cannot starve another one's replies for long. stdout and stderr beyond
``max_output`` bytes per execution (and rich results beyond as much again) are read from
the kernel and dropped, so the kernel never blocks and the node receives a bounded
amount. A cell still running at its timeout is interrupted (SIGINT); one that ignores the
interrupt is killed after :data:`INTERRUPT_GRACE` seconds. Kernels and shells get
``oom_score_adj`` 1000, so they, not the bridge, are what the OOM killer picks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from corral.bridge.bash_shell import BashShell

VERSION = 1
#: Longest request line (code is bounded well below this by the node).
MAX_REQUEST = 4 * 1024 * 1024
#: Output text per event; longer output is split.
TEXT_CHUNK = 256 * 1024
#: A kernel message larger than this is dropped by zmq (it disconnects and reconnects).
MAX_KERNEL_MESSAGE = 256 * 1024 * 1024
INTERRUPT_GRACE = 3.0
START_TIMEOUT = 120.0
#: After the execute reply, how long to wait for the iopub ``idle`` that ends the output.
#: Only a message zmq dropped (oversized) leaves it missing; on a loaded host the idle
#: status can trail the reply by seconds, and finishing early would lose the cell's result.
IDLE_GRACE = 15.0
STDERR_TAIL = 8 * 1024
#: Connection files and ipc sockets, one folder per bridge (a second bridge may run).
RUN_DIR = f"/tmp/.corral-kernels-{os.getpid()}"
#: Result MIME types the node understands; others travel only if small.
KNOWN_MIME = (
    "text/plain", "text/html", "text/markdown", "text/latex", "image/png", "image/jpeg",
    "image/svg+xml", "application/json", "application/javascript", "application/pdf",
)
KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:", "--InteractiveShell.colors=NoColor"]
LANGUAGES = ("python", "bash")


def emit(event: dict) -> None:  # type: ignore[type-arg]
    line = json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n"
    data = line.encode("utf-8", "replace")
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class Run:
    """One execution in progress."""

    def __init__(self, req_id: int, msg_id: str, timeout: float | None, max_output: int):
        self.req_id = req_id
        self.msg_id = msg_id
        self.started = time.monotonic()
        self.deadline = None if timeout is None else self.started + timeout
        self.left = max_output  # for stdout and stderr
        self.rich_left = max_output  # for results and the traceback, apart: a cell's
        self.limit = max_output      # value still arrives after it flooded its output
        self.truncated = False
        self.cut = False  # stdout/stderr reached the limit and the marker was sent
        self.timed_out = False
        self.interrupted = False  # by an interrupt request (not the timeout)
        self.kill_at: float | None = None
        self.reply_at: float | None = None
        self.idle = False
        self.execution_count: int | None = None
        self.kernel_seconds = 0.0


class Kernel:
    """One context's kernel: its process, sockets and the execution it runs."""

    noun = "kernel"

    def __init__(self, bridge: Bridge, name: str, language: str, cwd: str,
                 env: dict[str, str]) -> None:
        from jupyter_client.manager import KernelManager

        self.bridge = bridge
        self.name = name
        self.language, self.cwd, self.env = language, cwd, env
        self.run: Run | None = None
        self.dead: str | None = None
        self.stderr = bytearray()
        self.ready_req: int | None = None
        self.info_id = ""
        self.info_replied = False
        self.iopub_seen = False
        self.start_deadline = time.monotonic() + START_TIMEOUT
        base = f"{RUN_DIR}/{name}"
        self.km = KernelManager(kernel_name="python3", transport="ipc", ip=base,
                                connection_file=f"{base}.json")
        kernel_env = dict(os.environ)
        kernel_env.update(env)
        kernel_env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        if "MPLBACKEND" not in env:  # images may set Agg; kernels want inline figures
            kernel_env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        self.km.start_kernel(cwd=cwd, env=kernel_env, extra_arguments=KERNEL_ARGS,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        self.process = self.km.provisioner.process
        try:
            with open(f"/proc/{self.process.pid}/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        self.session = self.km.session
        self.shell = self.km.connect_shell()
        self.iopub = self.km.connect_iopub()
        self.iopub.setsockopt(bridge.zmq.MAXMSGSIZE, MAX_KERNEL_MESSAGE)
        self.err_fd = self.process.stderr.fileno()
        os.set_blocking(self.err_fd, False)
        self.ask_info()

    def ask_info(self) -> None:
        msg = self.session.send(self.shell, "kernel_info_request", {})
        self.info_id = msg["header"]["msg_id"]

    def send(self, kind: str, content: dict) -> str:  # type: ignore[type-arg]
        msg = self.session.send(self.shell, kind, content)
        return str(msg["header"]["msg_id"])

    def receive(self, socket: object) -> dict | None:  # type: ignore[type-arg]
        zmq = self.bridge.zmq
        try:
            frames = socket.recv_multipart(zmq.NOBLOCK)  # type: ignore[attr-defined]
        except zmq.Again:
            return None
        try:
            _, parts = self.session.feed_identities(frames)
            msg: dict = self.session.deserialize(parts)  # type: ignore[type-arg]
            return msg
        except Exception:  # a malformed message: code in the kernel can send anything
            return None

    def targets(self) -> list[object]:
        return [self.shell, self.iopub, self.err_fd]

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except OSError:
            pass

    def interrupt(self) -> None:
        self.signal(signal.SIGINT)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        try:
            self.process.kill()
            self.process.wait(timeout=10)
        except Exception:
            pass
        for sock in (self.shell, self.iopub):
            try:
                sock.close(linger=0)
            except Exception:
                pass
        try:
            self.process.stderr.close()
        except Exception:
            pass
        try:
            self.km.cleanup_resources()
        except Exception:
            pass


class Bridge:
    def __init__(self) -> None:
        self.zmq: Any = None
        #: Why Python contexts cannot start here (no Jupyter in the image), if so.
        self.no_jupyter: str | None = None
        try:
            import zmq

            self.zmq = zmq
            self.poller: Any = zmq.Poller()
        except ImportError:  # Bash contexts still work: a plain poll() serves their fds
            self.poller = select.poll()
        self.kernels: dict[str, Kernel | BashShell] = {}
        self.inbox = bytearray()
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        os.set_blocking(0, False)
        self.poller.register(0, select.POLLIN)

    # -- the loop --------------------------------------------------------------------------

    def serve(self) -> None:
        emit({"id": 0, "ev": "hello", "version": VERSION, "pid": os.getpid()})
        while True:
            for target, _ in self.poller.poll(100):
                if target == 0:
                    if not self.read_requests():
                        return
                    continue
                for kernel in list(self.kernels.values()):
                    if not isinstance(kernel, Kernel):
                        if kernel.dead is None and kernel.readable(target):
                            break
                    elif target is kernel.iopub:
                        self.drain(kernel, kernel.iopub, self.on_iopub)
                    elif target is kernel.shell:
                        self.drain(kernel, kernel.shell, self.on_shell)
                    elif target == kernel.err_fd:
                        self.read_stderr(kernel)
            self.tick()

    def drain(self, kernel: Kernel, socket: object, handle: object) -> None:
        # A bounded batch per wake-up, so one flooding kernel cannot starve the others.
        for _ in range(256):
            if kernel.dead is not None or kernel.name not in self.kernels:
                return
            msg = kernel.receive(socket)
            if msg is None:
                return
            handle(kernel, msg)  # type: ignore[operator]

    def read_requests(self) -> bool:
        try:
            chunk = os.read(0, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.inbox += chunk
        while True:
            end = self.inbox.find(b"\n")
            if end < 0:
                if len(self.inbox) > MAX_REQUEST:
                    emit({"id": 0, "ev": "fatal", "message": "request line too long"})
                    return False
                return True
            line = bytes(self.inbox[:end])
            del self.inbox[:end + 1]
            if line.strip():
                self.handle_line(line)

    def read_stderr(self, kernel: Kernel) -> None:
        try:
            chunk = os.read(kernel.err_fd, 1 << 16)
        except (BlockingIOError, OSError):
            return
        if not chunk:
            self.poller.unregister(kernel.err_fd)
            kernel.err_fd = -1
            return
        kernel.stderr += chunk
        del kernel.stderr[:-STDERR_TAIL]

    def tick(self) -> None:
        now = time.monotonic()
        for kernel in list(self.kernels.values()):
            if kernel.dead is not None:
                continue
            code = kernel.process.poll()
            if code is not None:
                self.died(kernel, f"the {kernel.noun} {describe_exit(code)}")
                continue
            if kernel.ready_req is not None:
                if now > kernel.start_deadline:
                    self.fail_start(kernel, f"the {kernel.noun} did not start within "
                                            f"{START_TIMEOUT:g} s")
                continue
            run = kernel.run
            if run is None:
                continue
            if not isinstance(kernel, Kernel):
                kernel.tick(now)
            if run.deadline is not None and now >= run.deadline and not run.timed_out:
                run.timed_out = True
                self.interrupt(kernel)
            if run.kill_at is not None and now >= run.kill_at:
                why = "timed out and" if run.timed_out else ""
                self.died(kernel, f"the cell {why} did not stop within {INTERRUPT_GRACE:g} s "
                                  f"of an interrupt; the {kernel.noun} was "
                                  "killed".replace("  ", " "))
                continue
            if run.reply_at is not None and not run.idle and now >= run.reply_at + IDLE_GRACE:
                run.idle = True  # the idle status was lost (a dropped oversized message)
                self.finish(kernel)

    # -- requests --------------------------------------------------------------------------

    def handle_line(self, line: bytes) -> None:
        try:
            req = json.loads(line)
        except ValueError:
            emit({"id": 0, "ev": "fatal", "message": "request is not JSON"})
            return
        if not isinstance(req, dict) or not isinstance(req.get("id"), int):
            return
        req_id, op = req["id"], req.get("op")
        try:
            if op == "ping":
                emit({"id": req_id, "ev": "ok"})
            elif op == "create":
                self.create(req_id, req)
            elif op == "execute":
                self.execute(req_id, req)
            elif op == "interrupt":
                kernel = self.kernel(req)
                if kernel.run is not None:
                    kernel.run.interrupted = True
                    self.interrupt(kernel)
                emit({"id": req_id, "ev": "ok", "running": kernel.run is not None})
            elif op == "restart":
                old = self.kernel(req, alive=False)
                self.remove(old, "the context was restarted")
                self.start(req_id, old.name, old.language, old.cwd, old.env)
            elif op == "delete":
                self.remove(self.kernel(req, alive=False), "the context was deleted")
                emit({"id": req_id, "ev": "ok"})
            else:
                raise Refused("invalid_argument", f"unknown op {op!r:.40}")
        except Refused as exc:
            emit({"id": req_id, "ev": "fail", "code": exc.code, "message": exc.message})
        except Exception as exc:  # report, never die: other contexts live here too
            emit({"id": req_id, "ev": "fail", "code": "internal",
                  "message": f"{type(exc).__name__}: {exc}"[:2000]})

    def kernel(self, req: dict, alive: bool = True  # type: ignore[type-arg]
               ) -> Kernel | BashShell:
        kernel = self.kernels.get(str(req.get("ctx")))
        if kernel is None:
            raise Refused("not_found", f"no context {req.get('ctx')!r:.80}")
        if alive and kernel.dead is not None:
            raise Refused("kernel_dead", kernel.dead)
        return kernel

    def create(self, req_id: int, req: dict) -> None:  # type: ignore[type-arg]
        name, language = req.get("ctx"), req.get("language")
        cwd, env = req.get("cwd"), req.get("env") or {}
        if not isinstance(name, str) or not name.replace("-", "").isalnum():
            raise Refused("invalid_argument", "bad context name")
        if name in self.kernels:
            raise Refused("already_exists", f"context {name} exists")
        if language not in LANGUAGES:
            raise Refused("invalid_argument", f"unsupported language {language!r:.40}")
        if language == "python" and self.no_jupyter is not None:
            raise Refused("invalid_argument", self.no_jupyter)
        if not isinstance(cwd, str) or not os.path.isdir(cwd):
            raise Refused("not_found", f"working directory {cwd!r:.200} does not exist")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise Refused("invalid_argument", "env must map strings to strings")
        self.start(req_id, name, language, cwd, env)

    def start(self, req_id: int, name: str, language: str, cwd: str,
              env: dict[str, str]) -> None:
        kernel: Kernel | BashShell
        try:
            if language == "bash":
                kernel = bash_shell_class()(self, name, language, cwd, env, RUN_DIR,
                                            START_TIMEOUT)
            else:
                kernel = Kernel(self, name, language, cwd, env)
        except Exception as exc:
            raise Refused("kernel_failed", f"starting the {language} context: "
                                           f"{exc}"[:2000]) from None
        kernel.ready_req = req_id
        self.kernels[name] = kernel
        for target in kernel.targets():
            self.poller.register(target, select.POLLIN)  # zmq.POLLIN is the same bit

    def execute(self, req_id: int, req: dict) -> None:  # type: ignore[type-arg]
        kernel = self.kernel(req)
        if kernel.ready_req is not None:
            raise Refused("invalid_argument", "the context is still starting")
        if kernel.run is not None:
            raise Refused("busy", "the context is running another cell")
        code, timeout, limit = req.get("code"), req.get("timeout"), req.get("max_output")
        if not isinstance(code, str):
            raise Refused("invalid_argument", "code must be a string")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise Refused("invalid_argument", "timeout must be a positive number")
        if not isinstance(limit, int) or limit < 0:
            raise Refused("invalid_argument", "max_output must be a non-negative integer")
        if not isinstance(kernel, Kernel):
            kernel.execute(Run(req_id, "", timeout, limit), code)
            return
        msg_id = kernel.send("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True})
        kernel.run = Run(req_id, msg_id, timeout, limit)

    def interrupt(self, kernel: Kernel | BashShell) -> None:
        run = kernel.run
        kernel.interrupt()
        if run is not None and run.kill_at is None:
            run.kill_at = time.monotonic() + INTERRUPT_GRACE

    def remove(self, kernel: Kernel | BashShell, why: str) -> None:
        if kernel.run is not None:
            emit({"id": kernel.run.req_id, "ev": "died", "reason": why})
            kernel.run = None
        if kernel.ready_req is not None:
            emit({"id": kernel.ready_req, "ev": "fail", "code": "kernel_failed", "message": why})
            kernel.ready_req = None
        self.unregister(kernel)
        self.kernels.pop(kernel.name, None)
        kernel.kill()

    def unregister(self, kernel: Kernel | BashShell) -> None:
        for target in kernel.targets():
            self.drop_target(target)

    def drop_target(self, target: object) -> None:
        try:
            self.poller.unregister(target)
        except (KeyError, ValueError):
            pass

    # -- kernel messages -------------------------------------------------------------------

    def on_shell(self, kernel: Kernel, msg: dict) -> None:  # type: ignore[type-arg]
        parent = msg.get("parent_header", {}).get("msg_id")
        if kernel.ready_req is not None and parent == kernel.info_id:
            kernel.info_replied = True
            self.check_ready(kernel)
            return
        run = kernel.run
        if run is None or parent != run.msg_id or msg.get("msg_type") != "execute_reply":
            return
        content = msg.get("content", {})
        count = content.get("execution_count")
        run.execution_count = count if isinstance(count, int) else None
        run.reply_at = time.monotonic()
        if run.idle:
            self.finish(kernel)

    def check_ready(self, kernel: Kernel) -> None:
        if not kernel.info_replied:
            return
        if not kernel.iopub_seen:
            # iopub is a PUB socket: until our subscription reaches the kernel, its output
            # is lost. Ask again until an answer shows up on iopub too.
            kernel.info_replied = False
            kernel.ask_info()
            return
        self.ready(kernel)

    def ready(self, kernel: Kernel | BashShell) -> None:
        req_id, kernel.ready_req = kernel.ready_req, None
        emit({"id": req_id, "ev": "ok", "pid": kernel.process.pid})

    def on_iopub(self, kernel: Kernel, msg: dict) -> None:  # type: ignore[type-arg]
        if kernel.ready_req is not None:
            kernel.iopub_seen = True
            return
        run = kernel.run
        if run is None or msg.get("parent_header", {}).get("msg_id") != run.msg_id:
            return
        kind, content = msg.get("msg_type"), msg.get("content", {})
        if kind == "stream":
            name = "stderr" if content.get("name") == "stderr" else "stdout"
            self.output(run, name, str(content.get("text", "")))
        elif kind in ("execute_result", "display_data", "update_display_data"):
            self.result(run, content.get("data"), kind == "execute_result")
        elif kind == "error":
            tb = content.get("traceback")
            traceback = "\n".join(str(line) for line in tb) if isinstance(tb, list) else ""
            self.error(run, str(content.get("ename", "")), str(content.get("evalue", "")),
                       traceback)
        elif kind == "status" and content.get("execution_state") == "idle":
            run.idle = True
            if run.reply_at is not None:
                self.finish(kernel)

    def error(self, run: Run, name: str, value: str, traceback: str) -> None:
        event = {"id": run.req_id, "ev": "error", "name": name, "value": value,
                 "traceback": traceback}
        size = len(json.dumps(event))
        if size > run.rich_left:
            event["traceback"] = traceback[-max(run.rich_left - 1024, 4096):]
            run.truncated = True
        run.rich_left = max(0, run.rich_left - size)
        emit(event)

    def output(self, run: Run, name: str, text: str) -> None:
        if run.left <= 0 and run.cut:
            run.truncated = True
            return
        data = text.encode("utf-8", "replace")
        if len(data) > run.left:  # also when an earlier chunk filled the limit exactly
            data = data[:run.left]
            run.truncated = run.cut = True
            marker = f"\n[output truncated: over {run.limit} bytes in this execution]\n"
            text = data.decode("utf-8", "ignore") + marker
            run.left = 0
        else:
            run.left -= len(data)
        for start in range(0, len(text), TEXT_CHUNK):
            emit({"id": run.req_id, "ev": name, "text": text[start:start + TEXT_CHUNK]})

    def result(self, run: Run, data: object, main: bool) -> None:
        if not isinstance(data, dict):
            return
        bundle = {k: v for k, v in data.items() if isinstance(k, str)
                  and (k in KNOWN_MIME or len(json.dumps(v)) <= 64 * 1024)}
        size = len(json.dumps(bundle))
        if size > run.rich_left:
            run.truncated = True
            self.output(run, "stderr", f"[a {size}-byte result was dropped: results over "
                                       f"{run.limit} bytes in this execution]\n")
            return
        run.rich_left -= size
        emit({"id": run.req_id, "ev": "result", "main": main, "data": bundle})

    def finish(self, kernel: Kernel | BashShell) -> None:
        run, kernel.run = kernel.run, None
        if run is None:
            return
        emit({"id": run.req_id, "ev": "done", "execution_count": run.execution_count,
              "timed_out": run.timed_out, "truncated": run.truncated,
              "kernel_seconds": time.monotonic() - run.started})

    def died(self, kernel: Kernel | BashShell, why: str) -> None:
        if not isinstance(kernel, Kernel):
            kernel.drain()  # what the shell printed before it ended (``exit`` in a cell)
        detail = bytes(kernel.stderr[-1500:]).decode("utf-8", "replace").strip()
        kernel.dead = why
        self.unregister(kernel)
        run, kernel.run = kernel.run, None
        if kernel.ready_req is not None:
            self.fail_start(kernel, why + (f": {detail}" if detail else ""))
        if run is not None:
            emit({"id": run.req_id, "ev": "died", "reason": why,
                  "timed_out": run.timed_out})
        kernel.kill()

    def fail_start(self, kernel: Kernel | BashShell, why: str) -> None:
        req_id, kernel.ready_req = kernel.ready_req, None
        self.unregister(kernel)
        self.kernels.pop(kernel.name, None)
        kernel.kill()
        emit({"id": req_id, "ev": "fail", "code": "kernel_failed", "message": why[:2000]})

    def close(self) -> None:
        for kernel in list(self.kernels.values()):
            kernel.kill()
        try:
            for name in os.listdir(RUN_DIR):
                os.unlink(os.path.join(RUN_DIR, name))
            os.rmdir(RUN_DIR)
        except OSError:
            pass


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def bash_shell_class() -> type[BashShell]:
    """:class:`bash_shell.BashShell`, loaded from beside this script (run with ``-I``, the
    bridge has no package to import it from)."""
    module = sys.modules.get("corral_bash_shell")
    if module is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bash_shell.py")
        spec = importlib.util.spec_from_file_location("corral_bash_shell", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["corral_bash_shell"] = module
        spec.loader.exec_module(module)
    return cast("type[BashShell]", module.BashShell)


def main() -> int:
    bridge = Bridge()
    try:
        import jupyter_client.manager  # noqa: F401  (know now, not at the first context)
        if bridge.zmq is None:
            raise ImportError("no module named 'zmq'")
    except ImportError as exc:
        bridge.no_jupyter = ("this image cannot run Python (Jupyter) kernels: it needs "
                             f"python3 with jupyter_client, pyzmq and ipykernel ({exc}); "
                             "Bash contexts work without them")
    try:
        bridge.serve()
    finally:
        bridge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
