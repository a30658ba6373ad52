"""envd's data plane under the mount: ``GET /health`` and the ``process.Process`` service
(docs/research/e2b-protocol.md §5), over Corral's :class:`CommandService`.

Requests carry no API key but the sandbox's id (``E2b-Sandbox-Id``) and its access token
(``X-Access-Token``), checked by :class:`TokenAuth` in Corral's authentication layer, so
rate limits and body bounds still apply (keyed per sandbox). A sandbox that is not live
is E2B's proxy answer, 502 "… was not found", which the SDKs read as "not running".

E2B's processes outlive their stream: ``Start`` runs a command that a client leaving
early leaves running (:meth:`CommandService.start_detached`), killed only when
``Connect-Timeout-Ms`` runs out; ``Connect`` follows one again by pid, bounded by the
same header without killing it. Processes are addressed by pid; Corral's command id is
found from the pid through the agent's process list.

PTYs: ``Start`` with ``pty.size`` runs the command on a pseudo-terminal of Corral's own
(its output comes as ``data.pty``), ``SendInput`` and ``StreamInput`` type
``input.pty`` into it, and ``Update`` with ``pty.size`` resizes it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Scope

from corral.api import models as corral
from corral.api.agent_protocol import MAX_PTY_SIZE
from corral.api.errors import InvalidArgumentError, SandboxError

from ..logs import SANDBOX_SCOPE
from ..services import CommandService, SandboxService
from ..store import KeyRef
from . import connect, interpreter, signing
from .connect import ConnectError
from .dataplane import not_found, sandbox_of
from .mapping import Tokens

router = APIRouter()
#: envd's port, the one data-plane calls name in ``E2b-Sandbox-Port``.
ENVD_PORT: Final = 49983
_SERVICE: Final = "/process.Process/"
#: Seconds without output after which a stream carries a keepalive, unless the client
#: asks otherwise (``Keepalive-Ping-Interval``, as the SDKs send: 50).
_KEEPALIVE: Final = 50.0
_KEEPALIVE_RANGE: Final = (1.0, 3600.0)
#: Command timeouts Corral accepts (``Connect-Timeout-Ms`` is clamped into them).
_TIMEOUT_RANGE: Final = (1.0, 7 * 24 * 3600.0)
_MAX_ID: Final = 64
#: Who runs a call that names no user (envd >= 0.4.0 semantics), in which directory;
#: a user not in this table starts in the image's working directory.
DEFAULT_USER: Final = "user"
_HOMES: Final = {"user": "/home/user", "root": "/root"}
#: Bytes of a ``StreamInput`` body held at once: one envelope's bound (a larger one is
#: refused; whole envelopes are forwarded as they come).
_MAX_ENVELOPE: Final = 1024 * 1024
_SIGNALS: Final = {"SIGNAL_SIGTERM": signal.SIGTERM, "SIGNAL_SIGKILL": signal.SIGKILL,
                   15: signal.SIGTERM, 9: signal.SIGKILL}
#: Streams' followers left to finish in the background (kept referenced until done).
_LEFT: set[asyncio.Task[None]] = set()


#: envd's RPC services served under the mount (the process one here, the filesystem one
#: in :mod:`.filesystem`), and its file transfers' path (:mod:`.files`).
_SERVICES: Final = (_SERVICE, "/filesystem.Filesystem/")
_FILES: Final = "/files"


def is_data_plane(path: str, prefix: str) -> bool:
    """Whether ``path`` is envd's or the code interpreter's (token-authenticated) rather
    than the control plane's: under ``prefix``, or ``/files`` at the root, where the SDKs
    send signed file URLs."""
    if path == _FILES:
        return True
    rest = path[len(prefix):] if path.startswith(prefix + "/") else None
    return rest is not None and (rest in ("/health", _FILES) or rest.startswith(_SERVICES)
                                 or interpreter.is_interpreter_path(rest))


class TokenAuth:
    """Authentication for envd's paths (an :data:`corral.server.auth.Alternative`): the
    sandbox's ``X-Access-Token``, compared in constant time (the code interpreter's: see
    :func:`.interpreter.refusal`), or on ``/files`` a URL signature made with it
    (:func:`.signing.signed_by`; envd lets those through without the token). The caller is
    the sandbox's tenant; the rate limits key on the sandbox."""

    def __init__(self, prefix: str, tokens: Tokens, sandboxes: SandboxService) -> None:
        self.prefix = prefix
        self.tokens = tokens
        self.sandboxes = sandboxes

    async def __call__(self, scope: Scope) -> KeyRef | str | None:
        if not is_data_plane(scope["path"], self.prefix):
            return None
        headers = Headers(scope=scope)
        sandbox_id = headers.get("e2b-sandbox-id", "")
        token = headers.get("x-access-token", "")
        if scope["path"].endswith(_FILES) and not token:
            return self._signed(scope, sandbox_id)
        if scope["path"] == _FILES:
            return "at the root, /files takes signed URLs only; send the rest under " + self.prefix
        if not sandbox_id or len(sandbox_id) > _MAX_ID:
            return ("no E2b-Sandbox-Id header: envd calls name their sandbox (set "
                    "E2B_SANDBOX_URL and use the sandbox object the SDK returned)")
        if interpreter.is_interpreter_path(scope["path"][len(self.prefix):]):
            refused = interpreter.refusal(headers, self.tokens, sandbox_id)
            if refused is not None:
                return refused
        elif not token:
            return ("no X-Access-Token header: envd calls carry the sandbox's "
                    "envdAccessToken from the create or connect answer")
        elif not hmac.compare_digest(self.tokens.envd(sandbox_id).encode(),
                                     token.encode("utf-8", "replace")):
            return (f"the X-Access-Token is not sandbox {sandbox_id}'s; connect to the "
                    "sandbox again for its token")
        scope[SANDBOX_SCOPE] = sandbox_id  # for the access log and the audit trail
        return KeyRef(id=f"e2b-sandbox:{sandbox_id}",
                      tenant=self.sandboxes.owner(sandbox_id) or "")

    def _signed(self, scope: Scope, sandbox_id: str) -> KeyRef | str:
        """A signed file URL's sandbox: the one it names, else the live one whose token
        made the signature (at most MAX_SIGNED_SCAN tried)."""
        query = QueryParams(scope.get("query_string", b""))
        if "signature" not in query:
            return ("no X-Access-Token header or signature: envd's /files takes the "
                    "sandbox's envdAccessToken or a signed URL (download_url, upload_url)")
        if sandbox_id:
            candidates: Iterable[str] = [sandbox_id[:_MAX_ID]]
        else:
            live = self.sandboxes.live_ids()
            if len(live) > signing.MAX_SIGNED_SCAN:
                return (f"more than {signing.MAX_SIGNED_SCAN} sandboxes are live: a signed URL "
                        "must name its sandbox (E2b-Sandbox-Id header)")
            candidates = sorted(live)
        try:
            found = signing.signed_by(query, scope.get("method", "GET"), candidates,
                                    self.tokens.envd)
        except InvalidArgumentError as exc:
            return exc.message
        scope[SANDBOX_SCOPE] = found
        scope[signing.SIGNED_SCOPE] = True
        return KeyRef(id=f"e2b-sandbox:{found}", tenant=self.sandboxes.owner(found) or "")


