"""The code interpreter's data plane under the mount (port 49999 in E2B): ``POST /execute``
and ``/contexts`` (docs/research/e2b-protocol.md §6), over Corral's :class:`CodeService`.

Requests carry no API key but the sandbox's id (``E2b-Sandbox-Id``) and a token: the
``/contexts`` calls only ``E2B-Traffic-Access-Token`` (the create answer's
``trafficAccessToken``), ``/execute`` that one and ``X-Access-Token``. Either token of the
sandbox is accepted (:func:`refusal`, called by :class:`.envd.TokenAuth`).

A cell answers NDJSON as E2B's does, one object a line, each with a ``type``::

    stdout / stderr        {text, timestamp (Unix ns)}
    result                 {text?, html?, markdown?, svg?, png?, jpeg?, pdf?, latex?,
                            json?, javascript?, extra?, is_main_result}
    error                  {name, value, traceback}
    number_of_executions   {execution_count}
    end_of_execution       {}                  (the SDKs ignore it; E2B's server sends it)

Its timeout is the client's (the SDK's read timeout, or none): a client that leaves, or
whose timeout ends, closes the connection, and the cell is interrupted (the context keeps
its state). The server bounds a cell at :data:`MAX_CELL_SECONDS` all the same, and the
sandbox's own lifetime bounds everything.

Languages: ``python`` (Jupyter kernels) and ``bash`` (a persistent shell per context, as
Corral's own API runs them); ``r``, ``javascript``, ``typescript`` and ``java`` on the
Jupyter kernels of the ``code-interpreter`` image (what ``code-interpreter-v1`` starts
where it is built; a sandbox of another image refuses them with 400, naming it); any
other is refused with 400, before anything starts.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response, StreamingResponse

from corral.api import models as corral
from corral.api.errors import InvalidArgumentError, error_from_code
from corral.api.limits import MAX_CODE

from ..services.code import CodeService
from .dataplane import not_found, sandbox_of
from .mapping import Tokens

router = APIRouter()
#: The code interpreter's port, the one its calls name in ``E2b-Sandbox-Port``.
PORT: Final = 49999
#: The longest a cell runs on the server (a day): E2B leaves the bound to the client
#: (``timeout=0`` is none), so this is only the backstop for a client that never leaves.
MAX_CELL_SECONDS: Final = 24 * 3600.0
#: The languages served, each by the kernel Corral's code service runs for it.
LANGUAGES: Final = corral.CODE_LANGUAGES
NDJSON: Final = "application/x-ndjson"
_MAX_ID: Final = 64
_PATHS: Final = ("/execute", "/contexts")

#: The audited calls (actions as Corral's own code routes would name them); the paths
#: are the sub-app's, unprefixed.
ACTIONS: Final = {
    ("POST", "/execute"): "code.run",
    ("POST", "/contexts"): "code.context.create",
    ("POST", "/contexts/{context_id}/restart"): "code.context.restart",
    ("DELETE", "/contexts/{context_id}"): "code.context.delete",
}


def is_interpreter_path(rest: str) -> bool:
    """Whether ``rest`` (a path below the mount) is the code interpreter's."""
    return rest in _PATHS or rest.startswith("/contexts/")


def refusal(headers: Headers, tokens: Tokens, sandbox_id: str) -> str | None:
    """Why a code interpreter call is refused (None: its token is the sandbox's)."""
    traffic = headers.get("e2b-traffic-access-token", "")
    access = headers.get("x-access-token", "")
    if not traffic and not access:
        return ("no E2B-Traffic-Access-Token header: code interpreter calls carry the "
                "sandbox's trafficAccessToken from the create or connect answer")
    if traffic and _same(tokens.traffic(sandbox_id), traffic):
        return None
    if access and _same(tokens.envd(sandbox_id), access):
        return None
    return (f"the access token is not sandbox {sandbox_id}'s; connect to the sandbox "
            "again for its tokens")


def _same(wanted: str, given: str) -> bool:
    return hmac.compare_digest(wanted.encode(), given.encode("utf-8", "replace"))


# -- requests ------------------------------------------------------------------------------

class _Request(BaseModel):
    # Fields E2B may add later are ignored, as its own server does.
    model_config = ConfigDict(extra="ignore")


_M = TypeVar("_M", bound=BaseModel)
_Language = Annotated[str, Field(min_length=1, max_length=32)]


class Execute(_Request):
    """``POST /execute``: ``context_id`` and ``language`` are exclusive; neither is the
    default Python context."""

    code: Annotated[str, Field(max_length=MAX_CODE)]
    context_id: Annotated[str, Field(min_length=1, max_length=_MAX_ID)] | None = None
    language: _Language | None = None
    env_vars: dict[str, str] | None = None


class NewContext(_Request):
    """``POST /contexts``."""

    language: _Language | None = None
    cwd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None


def language_of(name: str | None) -> str:
    """The Corral language E2B's ``name`` asks for, or a 400 that says what exists."""
    if name is None:
        return "python"
    wanted = name.strip().lower()
    if wanted not in LANGUAGES:
        raise InvalidArgumentError(
            f"language {name!r:.40} is not supported: Corral's sandboxes have no "
            f"{name:.40} kernel; supported languages: {', '.join(LANGUAGES)} (all but "
            "python and bash in images with their kernels, as code-interpreter)")
    return wanted


