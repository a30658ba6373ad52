"""Gathering a cell's events into an :class:`~corral.api.models.Execution`: pure logic
shared by the node and the SDK (no I/O of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from . import models
from .errors import AgentError, error_from_code

#: Gets a cell's stdout or stderr text as it arrives.
TextCallback = Callable[[str], None]
#: Gets each rich result (a display, or the cell's value) as it arrives.
ResultCallback = Callable[[models.Result], None]
#: Gets the cell's error, once it raised.
ErrorCallback = Callable[[models.ExecutionError], None]


async def collect(events: AsyncIterator[models.CodeEvent],
                  on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None,
                  on_result: ResultCallback | None = None,
                  on_error: ErrorCallback | None = None) -> models.Execution:
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