@router.get("/health", status_code=204)
async def health(request: Request) -> Response:
    """204 while the sandbox is live (paused counts: any call resumes it), else 502."""
    if sandbox_of(request) is None:
        return not_found(request)
    return Response(status_code=204)


async def process(method: str, request: Request) -> Response:
    """One call of envd's process service; errors are Connect's."""
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    commands: CommandService = request.app.state.commands
    call = _Call(commands, found[0], found[1], request.headers)
    # StreamInput's body is read as it comes (a client stream); every other one whole.
    body: bytes | AsyncIterator[bytes] = (
        request.stream() if method == "StreamInput" else await request.body())
    try:
        if isinstance(body, bytes) and method in ("Start", "Connect"):
            return await call.stream(method, connect.read_single(body))
        if not isinstance(body, bytes):
            return await call.stream_input(body)
        handler = _UNARY.get(method)
        if handler is None:
            raise ConnectError("unimplemented", f"process.Process/{method} is not served "
                               "by Corral's envd")
        return JSONResponse(await handler(call, connect.read_unary(body)))
    except ConnectError as exc:
        return exc.response()
    except SandboxError as exc:
        return ConnectError.of(exc).response()


class _Call:
    """One request's view of the process service: the tenant's sandbox and its headers."""

    def __init__(self, commands: CommandService, tenant: str, sandbox_id: str,
                 headers: Headers) -> None:
        self.commands = commands
        self.tenant = tenant
        self.sandbox_id = sandbox_id
        self.headers = headers

    async def stream(self, method: str, message: dict[str, Any]) -> Response:
        deadline = connect.timeout_ms(self.headers.get("connect-timeout-ms"))
        left: Callable[[], None] | None
        if method == "Start":
            request = self._start_request(message, deadline)
            events, left = await self.commands.start_detached(
                self.tenant, self.sandbox_id, request)
            bound = None  # the command's own timeout kills it (and ends the stream)
            pty = request.pty is not None
        else:
            found = await self._process(_pid(message))
            events = await self.commands.follow(self.tenant, self.sandbox_id, found.id)
            bound, left, pty = deadline, None, found.pty
        first = await anext(events)
        if not isinstance(first, corral.StartedEvent):
            await events.aclose()
            raise ConnectError("internal", "the command did not report its start")
        return StreamingResponse(
            _frames(first.pid, events, self._keepalive(), bound, left, pty),
            media_type=connect.STREAM_TYPE)

    def _keepalive(self) -> float:
        return keepalive_interval(self.headers)

    def _start_request(self, message: dict[str, Any], deadline: float | None
                       ) -> corral.CommandRequest:
        pty = _pty_size(message) if message.get("pty") is not None else None
        config = message.get("process")
        if not isinstance(config, dict) or not isinstance(config.get("cmd"), str):
            raise ConnectError("invalid_argument", "process.cmd (a string) is required")
        args = config.get("args") or []
        envs = config.get("envs") or {}
        cwd = config.get("cwd")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConnectError("invalid_argument", "process.args must be a list of strings")
        if not isinstance(envs, dict):
            raise ConnectError("invalid_argument", "process.envs must be an object")
        timeout = (None if deadline is None
                   else min(max(deadline, _TIMEOUT_RANGE[0]), _TIMEOUT_RANGE[1]))
        user = _basic_user(self.headers) or DEFAULT_USER
        if cwd is None:
            cwd = _HOMES.get(user)
        try:
            return corral.CommandRequest.model_validate({
                "cmd": [config["cmd"], *args], "env": envs, "cwd": cwd,
                "user": user, "timeout": timeout,
                # Absent (older clients) means a pipe, as envd does; false means none.
                "stdin_open": message.get("stdin") is not False, "background": True,
                "pty": pty})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                                 for e in exc.errors()[:10])
            raise ConnectError("invalid_argument", f"invalid process: {problems}") from None

    async def _command_id(self, pid: int) -> int:
        return (await self._process(pid)).id

    async def _process(self, pid: int) -> corral.ProcessInfo:
        listed = await self.commands.list(self.tenant, self.sandbox_id)
        for found in listed.processes:
            if found.pid == pid:
                return found
        raise ConnectError("not_found", f"no running process with pid {pid} in sandbox "
                           f"{self.sandbox_id}")

    async def list(self, message: dict[str, Any]) -> dict[str, Any]:
        listed = await self.commands.list(self.tenant, self.sandbox_id)
        return {"processes": [
            {"config": {"cmd": p.argv[0] if p.argv else "", "args": p.argv[1:], "envs": {}},
             "pid": p.pid} for p in listed.processes]}

    async def send_signal(self, message: dict[str, Any]) -> dict[str, Any]:
        signum = _SIGNALS.get(message.get("signal", ""))
        if signum is None:
            raise ConnectError("invalid_argument", "signal must be SIGNAL_SIGTERM or "
                               "SIGNAL_SIGKILL")
        command_id = await self._command_id(_pid(message))
        await self.commands.signal(self.tenant, self.sandbox_id, command_id, int(signum))
        return {}

    async def send_input(self, message: dict[str, Any]) -> dict[str, Any]:
        data = _input(message.get("input"))
        command_id = await self._command_id(_pid(message))
        await self.commands.send_stdin(self.tenant, self.sandbox_id, command_id, data,
                                       eof=False)
        return {}

    async def update(self, message: dict[str, Any]) -> dict[str, Any]:
        """A PTY's new size (``pty.size``); nothing else of a process can change."""
        if message.get("pty") is None:
            return {}  # envd changes nothing either
        size = _pty_size(message)
        command_id = await self._command_id(_pid(message))
        await self.commands.resize(self.tenant, self.sandbox_id, command_id,
                                   corral.PtySize(**size))
        return {}

    async def stream_input(self, body: AsyncIterator[bytes]) -> Response:
        """A client stream: ``start`` (the process), then ``data`` (inputs, forwarded in
        order) and ``keepalive`` messages; answered once the client ends its stream.
        Corral's body limit reads the stream whole before this sees it (bounded in size
        and time as every request body), so the inputs go in once it has ended."""
        command_id: int | None = None
        error: ConnectError | None = None
        try:
            async for flags, message in _envelopes(body):
                if flags & connect.END_STREAM:
                    break
                if "keepalive" in message:
                    continue
                if command_id is None:
                    start = message.get("start")
                    if not isinstance(start, dict):
                        raise ConnectError("invalid_argument", "the first message must be "
                                           "start (with process.pid)")
                    command_id = await self._command_id(_pid(start))
                    continue
                given = message.get("data")
                if not isinstance(given, dict):
                    raise ConnectError("invalid_argument", "after start, messages are data "
                                       "(input.stdin or input.pty) or keepalive")
                await self.commands.send_stdin(self.tenant, self.sandbox_id, command_id,
                                               _input(given.get("input")), eof=False)
        except ConnectError as exc:
            error = exc
        except SandboxError as exc:
            error = ConnectError.of(exc)
        # A client stream's answer is its one message (the empty StreamInputResponse), then
        # the end; or the end with the error alone.
        answer = b"" if error is not None else connect.envelope({})
        return Response(answer + connect.end_of_stream(error), media_type=connect.STREAM_TYPE)

    async def close_stdin(self, message: dict[str, Any]) -> dict[str, Any]:
        command_id = await self._command_id(_pid(message))
        await self.commands.send_stdin(self.tenant, self.sandbox_id, command_id, b"",
                                       eof=True)
        return {}


