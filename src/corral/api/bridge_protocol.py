"""The protocol between the node and a sandbox's kernel bridge. Pure functions, stdlib only.

The bridge (:mod:`corral.bridge.kernel_bridge`) is an ordinary command in the sandbox, run
by the image's own ``python3`` (any version from 3.9), which loads this file by path from
the agent bundle: so it imports nothing but the standard library, and its syntax stays
3.9's. The command's stdin carries requests, its stdout events, one per line::

    +------------------------------------------+------+
    | one JSON object, UTF-8, no raw newline   | "\\n" |
    +------------------------------------------+------+

A request carries ``id`` (a positive integer the node picked) and ``op``; every event
carries the ``id`` of the request it belongs to and ``ev``. Id :data:`BRIDGE_ID` (0) is
the bridge's own: it speaks first with ``hello``, and ``fatal`` is its last word.

The requests, and what answers them (``{field}`` lists an event's fields)::

    op          fields                            answered with
    ping                                          ok
    create      ctx, language, cwd, env           ok {pid}, once the context runs code
    execute     ctx, code, timeout, max_output,   stdout/stderr {text}, result {main, data},
                env (optional: the cell's own
                variables, put back after it)     error {name, value, traceback}, then
                                                  done {execution_count, timed_out,
                                                  truncated, kernel_seconds} or died
                                                  {reason, timed_out (optional)}
    interrupt   ctx                               ok {running}
    restart     ctx                               ok {pid}
    delete      ctx                               ok

Any request may be answered ``fail`` (``code``: one of :data:`FAIL_CODES`, ``message``)
instead. :data:`EVENT_FIELDS` lists every event's fields and their types.

Bounds: a request line is at most :data:`MAX_REQUEST` bytes; an event line at most
:func:`max_event_line` of the largest ``max_output`` the node asks for. Output text
travels in events of at most :data:`TEXT_CHUNK` characters; messages and reasons are at
most :data:`MAX_MESSAGE`. The node treats everything the bridge says as untrusted (code
in the sandbox runs as root beside it): :func:`parse_event` refuses a line that breaks a
bound, is not a JSON object, names an unknown event or carries a field of the wrong type,
and the node then kills the bridge rather than trust it further.
"""

from __future__ import annotations

import json

# typing is not imported at run time: the bridge loads this module as it starts, on the
# image's interpreter, where every import adds to the first cell's wait.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeGuard

PROTOCOL_VERSION = 1

#: The id of the bridge's own events (``hello``, ``fatal``); requests count from 1.
BRIDGE_ID = 0
#: The longest request line the bridge reads (code is bounded well below this by the node).
MAX_REQUEST = 4 * 1024 * 1024
#: Characters of output text per ``stdout``/``stderr`` event; longer output is split.
TEXT_CHUNK = 256 * 1024
#: Characters of a ``fail`` message, a ``died`` reason or a ``fatal`` message.
MAX_MESSAGE = 2000
#: What an event line may carry beyond the execution's ``max_output``: its keys, the
#: smaller fields, JSON escapes of a traceback cut to fit.
EVENT_SLACK = 1024 * 1024
#: Bytes one character may take in an event line (``\\u0000`` for a control character).
_WORST_CHAR = 6

# Node -> bridge operations.
OP_PING = "ping"
OP_CREATE = "create"
OP_EXECUTE = "execute"
OP_INTERRUPT = "interrupt"
OP_RESTART = "restart"
OP_DELETE = "delete"
OPS = frozenset({OP_PING, OP_CREATE, OP_EXECUTE, OP_INTERRUPT, OP_RESTART, OP_DELETE})

# Bridge -> node events.
EV_HELLO = "hello"
EV_FATAL = "fatal"
EV_OK = "ok"
EV_FAIL = "fail"
EV_STDOUT = "stdout"
EV_STDERR = "stderr"
EV_RESULT = "result"
EV_ERROR = "error"
EV_DONE = "done"
EV_DIED = "died"
#: Events only the bridge's own id carries.
BRIDGE_EVENTS = frozenset({EV_HELLO, EV_FATAL})
#: Events that may answer an ``execute``.
EXECUTE_EVENTS = frozenset({EV_STDOUT, EV_STDERR, EV_RESULT, EV_ERROR, EV_DONE, EV_DIED,
                            EV_FAIL})
