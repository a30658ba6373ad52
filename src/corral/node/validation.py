"""Checks on request fields before they reach the agent: paths, env, metadata, ids."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from corral.api.errors import InvalidArgumentError

MAX_PATH = 4096
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 128 * 1024
MAX_METADATA_KEYS = 64
MAX_METADATA_VALUE = 1024
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_META_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")
SANDBOX_ID = re.compile(r"^sbx-[0-9a-f]{16}$")


def resolve_path(path: object, workdir: str) -> str:
    """A sandbox path, absolute and normalized; relative paths start at ``workdir``."""
    if not isinstance(path, str) or not path:
        raise InvalidArgumentError("path must be a non-empty string")
    if "\0" in path:
        raise InvalidArgumentError("path contains a NUL byte")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise InvalidArgumentError(f"path is longer than {MAX_PATH} bytes")
    joined = posixpath.normpath(posixpath.join(workdir, path))
    return "/" + joined.lstrip("/")


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate environment variables: POSIX-style names, string values, bounded size."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidArgumentError("env must be a mapping of strings to strings")
    if len(env) > MAX_ENV_VARS:
        raise InvalidArgumentError(f"at most {MAX_ENV_VARS} environment variables")
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise InvalidArgumentError(f"invalid environment variable name {key!r:.80}")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgumentError(f"environment variable {key} must be a string without NUL")
        total += len(key) + len(value.encode())
    if total > MAX_ENV_BYTES:
        raise InvalidArgumentError(f"environment is larger than {MAX_ENV_BYTES} bytes")
    return dict(env)


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Validate user metadata (labels): bounded count, simple keys, short string values."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or len(metadata) > MAX_METADATA_KEYS:
        raise InvalidArgumentError(f"metadata must map at most {MAX_METADATA_KEYS} keys to strings")
    for key, value in metadata.items():
        if not isinstance(key, str) or not _META_KEY.match(key):
            raise InvalidArgumentError(f"invalid metadata key {key!r:.80}")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise InvalidArgumentError(
                f"metadata value for {key} must be a string of at most {MAX_METADATA_VALUE} chars")
    return dict(metadata)