_UNARY: Final[dict[str, Callable[[_Call, dict[str, Any]], Awaitable[dict[str, Any]]]]] = {
    "List": _Call.list, "SendSignal": _Call.send_signal, "SendInput": _Call.send_input,
    "CloseStdin": _Call.close_stdin, "Update": _Call.update,
}


#: The audited process calls (action names as Corral's own command routes'); the paths
#: are the sub-app's, unprefixed.
ACTIONS: Final = {"Start": "command.run", "SendInput": "command.stdin",
                  "StreamInput": "command.stdin", "CloseStdin": "command.stdin",
                  "SendSignal": "command.signal"}


def _route(method: str) -> Callable[[Request], Awaitable[Response]]:
    async def call(request: Request) -> Response:
        return await process(method, request)
    call.__name__ = f"process_{method}"
    call.__doc__ = f"process.Process/{method}"
    return call


# One route per method served, so that each has its own template (metrics, the audit
# trail); any other method reaches the last, which answers Connect's unimplemented.
for _method in ("Start", "Connect", "StreamInput", *_UNARY):
    router.add_api_route(_SERVICE + _method, _route(_method), methods=["POST"])


@router.post(_SERVICE + "{method}")
async def other_method(method: str, request: Request) -> Response:
    """A method not served (unknown ones): ``unimplemented``."""
    return await process(method, request)


