"""Checks on request fields before they reach the agent: paths, env, metadata, ids."""

from __future__ import annotations

import re
from collections.abc import Mapping

from corral.api.errors import InvalidArgumentError
from corral.api.limits import (MAX_ENV_BYTES, MAX_ENV_NAME, MAX_ENV_VARS, MAX_METADATA_KEYS,
                               MAX_METADATA_VALUE, normalize_path)

_ENV_KEY = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]{{0,{MAX_ENV_NAME - 1}}}$")
_META_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")
SANDBOX_ID = re.compile(r"^sbx-[0-9a-f]{16}$")


def resolve_path(path: object, workdir: str) -> str:
    """A sandbox path, absolute and normalized; relative paths start at ``workdir``.

    The rule is :func:`corral.api.limits.normalize_path`, the agent's own, so what the agent
    would refuse (an over-long component, say) is refused here, before it reaches the sandbox.
    """
    try:
        return normalize_path(path, workdir)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


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