#: Never on the wire: what the node's end queues for a waiting request once the bridge has
#: ended (``reason`` says why). :func:`parse_event` refuses it from the bridge.
EV_GONE = "__gone__"

# Why a request failed (``fail``'s ``code``); the first three are Corral's error codes.
FAIL_INVALID_ARGUMENT = "invalid_argument"
FAIL_NOT_FOUND = "not_found"
FAIL_ALREADY_EXISTS = "already_exists"
FAIL_BUSY = "busy"
FAIL_KERNEL_DEAD = "kernel_dead"
FAIL_KERNEL_FAILED = "kernel_failed"
FAIL_INTERNAL = "internal"
FAIL_CODES = frozenset({FAIL_INVALID_ARGUMENT, FAIL_NOT_FOUND, FAIL_ALREADY_EXISTS,
                        FAIL_BUSY, FAIL_KERNEL_DEAD, FAIL_KERNEL_FAILED, FAIL_INTERNAL})

LANGUAGE_PYTHON = "python"
LANGUAGE_BASH = "bash"
#: Each language a Jupyter kernel runs, and the kernelspec that names it in the image
#: (Python's is ipykernel's; the others are the ``code-interpreter`` image's).
KERNELSPECS = {LANGUAGE_PYTHON: "python3", "r": "ir", "javascript": "jslab",
               "typescript": "tslab", "java": "java"}
LANGUAGES = (LANGUAGE_PYTHON, LANGUAGE_BASH, "r", "javascript", "typescript", "java")

# Field kinds of :data:`EVENT_FIELDS` (their values name them in errors).
STR = "a string"
CODE = "one of FAIL_CODES"
TEXT = f"a string of at most {TEXT_CHUNK} characters"
MESSAGE = f"a string of at most {MAX_MESSAGE} characters"
BOOL = "a boolean"
INT = "a non-negative integer"
OPTIONAL_INT = "a non-negative integer or null"
SECONDS = "a finite non-negative number"
OBJECT = "an object"

#: Each event's fields: name -> (kind, required). Other fields are refused.
EVENT_FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    EV_HELLO: {"version": (INT, True), "pid": (INT, True)},
    EV_FATAL: {"message": (MESSAGE, True)},
    EV_OK: {"pid": (INT, False), "running": (BOOL, False)},
    EV_FAIL: {"code": (CODE, True), "message": (MESSAGE, True)},
    EV_STDOUT: {"text": (TEXT, True)},
    EV_STDERR: {"text": (TEXT, True)},
    EV_RESULT: {"main": (BOOL, True), "data": (OBJECT, True)},
    EV_ERROR: {"name": (STR, True), "value": (STR, True), "traceback": (STR, True)},
    EV_DONE: {"execution_count": (OPTIONAL_INT, True), "timed_out": (BOOL, True),
              "truncated": (BOOL, True), "kernel_seconds": (SECONDS, True)},
    EV_DIED: {"reason": (MESSAGE, True), "timed_out": (BOOL, False)},
}
_ENVELOPE = ("id", "ev")
_INFINITY = float("inf")


class ProtocolError(Exception):
    """The peer broke the protocol; the bridge must be stopped."""


def max_event_line(max_output: int) -> int:
    """The longest event line a bridge may send while cells run with ``max_output``.

    Output and rich results stay within ``max_output`` bytes per execution (counted as
    JSON); one text chunk may still take :data:`TEXT_CHUNK` characters of the worst size.
    """
    return max(max_output, TEXT_CHUNK * _WORST_CHAR) + EVENT_SLACK


