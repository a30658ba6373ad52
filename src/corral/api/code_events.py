"""Gathering a cell's events into an :class:`~corral.api.models.Execution`: pure logic
shared by the node and the SDK (no I/O of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from . import models
from .errors import AgentError, error_from_code

Callback = Callable[[Any], None]


async def collect(events: AsyncIterator[models.CodeEvent], on_stdout: Callback | None = None,
                  on_stderr: Callback | None = None, on_result: Callback | None = None,
                  on_error: Callback | None = None) -> models.Execution:
    """Gather a cell's events into an :class:`~corral.api.models.Execution`, calling the
    callbacks as they come. Shared by the node and the SDK."""
    stdout: list[str] = []
    stderr: list[str] = []
    results: list[models.Result] = []
    error: models.ExecutionError | None = None
    async for event in events:
        if isinstance(event, models.CodeOutputEvent):
            (stdout if event.type == "stdout" else stderr).append(event.text)
            callback = on_stdout if event.type == "stdout" else on_stderr
            if callback is not None:
                callback(event.text)
        elif isinstance(event, models.CodeResultEvent):
            results.append(event.result)
            if on_result is not None:
                on_result(event.result)
        elif isinstance(event, models.CodeErrorEvent):
            error = event.error
            if on_error is not None:
                on_error(event.error)
        elif isinstance(event, models.CodeEndEvent):
            return models.Execution(
                results=results, logs=models.Logs(stdout=stdout, stderr=stderr), error=error,
                execution_count=event.execution_count, context=event.context,
                truncated=event.truncated, duration=event.duration)
        elif isinstance(event, models.ErrorEvent):
            raise error_from_code(event.error.code, event.error.message)
    raise AgentError("the cell's events ended without its end")
