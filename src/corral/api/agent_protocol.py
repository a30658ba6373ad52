"""The framed protocol between the node and the in-sandbox agent. Pure functions, stdlib only.

The agent's side is Rust (``agent/src/proto.rs``, ``agent/src/channel.rs``); its constants
must equal these (``tests/unit/agent/test_native.py`` checks).

The agent's stdin and stdout are the channel: no network exists inside the sandbox, and a
pipe needs none. Each frame is::

    +----------------+----------------+------------------+-------------------+
    | u32 header len | u32 data len   | header: JSON obj | data: raw bytes   |
    +----------------+----------------+------------------+-------------------+

The header always carries ``id`` (an integer the node picked for the request this frame
belongs to). Node -> agent headers carry ``op``; agent -> node headers carry ``ev``.
Bulk bytes (output, file contents, stdin) travel in ``data`` so nothing is base64-encoded.

Both directions are bounded by :data:`MAX_HEADER` and :data:`MAX_DATA`; a peer that breaks a
bound or sends a header that is not a JSON object is speaking out of protocol and the
channel is closed. The node treats everything the agent says as untrusted: code running in
the sandbox can reach the agent's pipes.

Streams (command output, file downloads) use credit-based flow control: the sender may
have at most :data:`STREAM_WINDOW` unacknowledged data frames in flight per stream; the
receiver sends ``{"op": "credit", "target": id, "n": k}`` as it consumes them.

Tunnels (:data:`OP_CONNECT`, behind exposed ports) carry TCP to a port on the sandbox's own
loopback: the request names a port only, and the agent connects to 127.0.0.1, else ::1,
never anywhere else. After ``ok``, the app's bytes come as ``data`` frames under credits,
then ``end`` at its EOF; the node's go as ``chunk`` frames (``"eof": true`` half-closes),
each acknowledged by an ``ack`` once written, at most ``STREAM_WINDOW // 2`` unacknowledged.
The two directions are independent; ``cancel`` closes a tunnel at once, and an ``error`` is
a tunnel's last frame. ``cancel`` of a running command's id stops its output (dropped from
then on; the command runs on, and :data:`OP_ATTACH` sends it again).

Directory watches (:data:`OP_WATCH`, ``path`` and ``recursive``): ``ok`` once the
directory (and with ``recursive`` every directory under it) is watched, then ``data``
frames under credits, each a JSON array of :data:`WATCH_EVENT_TYPES` events
``{"type", "name", "dir"}`` with ``name`` relative to the watched directory, until
``cancel`` or the watched directory's removal or move (then ``end``). A directory made
under a recursive watch is watched too, and what it holds on arrival is reported as
``create``. Bounds: :data:`MAX_WATCHES` per sandbox, :data:`MAX_WATCH_DIRS` per watch (a
larger tree is refused), :data:`MAX_WATCH_EVENTS` waiting for credits; events lost past a
bound (or the kernel's queue) leave one ``overflow`` event where they were.

Sessions and pausing. A session starts with the agent's ``hello`` (``next_id``: the first
request id the node may use; ids below it belong to commands started before). The agent
greets unasked when it starts and when a node connects to its socket; the node may also
ask with :data:`OP_HELLO`, which starts a new session on the same channel. A new session
follows nothing of the old one: output streams, transfers and tunnels are dropped (commands
run on), and :data:`OP_ATTACH` sends a running command's output under its own id again.
:data:`OP_PAUSE` is answered ``ok`` once every request before it was read; then the agent
sends nothing, closes a socket channel, stops the clock its timeouts run on, and waits with
no deadline for the next session: an :data:`OP_HELLO` on its stdin, or a node on its socket.
The node writes nothing after a pause (a host pipe's bytes are not in a checkpoint).
"""

from __future__ import annotations

import json
import struct
from typing import Any

PROTOCOL_VERSION = 1

HEADER = struct.Struct(">II")
#: Largest header a node request may have (argv, env and paths travel in it).
MAX_HEADER = 1024 * 1024
#: Largest header the node accepts from an agent: replies keep bulk data in ``data``.
MAX_REPLY_HEADER = 64 * 1024
MAX_DATA = 1024 * 1024
CHUNK = 64 * 1024
STREAM_WINDOW = 32
#: Directory watches at once per sandbox.
MAX_WATCHES = 64
#: Directories one recursive watch follows.
MAX_WATCH_DIRS = 4096
#: Events one watch holds while it waits for credits; past it, events are dropped.
MAX_WATCH_EVENTS = 4096
#: What a watch's events report; ``overflow`` marks where events were lost.
WATCH_EVENT_TYPES = ("create", "write", "remove", "rename", "chmod", "overflow")

# Node -> agent operations.
OP_EXEC = "exec"
OP_STDIN = "stdin"
OP_SIGNAL = "signal"
OP_CREDIT = "credit"
OP_PROCESSES = "processes"
OP_READ = "read"
OP_WRITE = "write"
OP_CHUNK = "chunk"
OP_LIST = "list"
OP_STAT = "stat"
OP_MKDIR = "mkdir"
OP_REMOVE = "remove"
OP_RENAME = "rename"
OP_EXISTS = "exists"
OP_PING = "ping"
OP_CANCEL = "cancel"
#: Open a TCP connection to a port on the sandbox's loopback (an exposed port).
OP_CONNECT = "connect"
#: Quiesce before a pause (a freeze or a checkpoint); see the module docstring.
OP_PAUSE = "pause"
#: Start a new session on this channel: answered by the agent's ``hello``.
OP_HELLO = "hello"
#: Follow a running command's output again, under its id (``target``), after a new session.
OP_ATTACH = "attach"
#: Watch a directory (inotify); events stream as ``data`` frames under credits.
OP_WATCH = "watch"

# Agent -> node events.
EV_HELLO = "hello"
EV_OK = "ok"
EV_ERROR = "error"
EV_STARTED = "started"
EV_STDOUT = "stdout"
EV_STDERR = "stderr"
EV_EXIT = "exit"
EV_DATA = "data"
EV_END = "end"
EV_ACK = "ack"

# Reasons a command's exit carries besides its status.
REASON_TIMEOUT = "timeout"
REASON_KILLED = "killed"


class ProtocolError(Exception):
    """The peer broke the framing rules; the channel must be closed."""


def encode(header: dict[str, Any], data: bytes = b"") -> bytes:
    """Serialize one frame."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"frame header of {len(head)} bytes exceeds {MAX_HEADER}")
    if len(data) > MAX_DATA:
        raise ProtocolError(f"frame data of {len(data)} bytes exceeds {MAX_DATA}")
    return HEADER.pack(len(head), len(data)) + head + data


def parse_prefix(prefix: bytes, max_header: int = MAX_HEADER) -> tuple[int, int]:
    """Read the two lengths of a frame prefix and check them against the bounds."""
    if len(prefix) != HEADER.size:
        raise ProtocolError("truncated frame prefix")
    head_len, data_len = HEADER.unpack(prefix)
    if not 2 <= head_len <= max_header:
        raise ProtocolError(f"frame header length {head_len} out of bounds")
    if data_len > MAX_DATA:
        raise ProtocolError(f"frame data length {data_len} out of bounds")
    return head_len, data_len


def parse_header(raw: bytes) -> dict[str, Any]:
    """Decode a frame header: a JSON object with an integer ``id``."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    frame_id = header.get("id")
    if not isinstance(frame_id, int) or isinstance(frame_id, bool) or frame_id < 0:
        raise ProtocolError("frame header lacks a non-negative integer id")
    return header
