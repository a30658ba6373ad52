"""Code contexts and cells in a tenant's sandboxes (:mod:`corral.node.interpreter`).

A cell runs to its end and answers one :class:`~corral.api.models.Execution`, or streams
NDJSON :data:`~corral.api.models.CodeEvent` lines as output arrives. A streamed cell whose
client goes away is interrupted (the context keeps its state); so is a waited-on one whose
request is cancelled. Every call holds its sandbox in use (never idle) until it ends, a
streamed cell until its stream does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from corral.api import models
from corral.api.errors import SandboxError
from corral.node import NodeSandbox
from corral.api.code_events import collect
from corral.api.limits import DEFAULT_CODE_TIMEOUT

from .sandboxes import SandboxService


class CodeService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self._sandboxes = sandboxes

    async def run(self, tenant: str, sandbox_id: str,
                  request: models.RunCodeRequest) -> models.Execution:
        async with self._using(tenant, sandbox_id) as sandbox:
            return await collect(await _events(sandbox, request))

    async def stream(self, tenant: str, sandbox_id: str,
                     request: models.RunCodeRequest) -> AsyncIterator[bytes]:
        """Check the request and find its context (errors surface here), then stream."""
        return _lines(await self.events(tenant, sandbox_id, request))

    async def events(self, tenant: str, sandbox_id: str, request: models.RunCodeRequest
                     ) -> AsyncIterator[models.CodeEvent]:
        """Check the request and find its context (errors surface here), then the cell's
        events; a sandbox failing meanwhile ends them with an ``error`` event. Leaving the
        iteration early interrupts the cell."""
        async with self._using(tenant, sandbox_id) as sandbox:
            events = await _events(sandbox, request)
        return self._follow(sandbox_id, events)

    async def create_context(self, tenant: str, sandbox_id: str,
                             request: models.ContextCreate) -> models.CodeContext:
        async with self._using(tenant, sandbox_id) as sandbox:
            return await sandbox.code.create_context(request.language, cwd=request.cwd,
                                                     env=request.env)

    async def list_contexts(self, tenant: str, sandbox_id: str) -> models.ContextList:
        async with self._using(tenant, sandbox_id) as sandbox:
            return models.ContextList(contexts=await sandbox.code.list_contexts())

    async def restart_context(self, tenant: str, sandbox_id: str,
                              context_id: str) -> models.CodeContext:
        async with self._using(tenant, sandbox_id) as sandbox:
            return await sandbox.code.restart_context(context_id)

    async def interrupt(self, tenant: str, sandbox_id: str, context_id: str) -> None:
        async with self._using(tenant, sandbox_id) as sandbox:
            await sandbox.code.interrupt(context_id)

    async def delete_context(self, tenant: str, sandbox_id: str, context_id: str) -> None:
        async with self._using(tenant, sandbox_id) as sandbox:
            await sandbox.code.delete_context(context_id)

    def _using(self, tenant: str, sandbox_id: str) -> AbstractAsyncContextManager[NodeSandbox]:
        """The tenant's sandbox, in use until the block ends (a first cell, a new or
        restarted context start a kernel: seconds)."""
        return self._sandboxes.using(tenant, sandbox_id, "code")

    async def _follow(self, sandbox_id: str, events: AsyncIterator[models.CodeEvent]
                      ) -> AsyncIterator[models.CodeEvent]:
        try:
            with self._sandboxes.in_use(sandbox_id):
                async for event in events:
                    yield event
        except SandboxError as exc:
            yield models.ErrorEvent(error=models.ErrorDetail(code=exc.code.value,
                                                             message=exc.message))
        finally:
            await _close(events)


async def _lines(events: AsyncIterator[models.CodeEvent]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield event.model_dump_json(by_alias=True).encode() + b"\n"
    finally:
        await _close(events)


async def _events(sandbox: NodeSandbox, request: models.RunCodeRequest
                  ) -> AsyncIterator[models.CodeEvent]:
    timeout = DEFAULT_CODE_TIMEOUT if request.timeout is None else request.timeout
    return await sandbox.code.stream(request.code, language=request.language,
                                     context=request.context, timeout=timeout,
                                     env=request.env)


async def _close(events: AsyncIterator[models.CodeEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
