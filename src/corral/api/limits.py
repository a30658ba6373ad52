"""Limits every layer shares, and the one rule for sandbox paths. Standard library only.

The wire models and the node (which the server also goes through) import their bounds from
here, so a request is refused by the same numbers whichever door it comes in by. The agent
inside the sandbox (Rust, ``agent/``) keeps its own copies of the ones it applies, in
``agent/src/proto.rs``; ``tests/unit/agent/test_native.py`` checks they are equal.

Sizes are bytes of UTF-8 unless a name says otherwise; times are seconds.
"""

from __future__ import annotations

import posixpath

# -- paths -------------------------------------------------------------------------------

#: Longest path, in bytes, as given and once resolved (Linux's PATH_MAX).
MAX_PATH = 4096
#: Longest path component (file or directory name), in bytes (Linux's NAME_MAX).
NAME_MAX = 255
#: Deepest a file listing recurses.
MAX_LIST_DEPTH = 16
#: Most entries one file listing returns; past it the listing says it is truncated.
MAX_LIST_ENTRIES = 10_000
#: Seconds a streamed directory watch (``files.watch``) lasts unless it asks for less,
#: and the most it may ask for; it ends (the stream closes) when they run out.
DEFAULT_WATCH_LIFETIME = 600.0
MAX_WATCH_LIFETIME = 24 * 3600.0

# -- volumes -----------------------------------------------------------------------------

#: Smallest volume, in MiB: ext4's journal and tables need room (16 MiB leaves ~13 MiB for
#: files).
MIN_VOLUME_MIB = 16
#: Largest volume, in MiB (1 TiB).
MAX_VOLUME_MIB = 1024 * 1024
#: Most volumes one sandbox mounts.
MAX_SANDBOX_VOLUMES = 16
#: Copies one fork of a sandbox makes at most (each is a whole sandbox: memory of its own).
MAX_FORK = 16
#: A snapshot's time to live, seconds: a minute to 90 days.
SNAPSHOT_TTL_RANGE = (60.0, 90 * 24 * 3600.0)

# -- exposed ports -----------------------------------------------------------------------

#: Most connections to a sandbox's ports open through Corral at once (the agent refuses
#: one more with ``resource_exhausted``).
MAX_PORT_CONNECTIONS = 256
#: Most ports of one sandbox that may be public (reachable without a credential).
MAX_PUBLIC_PORTS = 64
#: Longest a signed port URL may stay valid, in seconds (a day).
MAX_SIGNED_URL_LIFETIME = 24 * 3600.0
#: Seconds a proxied port request may wait for the app's next bytes (its response headers,
#: the next piece of its body) before the server answers 504 or closes the stream.
PORT_READ_TIMEOUT = 300.0

# -- commands ----------------------------------------------------------------------------

#: Most arguments of a command given as an argv list.
MAX_ARGV = 4096
#: Longest shell command string, and longest single argument, in characters.
MAX_COMMAND = 128 * 1024
#: Largest stdin a command request carries inline; stream more with ``.../stdin``.
MAX_INLINE_STDIN = 512 * 1024
#: Output kept per stream of a command whose result is awaited; the rest is dropped.
MAX_CAPTURE = 16 * 1024 * 1024
#: Longest code cell, in UTF-8 bytes (the wire model counts characters, the node bytes).
MAX_CODE = 512 * 1024

# -- environment and metadata ------------------------------------------------------------

#: Most environment variables a sandbox or a command is given.
MAX_ENV_VARS = 256
#: Longest environment variable name, in characters.
MAX_ENV_NAME = 256
#: Largest environment (names and values together).
MAX_ENV_BYTES = 128 * 1024
#: Most metadata labels of a sandbox.
MAX_METADATA_KEYS = 64
#: Longest metadata label value, in characters.
MAX_METADATA_VALUE = 1024
#: Most keys of any mapping a request carries (env or metadata; each has its own bound too).
MAX_MAPPING = max(MAX_ENV_VARS, MAX_METADATA_KEYS)
#: Longest value of any mapping a request carries, in characters.
MAX_MAPPING_VALUE = MAX_ENV_BYTES

# -- times -------------------------------------------------------------------------------

#: Lifetime of a sandbox created without one.
DEFAULT_LIFETIME = 300.0
#: Timeout of a command that waits for its result when none is given.
DEFAULT_COMMAND_TIMEOUT = 60.0
#: Timeout of a code cell when none is given (the cell is interrupted, its context lives).
DEFAULT_CODE_TIMEOUT = 60.0
#: Shortest and longest lifetime, idle timeout, command or cell timeout (one week).
TIMEOUT_RANGE = (1.0, 7 * 24 * 3600.0)
#: Shortest and longest time a sandbox may stay paused before it is killed (``paused_ttl``;
#: a year). A server's own maximum (``CORRAL_PAUSED_TTL``) lies within it.
PAUSED_TTL_RANGE = (1.0, 365 * 24 * 3600.0)
#: A server's ``paused_ttl`` when its operator sets none: the default and the most a create
#: may ask for (30 days).
DEFAULT_PAUSED_TTL = 30 * 24 * 3600.0
#: What the server does to a sandbox once its idle timeout or its lifetime runs out.
LIFETIME_ACTIONS = ("kill", "pause")


def _size(text: str) -> int:
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise ValueError("path is not valid UTF-8") from None


def normalize_path(path: object, workdir: str | None = None) -> str:
    """A sandbox path made absolute and normal, or :class:`ValueError` saying why not.

    The one rule for every path a request names, applied by the wire models, the node and
    the agent alike. Refused: a non-string or empty path, a NUL byte, text that is not
    UTF-8, more than :data:`MAX_PATH` bytes as given or once resolved, and a component of
    more than :data:`NAME_MAX` bytes once normalised. A relative path starts at ``workdir``
    (refused without one). ``.``, ``..`` and repeated slashes are resolved lexically, ``..``
    at the root staying there; links are not followed (that happens inside the sandbox).
    """
    if not isinstance(path, str) or not path:
        raise ValueError("path must be a non-empty string")
    if "\0" in path:
        raise ValueError("path contains a NUL byte")
    if _size(path) > MAX_PATH:
        raise ValueError(f"path is longer than {MAX_PATH} bytes")
    if not path.startswith("/"):
        if workdir is None:
            raise ValueError(f"path {path!r:.80} is not absolute")
        path = posixpath.join(workdir, path)
    # normpath keeps a leading "//" (POSIX leaves it implementation-defined); Linux does not.
    normal = "/" + posixpath.normpath(path).lstrip("/")
    if _size(normal) > MAX_PATH:
        raise ValueError(f"path is longer than {MAX_PATH} bytes once resolved")
    if any(_size(part) > NAME_MAX for part in normal.split("/")):
        raise ValueError(f"a path component is longer than {NAME_MAX} bytes")
    return normal

# -- metrics and command history ------------------------------------------------------------
#: Sandboxes one ``GET /v1/metrics/sandboxes`` may name.
MAX_METRICS_IDS = 100
#: Samples per sandbox it may ask for; and its default.
MAX_METRICS_POINTS, DEFAULT_METRICS_POINTS = 120, 30
#: Commands a sandbox's history keeps (the newest).
HISTORY_COMMANDS = 100
#: Bytes of each stream of a command (and of its command line) its history keeps.
HISTORY_OUTPUT = 16 * 1024
