"""The code interpreter of one sandbox: stateful contexts on real kernels.

``sandbox.code`` runs cells in *contexts*. A context is one kernel inside the sandbox (a
Jupyter ipykernel for Python, the image's Jupyter kernel for R, JavaScript, TypeScript and
Java, a persistent interactive ``bash`` for Bash), so variables, imports, functions and
the working directory persist from one cell to the next, and two contexts never share
state. ``default`` (Python) and ``default-<language>`` are created on first use.

The kernels belong to a *kernel bridge* (:mod:`corral.bridge.kernel_bridge`), a process the
node starts in the sandbox through the ordinary command API on the image's own
``python3``; :mod:`._bridge` is the node's end of it. The agent stays small, static and
image-independent; Python contexts need ``jupyter_client``/``ipykernel`` in the image, Bash
contexts only ``bash``.

What a cell produces streams as :data:`corral.api.models.CodeEvent` values (stdout and
stderr text, rich results, the cell's error, then the end); :meth:`NodeCodeInterpreter.run`
collects them into an :class:`~corral.api.models.Execution`. A cell past its timeout is
interrupted and reported as ``TimeoutError``: the context keeps its state. A kernel that
dies (the memory limit, ``os._exit``, ``exit`` in Bash) is reported as ``KernelDied``;
restart the context. A Bash cell whose last command fails is ``ExitStatus`` (the value is
the status); Bash cells have no rich results, only output.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.api import bridge_protocol as proto
from corral.api import contract, models
from corral.api.errors import (
    AgentError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SandboxError,
    error_from_code,
)
from corral.api.code_events import ErrorCallback, ResultCallback, TextCallback, collect
from corral.api.limits import DEFAULT_CODE_TIMEOUT as DEFAULT_TIMEOUT
from corral.api.resources import check_timeout

from ._bridge import Bridge, BridgeGone
from .commands import attach
from .validation import check_env, resolve_path

if TYPE_CHECKING:
    from .sandbox import NodeSandbox

LANGUAGES = models.CODE_LANGUAGES
DEFAULT_CONTEXT = "default"
#: stdout and stderr kept per execution, and as much again for results and the traceback;
#: the rest is dropped, with a marker at the end of the output.
MAX_OUTPUT = 8 * 1024 * 1024
MAX_CONTEXTS = 32
#: The bridge gives a kernel 120 s to start; the node waits a little longer before it
#: stops trusting the bridge.
START_DEADLINE = 150.0
CALL_DEADLINE = 60.0
#: Beyond a cell's timeout: the bridge's interrupt grace (3 s) and slack for a loaded host.
EXECUTE_GRACE = 30.0
_CONTEXT_ID = re.compile(r"default(-[a-z]+)?|ctx-[0-9a-f]{16}")
_MIME_FIELDS = {
    "text/plain": "text", "text/html": "html", "text/markdown": "markdown",
    "image/svg+xml": "svg", "image/png": "png", "image/jpeg": "jpeg",
    "application/pdf": "pdf", "text/latex": "latex", "application/json": "json",
    "application/javascript": "javascript",
}
_BINARY = ("png", "jpeg", "pdf")
#: Events after which a cell's request gets no more.
_CELL_ENDS = frozenset({proto.EV_DONE, proto.EV_DIED, proto.EV_FAIL, proto.EV_GONE})
#: Cells left by their callers, settling in the background (kept referenced until done).
_SETTLING: set[asyncio.Task[None]] = set()


@dataclass
class _Context:
    id: str
    language: str
    cwd: str
    env: dict[str, str]
    bridge: Bridge | None = None  # the bridge its kernel lives in
    dead: str | None = None  # why its kernel is gone
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def info(self) -> models.CodeContext:
        return models.CodeContext(id=self.id, language=self.language, cwd=self.cwd)


@dataclass(frozen=True)
class _Suspended:
    """The kernel bridge as a pause or a snapshot left it: the bridge (None in a sandbox
    restored from a snapshot, whose node never had it), its command, and its contexts."""

    bridge: Bridge | None
    command_id: int
    pid: int
    next_id: int
    contexts: tuple[_Context, ...]


class NodeCodeInterpreter:
    """``sandbox.code``: contexts and cells. Get it from a running node sandbox."""

    def __init__(self, sandbox: NodeSandbox) -> None:
        self._sandbox = sandbox
        self._bridge: Bridge | None = None
        self._bridge_lock = asyncio.Lock()
        self._contexts: dict[str, _Context] = {}
        self._create_lock = asyncio.Lock()
        #: Seconds the last finished cell took inside the bridge (the benchmark reads it).
        self.last_kernel_seconds: float | None = None
        #: At a pause: the bridge, and the contexts whose kernels lived in it.
        self._suspended: _Suspended | None = None

    # -- contexts ------------------------------------------------------------------------

    async def create_context(self, language: str = "python", *, cwd: str | None = None,
                             env: Mapping[str, str] | None = None) -> models.CodeContext:
        """Start a new context (its own kernel) and return it once it can run code."""
        async with self._create_lock:
            ctx = await self._create(f"ctx-{secrets.token_hex(8)}", language, cwd, env)
        return ctx.info()

    async def list_contexts(self) -> list[models.CodeContext]:
        """The contexts of this sandbox, oldest first."""
        return [ctx.info() for ctx in self._contexts.values()]

    async def restart_context(self, context: contract.ContextRef) -> models.CodeContext:
        """Replace a context's kernel with a fresh one: its state is lost, its id kept."""
        ctx = self._get(context)
        bridge = await self._ensure_bridge()
        if ctx.bridge is bridge:
            reply = await bridge.call(proto.OP_RESTART, START_DEADLINE, ctx=ctx.id)
        else:  # its kernel died with an earlier bridge: start one in this bridge
            reply = await bridge.call(proto.OP_CREATE, START_DEADLINE, ctx=ctx.id,
                                      language=ctx.language, cwd=ctx.cwd, env=ctx.env)
        ctx.bridge, ctx.dead = None, "it failed to restart"
        _check(reply, f"restarting context {ctx.id}")
        ctx.bridge, ctx.dead = bridge, None
        return ctx.info()

    async def delete_context(self, context: contract.ContextRef) -> None:
        """Stop a context's kernel and forget the context."""
        ctx = self._get(context)
        self._contexts.pop(ctx.id, None)
        if ctx.bridge is not None and ctx.bridge.alive and ctx.dead is None:
            _check(await ctx.bridge.call(proto.OP_DELETE, CALL_DEADLINE, ctx=ctx.id),
                   f"deleting context {ctx.id}")

    async def interrupt(self, context: contract.ContextRef = DEFAULT_CONTEXT) -> None:
        """Interrupt the cell a context is running (SIGINT, like Jupyter's stop button or
        Ctrl-C in a shell).

        The cell ends with ``KeyboardInterrupt``; a cell that ignores it is killed after a
        few seconds, with its kernel (``KernelDied``). Nothing running: nothing happens.
        """
        ctx = self._get(context)
        if ctx.bridge is not None and ctx.bridge.alive and ctx.dead is None:
            _check(await ctx.bridge.call(proto.OP_INTERRUPT, CALL_DEADLINE, ctx=ctx.id),
                   f"interrupting context {ctx.id}")

    # -- cells ---------------------------------------------------------------------------

    async def run(self, code: str, *, language: str | None = None,
                  context: contract.ContextRef | None = None,
                  timeout: float | None = DEFAULT_TIMEOUT,
                  env: Mapping[str, str] | None = None,
                  on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None,
                  on_result: ResultCallback | None = None,
                  on_error: ErrorCallback | None = None) -> models.Execution:
        """Run a cell and return its :class:`~corral.api.models.Execution`.

        ``env``: environment variables for this cell alone (``os.environ`` in Python,
        exported in Bash, so its subprocesses get them too); afterwards each is back to
        what it was before the cell (Bash: to the context's own value), even if the cell
        failed or was interrupted.

        Callbacks get stdout/stderr text, each :class:`~corral.api.models.Result` and the
        :class:`~corral.api.models.ExecutionError` as they arrive. The cell's own
        exception is ``Execution.error``, not raised.

        Example::

            ex = await sb.code.run("import math; math.pi")
            assert ex.text == "3.141592653589793"
        """
        events = await self.stream(code, language=language, context=context, timeout=timeout,
                                   env=env)
        return await collect(events, on_stdout, on_stderr, on_result, on_error)

    async def stream(self, code: str, *, language: str | None = None,
                     context: contract.ContextRef | None = None,
                     timeout: float | None = DEFAULT_TIMEOUT,
                     env: Mapping[str, str] | None = None
                     ) -> AsyncIterator[models.CodeEvent]:
        """Check the request and make sure the context exists (errors raise here), then
        return the cell's events; leaving the iteration early interrupts the cell."""
        if not isinstance(code, str):
            raise InvalidArgumentError("code must be a string")
        size = len(code.encode("utf-8", "surrogatepass"))
        if size > models.MAX_CODE:
            raise InvalidArgumentError(f"code of {size} bytes exceeds the limit of "
                                       f"{models.MAX_CODE} bytes; write it to a file and "
                                       "run that instead")
        if timeout is not None:
            timeout = check_timeout(timeout, "code timeout")
        cell_env = check_env(env)
        self._sandbox.channel()  # a stopped sandbox says so, with its reason
        if context is None:
            ctx = await self._default(_language(language or "python"))
        else:
            ctx = self._get(context)
            if language is not None and _language(language) != ctx.language:
                raise InvalidArgumentError(f"context {ctx.id} runs {ctx.language}, "
                                           f"not {language}")
        return self._events(ctx, code, timeout, cell_env)

    async def _events(self, ctx: _Context, code: str, timeout: float | None,
                      env: dict[str, str]) -> AsyncIterator[models.CodeEvent]:
        await ctx.lock.acquire()
        settling = False
        try:
            started = time.monotonic()
            bridge = ctx.bridge
            if ctx.dead is not None or bridge is None or not bridge.alive:
                self._sandbox.channel()
                ctx.dead = ctx.dead or (bridge.closed_reason if bridge else None) or "gone"
                yield _died(f"the context's kernel is gone ({ctx.dead}); restart the context")
                yield _end(ctx, started)
                return
            counters = self._sandbox.counters()
            try:
                req_id, queue = await bridge.request(
                    proto.OP_EXECUTE, ctx=ctx.id, code=code, timeout=timeout,
                    max_output=MAX_OUTPUT, env=env)
            except BridgeGone as exc:
                self._gone(ctx, exc)
                yield _died(exc.message)
                yield _end(ctx, started)
                return
            end_at = None if timeout is None else started + timeout + EXECUTE_GRACE
            finished = False
            error: models.ExecutionError | None = None
            try:
                while True:
                    left = None if end_at is None else max(0.1, end_at - time.monotonic())
                    try:
                        event = await bridge.next(queue, left, "a cell")
                    except BridgeGone as exc:
                        finished = True
                        self._gone(ctx, exc)
                        yield _died(exc.message)
                        yield _end(ctx, started)
                        return
                    # The bridge checked each event's fields (proto.EVENT_FIELDS).
                    kind = event["ev"]
                    if kind in (proto.EV_STDOUT, proto.EV_STDERR):
                        yield models.CodeOutputEvent(type=kind, text=event["text"])
                    elif kind == proto.EV_RESULT:
                        yield models.CodeResultEvent(result=_result(event["data"], event["main"]))
                    elif kind == proto.EV_ERROR:
                        error = models.ExecutionError(name=event["name"], value=event["value"],
                                                      traceback=event["traceback"])
                    elif kind == proto.EV_DONE:
                        finished = True
                        self.last_kernel_seconds = float(event["kernel_seconds"])
                        if event["timed_out"]:
                            error = _timed_out(timeout)
                        if error is not None:
                            yield models.CodeErrorEvent(error=error)
                        yield _end(ctx, started, event["execution_count"], event["truncated"])
                        return
                    elif kind == proto.EV_DIED:
                        finished = True
                        ctx.dead = self._death(event["reason"], counters)
                        timed = " after the cell timed out" if event.get("timed_out") else ""
                        yield _died(f"{ctx.dead}{timed}; restart the context")
                        yield _end(ctx, started)
                        return
                    elif kind == proto.EV_FAIL and event["code"] == proto.FAIL_KERNEL_DEAD:
                        finished = True
                        ctx.dead = event["message"]
                        yield _died(f"{ctx.dead}; restart the context")
                        yield _end(ctx, started)
                        return
                    else:  # a fail, or an event that does not answer an execute
                        finished = kind == proto.EV_FAIL
                        raise _failure(event, f"running a cell in context {ctx.id}")
            finally:
                if not finished and bridge.alive:
                    # The caller left mid-cell: stop the cell rather than let it run
                    # unseen, the context held until it has stopped (the next cell would
                    # find the kernel busy).
                    settling = True
                    _spawn(self._settle(ctx, bridge, req_id, queue))
                else:
                    bridge.forget(req_id)
        finally:
            if not settling:
                ctx.lock.release()

    async def _settle(self, ctx: _Context, bridge: Bridge, req_id: int,
                      queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Interrupt the cell a caller left, wait for its end, then free the context."""
        try:
            with contextlib.suppress(SandboxError):
                await bridge.call(proto.OP_INTERRUPT, CALL_DEADLINE, ctx=ctx.id)
            # The bridge kills a kernel that ignores the interrupt, so the end comes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CALL_DEADLINE):
                    while (await queue.get())["ev"] not in _CELL_ENDS:
                        pass
        finally:
            bridge.forget(req_id)
            ctx.lock.release()

    def default_ready(self) -> bool:
        """Whether the default Python context's kernel is running (a warmed pool sandbox)."""
        ctx = self._contexts.get(DEFAULT_CONTEXT)
        return (ctx is not None and ctx.dead is None and ctx.bridge is not None
                and ctx.bridge.alive)

    def idle_command_ids(self) -> set[int]:
        """The bridge's command id while no cell runs (see :meth:`NodeCommands.list`)."""
        busy = any(ctx.lock.locked() for ctx in self._contexts.values())
        bridge = self._bridge
        return set() if busy or bridge is None or not bridge.alive else {bridge.command_id}

    # -- pausing (the node's own, see corral.node.pausing) ---------------------------------

    def suspend(self) -> None:
        """A pause (or a memory snapshot) begins: note the bridge and the contexts whose
        kernels live in it, for :meth:`reattach`. The pause then ends the bridge's stream
        (and any cell running)."""
        bridge = self._bridge
        if bridge is None or not bridge.alive:
            self._suspended = None
            return
        self._suspended = _Suspended(
            bridge, bridge.command_id, bridge.pid, bridge.next_id,
            tuple(ctx for ctx in self._contexts.values()
                  if ctx.bridge is bridge and ctx.dead is None))

    def kernels(self) -> dict[str, Any] | None:
        """What :meth:`suspend` noted, as a memory snapshot keeps it (None: no kernel);
        a sandbox restored from the snapshot takes it over (:meth:`inherit`)."""
        held = self._suspended
        if held is None:
            return None
        return {"command_id": held.command_id, "pid": held.pid, "next_id": held.next_id,
                "contexts": [{"id": ctx.id, "language": ctx.language, "cwd": ctx.cwd,
                              "env": ctx.env} for ctx in held.contexts]}

    async def inherit(self, kernels: dict[str, Any]) -> None:
        """In a sandbox restored from a memory snapshot: take the contexts :meth:`kernels`
        described and follow their bridge (which the restore brought back with its kernels
        and their variables). Raises SandboxError if it is out of reach."""
        contexts = tuple(_Context(c["id"], c["language"], c["cwd"], dict(c["env"]))
                         for c in kernels["contexts"])
        self._contexts.update({ctx.id: ctx for ctx in contexts})
        self._suspended = _Suspended(None, kernels["command_id"], kernels["pid"],
                                     kernels["next_id"], contexts)
        await self.reattach()

    async def reattach(self) -> None:
        """After a resume on the same node: follow the bridge :meth:`suspend` noted again
        (the agent's ``attach``), so its contexts keep their kernels and their state. A
        cell that ran across the pause lost its output; a bridge gone meanwhile stays gone
        (its contexts say so on their next cell)."""
        held, self._suspended = self._suspended, None
        if held is None:
            return
        async with self._bridge_lock:
            if self._bridge is not held.bridge:
                return  # replaced meanwhile
            handle = await attach(self._sandbox, held.command_id, held.pid)
            bridge = Bridge.attached(self._sandbox, handle, proto.max_event_line(MAX_OUTPUT),
                                     held.next_id)
            self._bridge = bridge
        for ctx in held.contexts:
            if self._contexts.get(ctx.id) is ctx and ctx.bridge is held.bridge:
                ctx.bridge, ctx.dead = bridge, None

    # -- internals -----------------------------------------------------------------------

    def _get(self, context: contract.ContextRef) -> _Context:
        context_id = context.id if isinstance(context, models.CodeContext) else context
        ctx = self._contexts.get(context_id) if isinstance(context_id, str) else None
        if ctx is None:
            raise NotFoundError(f"no code context {context_id!r:.80} in sandbox "
                                f"{self._sandbox.id}")
        return ctx

    async def _default(self, language: str) -> _Context:
        name = DEFAULT_CONTEXT if language == "python" else f"{DEFAULT_CONTEXT}-{language}"
        async with self._create_lock:
            ctx = self._contexts.get(name)
            if ctx is None:
                ctx = await self._create(name, language, None, None)
        return ctx

    async def _create(self, ctx_id: str, language: str, cwd: str | None,
                      env: Mapping[str, str] | None) -> _Context:
        sandbox = self._sandbox
        language = _language(language)
        if len(self._contexts) >= MAX_CONTEXTS:
            raise ResourceExhaustedError(f"sandbox {sandbox.id} already has {MAX_CONTEXTS} "
                                         "code contexts; delete some first")
        ctx = _Context(ctx_id, language, resolve_path(cwd or sandbox.workdir, sandbox.workdir),
                       check_env(env))
        bridge = await self._ensure_bridge()
        _check(await bridge.call(proto.OP_CREATE, START_DEADLINE, ctx=ctx.id, language=language,
                                 cwd=ctx.cwd, env=ctx.env), "starting a code context")
        ctx.bridge = bridge
        self._contexts[ctx.id] = ctx
        return ctx

    async def _ensure_bridge(self) -> Bridge:
        self._sandbox.channel()  # a stopped sandbox says so, with its reason
        async with self._bridge_lock:
            if self._bridge is None or not self._bridge.alive:
                self._bridge = await Bridge.start(self._sandbox,
                                                  proto.max_event_line(MAX_OUTPUT))
            return self._bridge

    def _gone(self, ctx: _Context, exc: BridgeGone) -> None:
        """The bridge ended: a stopped sandbox is an error of its own; else the kernel died."""
        self._sandbox.channel()
        ctx.dead = exc.message

    def _death(self, reason: str, counters: tuple[int, int]) -> str:
        limit = self._sandbox.limit_hit(counters)
        return f"{reason} ({limit})" if limit else reason


def _spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _SETTLING.add(task)
    task.add_done_callback(_SETTLING.discard)


def _language(language: str) -> str:
    if language not in LANGUAGES:
        raise InvalidArgumentError(f"unknown language {language!r:.40}; "
                                   f"supported: {', '.join(LANGUAGES)}")
    return language


#: ``fail`` codes that are Corral error codes of the same name.
_PUBLIC_FAILURES = (proto.FAIL_NOT_FOUND, proto.FAIL_INVALID_ARGUMENT, proto.FAIL_ALREADY_EXISTS)


def _check(reply: dict[str, Any], action: str) -> None:
    if reply["ev"] != proto.EV_OK:
        raise _failure(reply, action)


def _failure(reply: dict[str, Any], action: str) -> SandboxError:
    if reply["ev"] != proto.EV_FAIL:
        return AgentError(f"{action}: unexpected answer {reply['ev']!r} from the bridge")
    code, message = reply["code"], reply["message"]
    if code in _PUBLIC_FAILURES:
        return error_from_code(code, f"{action}: {message}")
    return AgentError(f"{action}: {message}")


def _result(data: dict[str, Any], main: bool) -> models.Result:
    fields: dict[str, Any] = {"is_main_result": main}
    extra: dict[str, Any] = {}
    for mime, value in list(data.items())[:64]:
        name = _MIME_FIELDS.get(mime)
        if name == "json":
            fields["json"] = value
        elif name is not None:
            if isinstance(value, list):  # Jupyter may split text into lines
                value = "".join(v for v in value if isinstance(v, str))
            if isinstance(value, str):
                fields[name] = value.replace("\n", "") if name in _BINARY else value
        elif isinstance(mime, str):
            extra[mime] = value
    return models.Result.model_validate({**fields, "extra": extra})


def _died(reason: str) -> models.CodeErrorEvent:
    return models.CodeErrorEvent(error=models.ExecutionError(
        name=models.KERNEL_DIED, value=reason))


def _timed_out(timeout: float | None) -> models.ExecutionError:
    return models.ExecutionError(
        name=models.TIMEOUT_ERROR,
        value=f"the cell ran past its timeout of {timeout:g} s and was interrupted; the "
              "context keeps its state")


def _end(ctx: _Context, started: float, count: int | None = None,
         truncated: bool = False) -> models.CodeEndEvent:
    return models.CodeEndEvent(context=ctx.id, execution_count=count, truncated=truncated,
                               duration=time.monotonic() - started)



if TYPE_CHECKING:
    _conforms: type[contract.CodeContract] = NodeCodeInterpreter