def encode_request(req_id: int, op: str, **fields: Any) -> bytes:
    """One request line. ASCII JSON: code with any character (lone surrogates too) keeps
    its exact text and can never hold a raw newline."""
    if not _is_int(req_id) or req_id <= BRIDGE_ID:
        raise ProtocolError(f"request id {req_id!r:.40} is not a positive integer")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r:.40}")
    line = json.dumps({"id": req_id, "op": op, **fields}, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"
    if len(line) > MAX_REQUEST:
        raise ProtocolError(f"a request of {len(line)} bytes exceeds {MAX_REQUEST}")
    return line


def parse_request(line: bytes) -> dict[str, Any]:
    """Decode a request line (the bridge's side): a JSON object with a positive integer
    ``id`` and a string ``op``. An op outside :data:`OPS` is the caller's to refuse, with
    a ``fail`` for that id."""
    if len(line) > MAX_REQUEST:
        raise ProtocolError(f"a request line over {MAX_REQUEST} bytes")
    request = _object(line, "request")
    req_id = request.get("id")
    if not _is_int(req_id) or req_id <= BRIDGE_ID:
        raise ProtocolError("a request without a positive integer id")
    if not isinstance(request.get("op"), str):
        raise ProtocolError("a request without a string op")
    return request


def encode_event(req_id: int, ev: str, **fields: Any) -> bytes:
    """One event line (the bridge's side). UTF-8, not escaped: output stays compact; a
    lone surrogate in it (undecodable output) becomes ``?``."""
    event = {"id": req_id, "ev": ev}
    event.update(fields)
    line = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return line.encode("utf-8", "replace") + b"\n"


def cut_message(message: str) -> str:
    """``message`` cut to :data:`MAX_MESSAGE` characters, for ``fail``, ``died``, ``fatal``."""
    return message[:MAX_MESSAGE]


def parse_event(line: bytes, max_line: int) -> dict[str, Any]:
    """Decode and check an event line from the bridge (untrusted).

    Returns the event: a dict with an integer ``id``, an ``ev`` of :data:`EVENT_FIELDS`
    (``hello`` and ``fatal`` only with :data:`BRIDGE_ID`, the others never) and exactly
    the fields that event may carry, each of its kind. Anything else raises
    :class:`ProtocolError`.
    """
    if len(line) > max_line:
        raise ProtocolError(f"an event line over {max_line} bytes")
    event = _object(line, "event")
    event_id, ev = event.get("id"), event.get("ev")
    if not _is_int(event_id) or event_id < 0:
        raise ProtocolError("an event without a non-negative integer id")
    if not isinstance(ev, str) or ev not in EVENT_FIELDS:
        raise ProtocolError(f"an unknown event {ev!r:.40}")
    if (event_id == BRIDGE_ID) != (ev in BRIDGE_EVENTS):
        raise ProtocolError(f"a {ev} event with id {event_id}")
    fields = EVENT_FIELDS[ev]
    for name, value in event.items():
        if name in _ENVELOPE:
            continue
        spec = fields.get(name)
        if spec is None:
            raise ProtocolError(f"a {ev} event with an unknown field {name!r:.40}")
        if not _fits(value, spec[0]):
            raise ProtocolError(f"a {ev} event whose {name} is not {spec[0]}")
    for name, (_, required) in fields.items():
        if required and name not in event:
            raise ProtocolError(f"a {ev} event without {name}")
    return event


def _object(line: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(line, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not JSON: {str(exc):.200}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _fits(value: object, kind: str) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == TEXT:
        return isinstance(value, str) and len(value) <= TEXT_CHUNK
    if kind == MESSAGE:
        return isinstance(value, str) and len(value) <= MAX_MESSAGE
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == CODE:
        return isinstance(value, str) and value in FAIL_CODES
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == OPTIONAL_INT:
        return value is None or _fits(value, INT)
    if kind == SECONDS:  # 1e999 parses as infinity
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0 <= value < _INFINITY)
    if kind == OBJECT:
        return isinstance(value, dict)
    raise ValueError(f"unknown field kind {kind!r}")
