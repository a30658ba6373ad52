"""The published OpenAPI document, ``GET /openapi.json``: the one path needing no key.

FastAPI derives paths, parameters and JSON bodies from the routes and wire models; this
module adds what it cannot know: the one error shape on every status each operation can
answer (FastAPI's 422 never happens here: validation failures are 400), the NDJSON events
of a streamed command, raw byte bodies, and how to authenticate.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter
from starlette.types import Receive, Scope, Send

from corral.api import models
from corral.api.errors import ErrorCode, http_status

from .auth import Authenticate

SPEC_PATH: Final = "/openapi.json"
PORT_PATH: Final = "/v1/sandboxes/{sandbox_id}/ports/{port}/{path}"
NDJSON: Final = "application/x-ndjson"
_REF = "#/components/schemas/{model}"

_MEANING: Final = {
    ErrorCode.INVALID_ARGUMENT: "a malformed or out-of-range request (never 422)",
    ErrorCode.UNAUTHENTICATED: "no API key, or an unknown or revoked one",
    ErrorCode.PERMISSION_DENIED: "the operation is not allowed on that path",
    ErrorCode.NOT_FOUND: "no such sandbox (or not yours), command or file",
    ErrorCode.SANDBOX_TIMEOUT: "the sandbox's lifetime ended during the call",
    ErrorCode.ALREADY_EXISTS: "the thing to create is already there",
    ErrorCode.SANDBOX_NOT_RUNNING: "the sandbox has stopped; the message says why",
    ErrorCode.REQUEST_TOO_LARGE: "the request body is over the limit (1 MiB by default)",
    ErrorCode.RESOURCE_EXHAUSTED: "a limit was reached (sandboxes, memory, disk)",
    ErrorCode.RATE_LIMITED: "too many requests with this key (or failed authentications from "
                            "this address); nothing was done; `Retry-After` says when to retry",
    ErrorCode.UNAVAILABLE: "the server is at its limit of requests or connections; nothing "
                           "was done; `Retry-After` says when to retry",
    ErrorCode.INTERNAL: "a bug; the message carries a reference to the server's log",
    ErrorCode.AGENT_ERROR: "the agent inside the sandbox failed",
    ErrorCode.PORT_UNAVAILABLE: "nothing in the sandbox answers on that port (nothing "
                                "listens, or the app closed, reset or timed out); the "
                                "message says which",
    ErrorCode.RUNTIME_UNAVAILABLE: "the runtime asked for does not work on this host",
    ErrorCode.COMMAND_TIMEOUT: "a command ran past its timeout",
    ErrorCode.BUILD_FAILED: "a step of an image build failed; the message names it and "
                            "quotes its output and exit status",
}
#: Every operation may answer these: authentication and the body bound come before the
#: route, and any call can meet a limit or a failure of the host.
_ANY: Final = (ErrorCode.INVALID_ARGUMENT, ErrorCode.UNAUTHENTICATED,
               ErrorCode.REQUEST_TOO_LARGE, ErrorCode.RESOURCE_EXHAUSTED,
               ErrorCode.RATE_LIMITED, ErrorCode.INTERNAL, ErrorCode.AGENT_ERROR,
               ErrorCode.RUNTIME_UNAVAILABLE, ErrorCode.UNAVAILABLE)
#: Statuses whose answers carry ``Retry-After``.
_RETRY: Final = {ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE}
#: And an operation on one sandbox these.
_ONE_SANDBOX: Final = (ErrorCode.NOT_FOUND, ErrorCode.SANDBOX_NOT_RUNNING,
                       ErrorCode.SANDBOX_TIMEOUT)
_BY_TAG: Final = {
    "files": (ErrorCode.PERMISSION_DENIED, ErrorCode.ALREADY_EXISTS),
    "commands": (ErrorCode.PERMISSION_DENIED, ErrorCode.COMMAND_TIMEOUT),
}


def errors(*codes: ErrorCode, why: str = "") -> dict[int | str, dict[str, Any]]:
    """Extra error responses of one route, beyond those every route documents."""
    return {http_status(code): {"model": models.ErrorBody,
                                "description": f"`{code.value}`: {why or _MEANING[code]}"}
            for code in codes}


def install(app: FastAPI) -> None:
    """Build the document once, on first use, from ``app``'s routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(title=app.title, version=app.version, routes=app.routes,
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _add_models(schemas)
    spec["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "`Authorization: Bearer <key>`; `corral keys create`"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    spec["security"] = [{"bearer": []}, {"apiKey": []}]
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            _document_errors(path, operation)
    spec["paths"][PORT_PATH] = _port_operations("port")
    # Without a path: a GET is sent on to ".../" (where relative links work).
    spec["paths"][PORT_PATH.removesuffix("/{path}")] = _port_operations("port_root")
    spec["components"]["securitySchemes"]["portToken"] = {
        "type": "apiKey", "in": "header", "name": "X-Corral-Port-Token",
        "description": "the sandbox's port token (`GET /v1/sandboxes/{id}/ports`); also "
                       "`?token=` once, which sets a cookie, or a signed URL"}
    spec["paths"][SPEC_PATH] = {"get": {
        "summary": "This document", "operationId": "openapi", "tags": ["meta"],
        "security": [],
        "responses": {"200": {"description": "The OpenAPI document",
                              "content": {"application/json": {
                                  "schema": {"type": "object"}}}}}}}
    return spec


def _port_operations(name: str) -> dict[str, Any]:
    """The exposed-port proxy, which no route declares (:mod:`corral.server.ports` answers
    it before routing). Its host-based twin, ``{port}-{id}.{domain}``, has no path of its own."""
    error = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}
    statuses = {
        ErrorCode.INVALID_ARGUMENT: "the port is not between 1 and 65535",
        ErrorCode.UNAUTHENTICATED: "the port is private and no credential (port token, "
                                   "signed URL, its cookie, the owner's API key) was valid",
        ErrorCode.NOT_FOUND: "no running sandbox with that id",
        ErrorCode.SANDBOX_NOT_RUNNING: "the sandbox stopped while the request was relayed",
        ErrorCode.RATE_LIMITED: "too many wrong credentials from this address",
        ErrorCode.PORT_UNAVAILABLE: _MEANING[ErrorCode.PORT_UNAVAILABLE],
        ErrorCode.UNAVAILABLE: _MEANING[ErrorCode.UNAVAILABLE],
        ErrorCode.INTERNAL: _MEANING[ErrorCode.INTERNAL],
    }
    responses: dict[str, Any] = {
        "default": {"description": "the app's own response, relayed as it streams",
                    "content": {"*/*": {}}},
        "303": {"description": "a `?token=` or signed-URL visit: the same URL without the "
                               "credential, with a cookie that stands for it"},
    }
    for code, meaning in statuses.items():
        responses[str(http_status(code))] = {"description": f"`{code.value}`: {meaning}",
                                             "content": error}
    parameters = [
        {"name": "sandbox_id", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "port", "in": "path", "required": True,
         "schema": {"type": "integer", "minimum": 1, "maximum": 65535}},
    ]
    if name == "port":
        parameters.append({"name": "path", "in": "path", "required": True,
                           "schema": {"type": "string", "format": "path"}})
    operation = {
        "tags": ["ports"], "parameters": parameters, "responses": responses,
        "security": [{"portToken": []}, {"bearer": []}, {"apiKey": []}, {}],
        "description": "Any request to an app listening on `port` inside the sandbox "
                       "(HTTP/1.1, streaming, SSE, WebSocket); see docs/ports.md.",
    }
    return {method: {**operation, "summary": f"{method.upper()} to an exposed port",
                     "operationId": f"{name}_{method}"}
            for method in ("get", "post", "put", "patch", "delete", "options", "head")}