def run_request(body: Execute) -> corral.RunCodeRequest:
    """Corral's streamed cell for E2B's ``/execute`` body."""
    if body.context_id is not None and body.language is not None:
        raise InvalidArgumentError("context_id and language are exclusive: a context "
                                   "already has its language; send one of them")
    language = None if body.language is None else language_of(body.language)
    return _checked(corral.RunCodeRequest, {
        "code": body.code, "language": language, "context": body.context_id,
        "timeout": MAX_CELL_SECONDS, "env_vars": body.env_vars or {}, "stream": True},
        renamed={"env_vars": "env"})


def context_request(body: NewContext) -> corral.ContextCreate:
    """Corral's new context for E2B's ``/contexts`` body (the cwd: the sandbox's working
    directory when none is given)."""
    return _checked(corral.ContextCreate, {"language": language_of(body.language),
                                           "cwd": body.cwd})


def _checked(model: type[_M], fields: dict[str, Any],
             renamed: dict[str, str] | None = None) -> _M:
    """``model`` of ``fields`` (E2B's names; ``renamed`` maps them to Corral's), or a 400
    naming E2B's fields."""
    names = renamed or {}
    try:
        return model.model_validate({names.get(k, k): v for k, v in fields.items()})
    except ValidationError as exc:
        back = {v: k for k, v in names.items()}
        problems = "; ".join(
            f"{'.'.join(back.get(str(p), str(p)) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors()[:10])
        raise InvalidArgumentError(f"invalid request: {problems}") from None


# -- answers -------------------------------------------------------------------------------

def result_line(result: corral.Result) -> dict[str, Any]:
    """A rich result as E2B's ``result`` line: each format it has, and ``extra`` (other
    MIME types, by type) when there are any."""
    line: dict[str, Any] = {"type": "result"}
    for name in ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex",
                 "javascript"):
        value = getattr(result, name)
        if value is not None:
            line[name] = value
    if result.json_data is not None:
        line["json"] = result.json_data
    if result.extra:
        line["extra"] = dict(result.extra)
    line["is_main_result"] = result.is_main_result
    return line


def e2b_lines(event: corral.CodeEvent, timestamp_ns: int) -> list[dict[str, Any]]:
    """E2B's lines for one of Corral's cell events (``timestamp_ns``: when it came)."""
    if isinstance(event, corral.CodeOutputEvent):
        return [{"type": event.type, "text": event.text, "timestamp": timestamp_ns}]
    if isinstance(event, corral.CodeResultEvent):
        return [result_line(event.result)]
    if isinstance(event, corral.CodeErrorEvent):
        return [{"type": "error", "name": event.error.name, "value": event.error.value,
                 "traceback": event.error.traceback}]
    if isinstance(event, corral.CodeEndEvent):
        count = ([] if event.execution_count is None else
                 [{"type": "number_of_executions", "execution_count": event.execution_count}])
        return [*count, {"type": "end_of_execution"}]
    # The sandbox failed mid-cell (it stopped, say): the answer has begun, so the failure
    # travels as the cell's error, which the SDKs show as ``execution.error``.
    failure = error_from_code(event.error.code, event.error.message)
    return [{"type": "error", "name": type(failure).__name__, "value": event.error.message,
             "traceback": ""}]


def context_json(context: corral.CodeContext) -> dict[str, str]:
    return {"id": context.id, "language": context.language, "cwd": context.cwd}


async def _ndjson(events: AsyncIterator[corral.CodeEvent]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            for line in e2b_lines(event, time.time_ns()):
                yield json.dumps(line, ensure_ascii=False).encode() + b"\n"
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


# -- routes --------------------------------------------------------------------------------

def _code(request: Request) -> CodeService:
    # Stateless over the sandbox service: made here rather than handed to the sub-app.
    return CodeService(request.app.state.sandboxes)


ContextId = Annotated[str, Path(max_length=_MAX_ID)]


@router.post("/execute", response_model=None)
async def execute(request: Request, body: Execute) -> Response:
    """Run a cell and stream its output as E2B's NDJSON lines."""
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    events = await _code(request).events(*found, run_request(body))
    return StreamingResponse(_ndjson(events), media_type=NDJSON,
                             headers={"Cache-Control": "no-store"})


@router.post("/contexts", response_model=None)
async def create_context(request: Request, body: NewContext) -> Response:
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    created = await _code(request).create_context(*found, context_request(body))
    return JSONResponse(context_json(created))


@router.get("/contexts", response_model=None)
async def list_contexts(request: Request) -> Response:
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    listed = await _code(request).list_contexts(*found)
    return JSONResponse([context_json(c) for c in listed.contexts])


@router.post("/contexts/{context_id}/restart", response_model=None)
async def restart_context(context_id: ContextId, request: Request) -> Response:
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    await _code(request).restart_context(*found, context_id)
    return Response(status_code=204)


@router.delete("/contexts/{context_id}", response_model=None)
async def delete_context(context_id: ContextId, request: Request) -> Response:
    found = sandbox_of(request)
    if found is None:
        return not_found(request)
    await _code(request).delete_context(*found, context_id)
    return Response(status_code=204)
