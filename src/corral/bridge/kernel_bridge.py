"""The kernel bridge: the code contexts of one sandbox, driven over JSON lines.

Runs inside the sandbox, on the image's ``python3``, started by the node as an ordinary
command with its stdin open. It imports nothing from Corral: it is run as a script from
the read-only agent bundle, and loads its sibling :mod:`bash_shell` by path. A Python
context is a Jupyter kernel (the image needs ``jupyter_client``, ``pyzmq`` and
``ipykernel``); an R, JavaScript, TypeScript or Java context is the Jupyter kernel of the
image's kernelspec for it (``proto.KERNELSPECS``: the ``code-interpreter`` image has them);
a Bash context is a persistent interactive ``bash`` (see :mod:`bash_shell`), which needs
no Jupyter.

The protocol, one JSON object per line on stdin and stdout, is
:mod:`corral.api.bridge_protocol`, loaded by path from the bundle like the shell module.

One thread and one ``zmq.Poller`` serve everything (stdin, every kernel's shell and
iopub sockets, their stderr pipes, every shell's pipes), so no lock is needed and a
flooding kernel cannot starve another one's replies for long. stdout and stderr beyond
``max_output`` bytes per execution (and rich results beyond as much again) are read from
the kernel and dropped, so the kernel never blocks and the node receives a bounded
amount. A cell still running at its timeout is interrupted (SIGINT, or the
``interrupt_request`` message for a kernelspec whose ``interrupt_mode`` asks for it, as
JJava's: the JVM ends on SIGINT); one that ignores the interrupt is killed after
:data:`INTERRUPT_GRACE` seconds. Kernels and shells get
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
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast


def load_sibling(name: str, relative: str) -> ModuleType:
    """A module of the bundle's ``corral`` folder, loaded by path: the bridge runs as a
    script with ``-I``, so it has no package to import it from."""
    module = sys.modules.get(name)
    if module is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.path.join(root, relative)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from corral.api import bridge_protocol as proto
    from corral.bridge.bash_shell import BashShell
else:
    proto = load_sibling("corral_bridge_protocol", "api/bridge_protocol.py")

#: A kernel message larger than this is dropped by zmq (it disconnects and reconnects).
MAX_KERNEL_MESSAGE = 256 * 1024 * 1024
INTERRUPT_GRACE = 3.0
START_TIMEOUT = 120.0
#: Where the kernels of the other languages are, to say so when an image lacks one.
KERNELS_IMAGE = "code-interpreter"
#: After the execute reply, how long to wait for the iopub ``idle`` that ends the output.
#: Only a message zmq dropped (oversized) leaves it missing; on a loaded host the idle
#: status can trail the reply by seconds, and finishing early would lose the cell's result.
IDLE_GRACE = 15.0
#: tslab (JavaScript, TypeScript) aborts every request that arrives within 200 ms of a
#: failed cell; the bridge ends such a cell this long after its reply, so the next cell
#: (sent only once this one is done) is not lost.
SETTLE = {"jslab": 0.4, "tslab": 0.4}
#: The stderr text of a cell kept to describe its failure when the kernel reports none.
FAILURE_TAIL = 4000
STDERR_TAIL = 8 * 1024
#: Connection files and ipc sockets, one folder per bridge (a second bridge may run).
RUN_DIR = f"/tmp/.corral-kernels-{os.getpid()}"
#: Result MIME types the node understands; others travel only if small.
KNOWN_MIME = (
    "text/plain", "text/html", "text/markdown", "text/latex", "image/png", "image/jpeg",
    "image/svg+xml", "application/json", "application/javascript", "application/pdf",
)
KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:", "--InteractiveShell.colors=NoColor"]
#: Run in a namespace of its own by a silent request just before a cell that has
#: environment variables of its own (``new``): sets them in ``os.environ`` (so the cell's
#: subprocesses get them too) and registers an IPython ``post_run_cell`` hook that puts
#: back what each was before, however the cell ends (error, interrupt), before its reply.
CELL_ENV = """
import os
from IPython import get_ipython
shell = get_ipython()
old = {name: os.environ.get(name) for name in new}
def restore(*_):
    shell.events.unregister("post_run_cell", restore)
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
os.environ.update(new)
shell.events.register("post_run_cell", restore)
"""


def emit(req_id: int, ev: str, **fields: Any) -> None:
    view = memoryview(proto.encode_event(req_id, ev, **fields))
    while view:
        view = view[os.write(1, view):]


def json_size(value: object) -> int:
    """Bytes of ``value`` as ASCII JSON (at least its size in an event line), or -1 if the
    protocol cannot carry it."""
    try:
        return len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return -1


def json_cut(text: str, budget: int, tail: bool = False) -> str:
    """``text`` cut to at most ``budget`` bytes as JSON (its end kept if ``tail``)."""
    while text and (size := len(json.dumps(text))) > budget:
        keep = len(text) * budget // size
        text = (text[-keep:] if keep else "") if tail else text[:keep]
    return text


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
        self.status: str | None = None  # the execute reply's
        self.errored = False  # an error event was sent
        self.stderr = ""  # its tail, see FAILURE_TAIL
        self.settle_at: float | None = None


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
        # ipc sockets in RUN_DIR for ipykernel; TCP on the sandbox's own loopback for the
        # others, which do not all speak ipc (tslab names ipc endpoints as TCP ones).
        ipc = language == proto.LANGUAGE_PYTHON
        self.km = KernelManager(kernel_name=proto.KERNELSPECS[language],
                                transport="ipc" if ipc else "tcp",
                                ip=base if ipc else "127.0.0.1",
                                connection_file=f"{base}.json")
        kernel_env = dict(os.environ)
        kernel_env.update(env)
        extra: list[str] = []
        if language == proto.LANGUAGE_PYTHON:
            extra = KERNEL_ARGS
            kernel_env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
            if "MPLBACKEND" not in env:  # images may set Agg; kernels want inline figures
                kernel_env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        self.by_message = self.km.kernel_spec.interrupt_mode == "message"
        self.settle = SETTLE.get(proto.KERNELSPECS[language], 0.0)
        self.km.start_kernel(cwd=cwd, env=kernel_env, extra_arguments=extra,
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
        if self.by_message:
            try:
                self.km.interrupt_kernel()  # an interrupt_request on the control channel
            except Exception:
                pass  # the kill after INTERRUPT_GRACE still comes
        else:
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
        emit(proto.BRIDGE_ID, proto.EV_HELLO, version=proto.PROTOCOL_VERSION, pid=os.getpid())
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
                if len(self.inbox) > proto.MAX_REQUEST:
                    emit(proto.BRIDGE_ID, proto.EV_FATAL, message="request line too long")
                    return False
                return True
            line = bytes(self.inbox[:end])
            del self.inbox[:end + 1]
            if line.strip() and not self.handle_line(line):
                return False

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
            elif run.settle_at is not None:  # it has ended: only its settling is left
                if now >= run.settle_at:
                    self.finish(kernel)
                continue
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

    def handle_line(self, line: bytes) -> bool:
        """Serve one request; False if it broke the protocol (the bridge then ends)."""
        try:
            req = proto.parse_request(line)
        except proto.ProtocolError as exc:
            emit(proto.BRIDGE_ID, proto.EV_FATAL, message=proto.cut_message(str(exc)))
            return False
        req_id, op = req["id"], req["op"]
        try:
            if op == proto.OP_PING:
                emit(req_id, proto.EV_OK)
            elif op == proto.OP_CREATE:
                self.create(req_id, req)
            elif op == proto.OP_EXECUTE:
                self.execute(req_id, req)
            elif op == proto.OP_INTERRUPT:
                kernel = self.kernel(req)
                if kernel.run is not None:
                    kernel.run.interrupted = True
                    self.interrupt(kernel)
                emit(req_id, proto.EV_OK, running=kernel.run is not None)
            elif op == proto.OP_RESTART:
                old = self.kernel(req, alive=False)
                self.remove(old, "the context was restarted")
                self.start(req_id, old.name, old.language, old.cwd, old.env)
            elif op == proto.OP_DELETE:
                self.remove(self.kernel(req, alive=False), "the context was deleted")
                emit(req_id, proto.EV_OK)
            else:
                raise Refused(proto.FAIL_INVALID_ARGUMENT, f"unknown op {op!r:.40}")
        except Refused as exc:
            fail(req_id, exc.code, exc.message)
        except Exception as exc:  # report, never die: other contexts live here too
            fail(req_id, proto.FAIL_INTERNAL, f"{type(exc).__name__}: {exc}")
        return True

    def kernel(self, req: dict, alive: bool = True  # type: ignore[type-arg]
               ) -> Kernel | BashShell:
        kernel = self.kernels.get(str(req.get("ctx")))
        if kernel is None:
            raise Refused(proto.FAIL_NOT_FOUND, f"no context {req.get('ctx')!r:.80}")
        if alive and kernel.dead is not None:
            raise Refused(proto.FAIL_KERNEL_DEAD, kernel.dead)
        return kernel

    def create(self, req_id: int, req: dict) -> None:  # type: ignore[type-arg]
        name, language = req.get("ctx"), req.get("language")
        cwd, env = req.get("cwd"), req.get("env") or {}
        if not isinstance(name, str) or not name.replace("-", "").isalnum():
            raise Refused(proto.FAIL_INVALID_ARGUMENT, "bad context name")
        if name in self.kernels:
            raise Refused(proto.FAIL_ALREADY_EXISTS, f"context {name} exists")
        if language not in proto.LANGUAGES:
            raise Refused(proto.FAIL_INVALID_ARGUMENT,
                          f"unsupported language {language!r:.40}")
        if language != proto.LANGUAGE_BASH and self.no_jupyter is not None:
            raise Refused(proto.FAIL_INVALID_ARGUMENT, self.no_jupyter)
        if language not in (proto.LANGUAGE_PYTHON, proto.LANGUAGE_BASH):
            self.check_kernelspec(language)
        if not isinstance(cwd, str) or not os.path.isdir(cwd):
            raise Refused(proto.FAIL_NOT_FOUND,
                          f"working directory {cwd!r:.200} does not exist")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise Refused(proto.FAIL_INVALID_ARGUMENT, "env must map strings to strings")
        self.start(req_id, name, language, cwd, env)

    def check_kernelspec(self, language: str) -> None:
        """Refuse a language whose kernelspec the image lacks, naming the image with it."""
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

        name = proto.KERNELSPECS[language]
        try:
            KernelSpecManager().get_kernel_spec(name)
        except NoSuchKernel:
            raise Refused(proto.FAIL_INVALID_ARGUMENT,
                          f"this image has no {language} kernel (no Jupyter kernelspec "
                          f"{name!r}); the {KERNELS_IMAGE} image has it: create the "
                          f"sandbox from image {KERNELS_IMAGE} (built by 'corral image "
                          f"build {KERNELS_IMAGE}')") from None

    def start(self, req_id: int, name: str, language: str, cwd: str,
              env: dict[str, str]) -> None:
        kernel: Kernel | BashShell
        try:
            if language == proto.LANGUAGE_BASH:
                kernel = bash_shell_class()(self, name, language, cwd, env, RUN_DIR,
                                            START_TIMEOUT)
            else:
                kernel = Kernel(self, name, language, cwd, env)
        except Exception as exc:
            raise Refused(proto.FAIL_KERNEL_FAILED,
                          f"starting the {language} context: {exc}") from None
        kernel.ready_req = req_id
        self.kernels[name] = kernel
        for target in kernel.targets():
            self.poller.register(target, select.POLLIN)  # zmq.POLLIN is the same bit

    def execute(self, req_id: int, req: dict) -> None:  # type: ignore[type-arg]
        kernel = self.kernel(req)
        if kernel.ready_req is not None:
            raise Refused(proto.FAIL_INVALID_ARGUMENT, "the context is still starting")
        if kernel.run is not None:
            raise Refused(proto.FAIL_BUSY, "the context is running another cell")
        code, timeout, limit = req.get("code"), req.get("timeout"), req.get("max_output")
        env = req.get("env") or {}
        if not isinstance(code, str):
            raise Refused(proto.FAIL_INVALID_ARGUMENT, "code must be a string")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and k.isidentifier() and isinstance(v, str) and "\0" not in v
                for k, v in env.items()):
            raise Refused(proto.FAIL_INVALID_ARGUMENT,
                          "env must map variable names to strings without NUL")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise Refused(proto.FAIL_INVALID_ARGUMENT, "timeout must be a positive number")
        if not isinstance(limit, int) or limit < 0:
            raise Refused(proto.FAIL_INVALID_ARGUMENT,
                          "max_output must be a non-negative integer")
        if not isinstance(kernel, Kernel):
            kernel.execute(Run(req_id, "", timeout, limit), code, env)
            return
        if env and kernel.language != proto.LANGUAGE_PYTHON:
            raise Refused(proto.FAIL_INVALID_ARGUMENT,
                          f"a cell's own env is supported in python and bash contexts, not "
                          f"{kernel.language}: set the variables when creating the context")
        if env:  # silent: no output, no execution count, never aborts the cell after it
            kernel.send("execute_request", {
                "code": f"__import__('builtins').exec({CELL_ENV!r}, {{'new': {env!r}}})",
                "silent": True, "store_history": False, "user_expressions": {},
                "allow_stdin": False, "stop_on_error": False})
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
            emit(kernel.run.req_id, proto.EV_DIED, reason=proto.cut_message(why))
            kernel.run = None
        if kernel.ready_req is not None:
            fail(kernel.ready_req, proto.FAIL_KERNEL_FAILED, why)
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
        run.execution_count = (count if isinstance(count, int) and not isinstance(count, bool)
                               and count >= 0 else None)
        status = content.get("status")
        run.status = status if isinstance(status, str) else None
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
        if req_id is not None:
            emit(req_id, proto.EV_OK, pid=kernel.process.pid)

    def on_iopub(self, kernel: Kernel, msg: dict) -> None:  # type: ignore[type-arg]
        if kernel.ready_req is not None:
            kernel.iopub_seen = True
            return
        run = kernel.run
        if run is None or msg.get("parent_header", {}).get("msg_id") != run.msg_id:
            return
        kind, content = msg.get("msg_type"), msg.get("content", {})
        if kind == "stream":  # Jupyter's names from here on, not the bridge's
            name = proto.EV_STDERR if content.get("name") == "stderr" else proto.EV_STDOUT
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
        run.errored = True
        fields = {"name": name, "value": value, "traceback": traceback}
        size = len(json.dumps(fields))
        if size > run.rich_left:  # cut to fit proto.max_event_line, however long each was
            keep = max(run.rich_left - 1024, 4096)
            fields = {"name": json_cut(name, 256), "value": json_cut(value, keep // 4),
                      "traceback": json_cut(traceback, keep - keep // 4, tail=True)}
            run.truncated = True
        run.rich_left = max(0, run.rich_left - size)
        emit(run.req_id, proto.EV_ERROR, **fields)

    def output(self, run: Run, name: str, text: str) -> None:
        if name == proto.EV_STDERR:
            run.stderr = (run.stderr + text)[-FAILURE_TAIL:]
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
        for start in range(0, len(text), proto.TEXT_CHUNK):
            emit(run.req_id, name, text=text[start:start + proto.TEXT_CHUNK])

    def result(self, run: Run, data: object, main: bool) -> None:
        if not isinstance(data, dict):
            return
        bundle: dict[str, object] = {}
        for mime, value in data.items():
            size = json_size(value)  # -1: not JSON the node accepts (NaN, too deep)
            if isinstance(mime, str) and size >= 0 and (mime in KNOWN_MIME
                                                        or size <= 64 * 1024):
                bundle[mime] = value
        size = len(json.dumps(bundle))
        if size > run.rich_left:
            run.truncated = True
            self.output(run, proto.EV_STDERR, f"[a {size}-byte result was dropped: results over "
                                       f"{run.limit} bytes in this execution]\n")
            return
        run.rich_left -= size
        emit(run.req_id, proto.EV_RESULT, main=main, data=bundle)

    def finish(self, kernel: Kernel | BashShell) -> None:
        run = kernel.run
        if run is None:
            return
        if isinstance(kernel, Kernel):
            if run.status == "error" and kernel.settle and run.settle_at is None:
                run.settle_at = time.monotonic() + kernel.settle  # see SETTLE; tick ends it
                return
            if run.settle_at is not None and time.monotonic() < run.settle_at:
                return
            if run.status in ("error", "abort") and not run.errored and not run.timed_out:
                self.failure(run)
        kernel.run = None
        emit(run.req_id, proto.EV_DONE, execution_count=run.execution_count,
             timed_out=run.timed_out, truncated=run.truncated,
             kernel_seconds=time.monotonic() - run.started)

    def failure(self, run: Run) -> None:
        """A cell whose reply says it failed, from a kernel that sent no error for it
        (tslab prints its errors to stderr): the error is the first stderr line that names
        one, as ``Name: message`` (else the first line), with the stderr as traceback."""
        if run.status == "abort":
            self.error(run, "CellAborted", "the kernel aborted the cell without running it",
                       "")
            return
        lines = [line.strip() for line in run.stderr.splitlines() if line.strip()]
        name, value = "Error", lines[0] if lines else "the cell failed"
        for line in lines:
            head, sep, rest = line.partition(": ")
            if sep and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
                name, value = head, rest
                break
        self.error(run, name, value, run.stderr)

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
            emit(run.req_id, proto.EV_DIED, reason=proto.cut_message(why),
                 timed_out=run.timed_out)
        kernel.kill()

    def fail_start(self, kernel: Kernel | BashShell, why: str) -> None:
        req_id, kernel.ready_req = kernel.ready_req, None
        self.unregister(kernel)
        self.kernels.pop(kernel.name, None)
        kernel.kill()
        if req_id is not None:
            fail(req_id, proto.FAIL_KERNEL_FAILED, why)

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
    """A request refused: answered ``fail`` with ``code`` (one of ``proto.FAIL_CODES``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def fail(req_id: int, code: str, message: str) -> None:
    emit(req_id, proto.EV_FAIL, code=code, message=proto.cut_message(message))


def bash_shell_class() -> type[BashShell]:
    """:class:`bash_shell.BashShell`, loaded from beside this script."""
    module = load_sibling("corral_bash_shell", "bridge/bash_shell.py")
    return cast("type[BashShell]", module.BashShell)


def main() -> int:
    bridge = Bridge()
    try:
        import jupyter_client.manager  # noqa: F401  (know now, not at the first context)
        if bridge.zmq is None:
            raise ImportError("no module named 'zmq'")
    except ImportError as exc:
        bridge.no_jupyter = ("this image cannot run Jupyter kernels: it needs python3 "
                             f"with jupyter_client, pyzmq and ipykernel ({exc}); Bash "
                             "contexts work without them")
    try:
        bridge.serve()
    finally:
        bridge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