def _add_models(schemas: dict[str, Any]) -> None:
    """The error shape and the NDJSON event union, which no route returns as JSON."""
    for model in (models.ErrorBody, models.CommandResult, models.CommandStarted):
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas.setdefault(model.__name__, schema)
    event = TypeAdapter(models.CommandEvent).json_schema(ref_template=_REF,
                                                         mode="serialization")
    schemas.update(event.pop("$defs", {}))
    event["description"] = ("One line of a streamed command: `started` first, then "
                            "`stdout`/`stderr` chunks (base64), then `exit` or `error`.")
    schemas["CommandEvent"] = event
    execution = models.Execution.model_json_schema(ref_template=_REF, mode="serialization")
    schemas.update(execution.pop("$defs", {}))
    schemas.setdefault("Execution", execution)
    code = TypeAdapter(models.CodeEvent).json_schema(ref_template=_REF, mode="serialization")
    schemas.update(code.pop("$defs", {}))
    code["description"] = ("One line of a streamed cell: `stdout`/`stderr` text, `result`s, "
                           "`execution_error` if it raised, then `end`; or `error`.")
    schemas["CodeEvent"] = code
    build = TypeAdapter(models.BuildEvent).json_schema(ref_template=_REF, mode="serialization")
    schemas.update(build.pop("$defs", {}))
    build["description"] = ("One line of a streamed image build: `build` (its id) first, "
                            "then `step`s and their `log` lines, then `done` or `error`.")
    schemas["BuildEvent"] = build
    watch = TypeAdapter(models.WatchStreamEvent).json_schema(ref_template=_REF,
                                                             mode="serialization")
    schemas.update(watch.pop("$defs", {}))
    watch["description"] = ("One line of a directory watch: a change (`create`, `write`, "
                            "`remove`, `rename`, `chmod`; `overflow` where events were "
                            "lost), or `error`, last.")
    schemas["WatchStreamEvent"] = watch


def _document_errors(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    codes = list(_ANY)
    if "{sandbox_id}" in path:
        codes += _ONE_SANDBOX
    for tag in operation.get("tags", ()):
        codes += _BY_TAG.get(tag, ())
    by_status: dict[int, list[ErrorCode]] = {}
    for code in sorted(set(codes), key=lambda c: (http_status(c), c.value)):
        by_status.setdefault(http_status(code), []).append(code)
    for status, shared in by_status.items():
        response = responses.setdefault(str(status), {
            "description": "; ".join(f"`{c.value}`: {_MEANING[c]}" for c in shared),
            "content": {"application/json": {"schema": {"$ref": _REF.format(
                model="ErrorBody")}}}})
        if _RETRY & set(shared):
            response.setdefault("headers", {})["Retry-After"] = {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 1}}


def templates(document: dict[str, Any]) -> list[str]:
    """The document's path templates, a parameter whose schema says ``"format": "path"``
    (a ``{name:path}`` route, spanning segments) written ``{name:path}``."""
    found = []
    for path, operations in document["paths"].items():
        spanning = {p["name"] for op in operations.values() if isinstance(op, dict)
                    for p in op.get("parameters", ())
                    if p.get("in") == "path" and p.get("schema", {}).get("format") == "path"}
        for name in spanning:
            path = path.replace(f"{{{name}}}", f"{{{name}:path}}")
        found.append(path)
    return found


class AuthenticateExceptSpec(Authenticate):
    """:class:`~corral.server.auth.Authenticate`, but ``GET /openapi.json`` needs no key:
    the document describes the API, not anyone's data."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"] == SPEC_PATH
                and scope["method"] in ("GET", "HEAD")):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
