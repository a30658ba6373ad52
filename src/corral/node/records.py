"""What a node writes down about each live sandbox, so that the next node can adopt it.

One JSON file per sandbox, ``<sandbox dir>/sandbox.json``, readable by root alone (the
sandbox's environment may hold secrets). The lifecycle writes it on every transition but
the last (a stopped sandbox's directory is gone) and whenever its lifetime changes; a
restarted node reads it back to take the sandbox over (:mod:`corral.node.adoption`).
Nothing in it is trusted blindly: paths are never read from it (they follow from the
sandbox id and the node's settings), and every field is checked as a request would be.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.api.errors import InvalidArgumentError
from corral.api.resources import Resources, check_action, check_timeout

from .lifecycle import SandboxState
from .validation import SANDBOX_ID, check_env, check_metadata
from .volumes import VolumeMount, check_mounts

_STATES = frozenset(state.value for state in SandboxState)
RECORD_NAME = "sandbox.json"
RECORD_FORMAT = 1
MAX_RECORD_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class SandboxRecord:
    """A running sandbox as its node left it."""

    id: str
    image: str
    runtime: str
    resources: Resources
    env: dict[str, str]
    workdir: str
    metadata: dict[str, str]
    created_at: float
    expires_at: float
    #: What the runtime's ``create`` recorded in its handle (e.g. the uid slot).
    extra: dict[str, Any]
    #: Its lifecycle state when written (``SandboxState`` value); ``running`` and
    #: ``paused`` ones are adopted.
    state: str = "running"
    #: The user its commands run as by default (its image's); None: root.
    user: str | None = None
    #: The volumes it mounts.
    volumes: tuple[VolumeMount, ...] = ()
    #: Paused: the seconds of lifetime it had left (its clock stands still while paused).
    lifetime_left: float | None = None
    #: The lifetime it was created with; None in records from before it was kept.
    timeout: float | None = None
    #: What the end of its lifetime does: "kill" or "pause".
    on_timeout: str = "kill"
    #: Why it was last paused or resumed (``paused: by request``, ...).
    state_reason: str | None = None
    #: Paused: when (epoch seconds); kept across restarts for the paused TTL.
    paused_at: float | None = None


#: A sandbox's pause under way: the file is there from just before its runtime stops it
#: until its record says ``paused`` (a node that died in between left it).
PAUSING_MARK = "pausing"


def mark_pausing(directory: Path) -> None:
    """Note that ``directory``'s sandbox is being paused (synced: it must outlive a crash)."""
    fd = os.open(directory / PAUSING_MARK,
                 os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unmark_pausing(directory: Path) -> None:
    (directory / PAUSING_MARK).unlink(missing_ok=True)


def pausing_marked(directory: Path) -> bool:
    """Whether a pause of ``directory``'s sandbox began and its record never said how it
    ended."""
    return (directory / PAUSING_MARK).is_file()


def write(directory: Path, record: SandboxRecord) -> None:
    """Write (or replace, atomically) the record in ``directory``."""
    body = to_body(record)
    tmp = directory / f".{RECORD_NAME}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.replace(tmp, directory / RECORD_NAME)


def read(directory: Path) -> SandboxRecord:
    """The record in ``directory``; ValueError if it is missing, foreign or malformed."""
    path = directory / RECORD_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise ValueError(f"no readable record: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError("the record is too large")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValueError("malformed record: not JSON") from None
    record = parse(body)
    if record.id != directory.name or not SANDBOX_ID.match(record.id):
        raise ValueError(f"the record names another sandbox ({record.id!r:.80})")
    return record


def to_body(record: SandboxRecord) -> dict[str, Any]:
    """``record`` as the JSON object :func:`write` writes and :func:`parse` reads."""
    return {"format": RECORD_FORMAT, **dataclasses.asdict(record)}


def parse(body: object) -> SandboxRecord:
    """A record from its JSON object, every field checked; ValueError if it is foreign or
    malformed."""
    try:
        if not isinstance(body, dict) or body.get("format") != RECORD_FORMAT:
            raise ValueError("unknown record format")
        record = SandboxRecord(
            id=_text(body, "id"), image=_text(body, "image"), runtime=_text(body, "runtime"),
            resources=Resources(**_mapping(body, "resources")),
            env=check_env(_mapping(body, "env")), workdir=_text(body, "workdir"),
            metadata=check_metadata(_mapping(body, "metadata")),
            created_at=_number(body, "created_at"), expires_at=_number(body, "expires_at"),
            extra=_mapping(body, "extra"), state=_state(body), user=_user(body),
            volumes=_volumes(body), lifetime_left=_lifetime_left(body),
            timeout=None if body.get("timeout") is None else check_timeout(
                _number(body, "timeout")),
            on_timeout=check_action(body.get("on_timeout", "kill"), "on_timeout"),
            state_reason=_reason(body),
            paused_at=None if body.get("paused_at") is None else _number(body, "paused_at"))
    except (TypeError, InvalidArgumentError) as exc:
        raise ValueError(f"malformed record: {exc}") from None
    return record


def _volumes(body: dict[str, Any]) -> tuple[VolumeMount, ...]:
    raw = body.get("volumes", [])  # records written before volumes: none
    if not isinstance(raw, list) or not all(isinstance(v, dict) for v in raw):
        raise TypeError("volumes must be a list of objects")
    return check_mounts([VolumeMount(**v) for v in raw])


def _lifetime_left(body: dict[str, Any]) -> float | None:
    if body.get("lifetime_left") is None:
        return None
    left = _number(body, "lifetime_left")
    if not 0 <= left < 1e9:
        raise ValueError("malformed record: lifetime_left out of range")
    return left


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("state_reason")
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > 4096:
        raise TypeError("state_reason must be text of at most 4096 characters")
    return reason


def _user(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    if user is None:
        return None
    if not isinstance(user, str) or not 0 < len(user) <= 64:
        raise TypeError("user must be a name of 1 to 64 characters")
    return user


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise ValueError(f"malformed record: {key} is not a string")
    return value


def _state(body: dict[str, Any]) -> str:
    value = body.get("state", "running")  # records written before states were kept
    if value not in _STATES:
        raise ValueError("malformed record: unknown state")
    return str(value)


def _number(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"malformed record: {key} is not a number")
    return float(value)


def _mapping(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"malformed record: {key} is not an object")
    return value
