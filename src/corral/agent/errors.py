"""The one exception agent handlers raise to refuse a request."""

from __future__ import annotations


class RequestError(Exception):
    """A request the agent refuses; ``code`` is a :class:`corral.api.errors.ErrorCode` value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