def keepalive_interval(headers: Headers) -> float:
    """Seconds of silence after which a stream carries a keepalive: the client's
    ``Keepalive-Ping-Interval`` within bounds, else the default (also for ``nan``/``inf``,
    which would compare false with both bounds)."""
    raw = headers.get("keepalive-ping-interval", "")
    try:
        seconds = float(raw) if raw else _KEEPALIVE
    except ValueError:
        seconds = _KEEPALIVE
    if not math.isfinite(seconds):
        seconds = _KEEPALIVE
    return min(max(seconds, _KEEPALIVE_RANGE[0]), _KEEPALIVE_RANGE[1])


def _pid(message: dict[str, Any]) -> int:
    selector = message.get("process")
    pid = selector.get("pid") if isinstance(selector, dict) else None
    if isinstance(pid, str) and pid.isdigit():
        pid = int(pid)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ConnectError("invalid_argument", "process.pid (a positive integer) is "
                           "required; tags are not supported")
    return pid


def _pty_size(message: dict[str, Any]) -> dict[str, int]:
    """``pty.size`` of a Start or Update as Corral's ``{"cols", "rows"}`` (1 to
    :data:`~corral.api.agent_protocol.MAX_PTY_SIZE` each)."""
    pty = message.get("pty")
    size = pty.get("size") if isinstance(pty, dict) else None
    found: dict[str, int] = {}
    for key in ("cols", "rows"):
        value = size.get(key) if isinstance(size, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PTY_SIZE:
            found[key] = value
    if len(found) != 2:
        raise ConnectError("invalid_argument", f"pty.size.cols and pty.size.rows must be "
                           f"whole numbers from 1 to {MAX_PTY_SIZE}")
    return found


def _input(given: object) -> bytes:
    """A ``ProcessInput``'s bytes: exactly one of ``stdin`` and ``pty``, base64."""
    kinds = [k for k in ("stdin", "pty") if isinstance(given, dict) and k in given]
    if len(kinds) != 1 or not isinstance(given, dict):
        raise ConnectError("invalid_argument", "input must hold exactly one of stdin and "
                           "pty (base64)")
    try:
        return base64.b64decode(given[kinds[0]] or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ConnectError("invalid_argument", f"input.{kinds[0]} is not base64") from None


async def _envelopes(body: AsyncIterator[bytes]
                     ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """The envelopes of a streamed request body, each as soon as it is whole; at most
    :data:`_MAX_ENVELOPE` bytes held."""
    held = b""
    async for chunk in body:
        held += chunk
        while len(held) >= 5:
            length = int.from_bytes(held[1:5], "big")
            if length > _MAX_ENVELOPE:
                raise ConnectError("resource_exhausted", f"an input envelope of {length} "
                                   f"bytes is over the {_MAX_ENVELOPE}-byte bound")
            if len(held) < 5 + length:
                break
            (found,) = connect.read_envelopes(held[:5 + length])
            held = held[5 + length:]
            yield found
    if held:
        connect.read_envelopes(held)  # names what is wrong with the rest
        raise ConnectError("invalid_argument", "the request body ends inside an envelope")


def _basic_user(headers: Headers) -> str | None:
    """The user of ``Authorization: Basic base64("<user>:")``, the SDKs' ``user=``."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        raise ConnectError("invalid_argument", "Authorization: Basic must be "
                           "base64('<user>:')") from None
    return user or None


def _end(event: corral.ExitEvent) -> dict[str, Any]:
    """Corral's exit as envd's end event: a signal is exit code -1, not ``exited``."""
    if event.signal is not None:
        try:
            name = signal.Signals(event.signal).name.removeprefix("SIG").lower()
        except ValueError:
            name = str(event.signal)
        end: dict[str, Any] = {"exitCode": -1, "exited": False,
                               "status": f"signal: {'killed' if name == 'kill' else name}"}
    else:
        end = {"exitCode": event.exit_code, "exited": True,
               "status": f"exit status {event.exit_code}"}
    if end["exitCode"] != 0:
        end["error"] = end["status"]
    return end


_KEEPALIVE_MARK: Final = object()
_DEADLINE_MARK: Final = object()


async def _frames(pid: int, events: AsyncIterator[Any], keepalive: float,
                  deadline: float | None, left: Callable[[], None] | None, pty: bool = False
                  ) -> AsyncIterator[bytes]:
    """The stream's envelopes: start, data/keepalive…, end, then end-of-stream (with
    ``deadline_exceeded`` when the deadline or the command's timeout ran out). A PTY's
    output is ``data.pty``."""
    yield connect.envelope({"event": {"start": {"pid": pid}}})
    async for event in _paced(events, keepalive, deadline, left):
        if event is _KEEPALIVE_MARK:
            yield connect.envelope({"event": {"keepalive": {}}})
        elif event is _DEADLINE_MARK:
            yield connect.end_of_stream(ConnectError(
                "deadline_exceeded", "the stream's Connect-Timeout-Ms ran out; the process "
                "runs on (commands.connect follows it again)"))
            return
        elif isinstance(event, corral.OutputEvent):
            kind = "pty" if pty else event.type
            yield connect.envelope({"event": {"data": {kind: event.data}}})
        elif isinstance(event, corral.ExitEvent):
            yield connect.envelope({"event": {"end": _end(event)}})
            if event.reason == "timeout":
                yield connect.end_of_stream(ConnectError(
                    "deadline_exceeded", "the command ran past its Connect-Timeout-Ms and "
                    "was killed; pass a longer timeout (or timeout=0 for none)"))
                return
        elif isinstance(event, corral.ErrorEvent):
            yield connect.end_of_stream(connect.from_corral_code(event.error.code,
                                                                  event.error.message))
            return
    yield connect.end_of_stream()


async def _paced(events: AsyncIterator[Any], keepalive: float, deadline: float | None,
                 left: Callable[[], None] | None) -> AsyncIterator[Any]:
    """``events`` with :data:`_KEEPALIVE_MARK` after each ``keepalive`` seconds of
    silence, and :data:`_DEADLINE_MARK` (then nothing) once ``deadline`` seconds pass.

    A reader that leaves early closes ``events``: at once (the read under way cancelled)
    when ``left`` is None; else ``left`` is called and the events are closed after the
    read under way completes, so that a command Start left running keeps its output
    stream intact for the background drain or a later Connect."""
    ends = None if deadline is None else time.monotonic() + deadline
    pending: asyncio.Future[Any] | None = None
    finished = False
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            wait = keepalive if ends is None else min(keepalive, ends - time.monotonic())
            done, _ = await asyncio.wait({pending}, timeout=max(wait, 0))
            if not done:
                if ends is not None and time.monotonic() >= ends:
                    yield _DEADLINE_MARK
                    return
                yield _KEEPALIVE_MARK
                continue
            ready, pending = pending, None
            try:
                item = ready.result()
            except StopAsyncIteration:
                finished = True
                return
            yield item
    finally:
        if not finished:
            if left is not None:
                left()
            task = asyncio.get_running_loop().create_task(
                _close(events, pending, cancel=left is None))
            _LEFT.add(task)
            task.add_done_callback(_LEFT.discard)


async def _close(events: AsyncIterator[Any], pending: asyncio.Future[Any] | None,
                 cancel: bool) -> None:
    if pending is not None:
        if cancel:
            pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
