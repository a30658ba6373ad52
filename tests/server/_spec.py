"""Checking responses against the published OpenAPI document.

:func:`check_response` says what is wrong with one response (``None`` when nothing):
its status must be documented for the path and method, its media type documented for
that status, and a JSON body (or each NDJSON line) must validate against the documented
schema, ``$ref``s resolved in the document's components. :class:`SpecCheck` wraps the app
the test server runs, so every response any server test causes is checked, the SDK's
included.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi import FastAPI
from jsonschema import Draft202012Validator
from starlette.types import Message, Receive, Scope, Send

NDJSON = "application/x-ndjson"
#: Statuses a request to a path or method the API lacks may get: the checks that come
#: before routing (header size 400, server cap 503, authentication 401, failed
#: authentications 429), then 404 or 405.
UNROUTED = {400, 401, 404, 405, 429, 503}
_KEEP = 8 * 1024 * 1024  # enough of a body to check; downloads are not kept
_E2B = "/e2b/"
_E2B_SIGNED = "/files"
#: The web console's page, assets and session: outside the document, like the E2B API.
_CONSOLE = "/ui"
#: Hosts of a sandbox's port, or of the E2B API's host-based URLs (``api.<domain>``).
_PORT_HOST = re.compile(r"^([0-9]+-sbx-[0-9a-f]{16}|api)\.")


def _pattern(template: str, operations: dict[str, Any]) -> re.Pattern[str]:
    """A path template as a regex: a parameter is one segment, unless its schema says
    ``"format": "path"`` (a ``{name:path}`` route), which spans any number, as Starlette's
    path convertor does."""
    spanning = {p["name"] for op in operations.values() if isinstance(op, dict)
                for p in op.get("parameters", ())
                if p.get("in") == "path" and p.get("schema", {}).get("format") == "path"}
    return re.compile("^" + re.sub(r"\{([^/}]+)\}", lambda m: ".*" if m.group(1) in spanning
                                   else "[^/]+", template) + "$", re.DOTALL)


class Spec:
    """An OpenAPI document, ready to check responses against."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._paths = [(_pattern(path, operations), path)
                       for path, operations in document["paths"].items()]
        self._validators: dict[str, Draft202012Validator] = {}

    def template(self, path: str) -> str | None:
        for pattern, template in self._paths:
            if pattern.match(path):
                return template
        return None

    def validate(self, schema: dict[str, Any], value: Any) -> str | None:
        key = json.dumps(schema, sort_keys=True)
        validator = self._validators.get(key)
        if validator is None:
            # The document's components ride along, so "#/components/..." resolves.
            root = {**schema, "components": self.document.get("components", {})}
            validator = self._validators[key] = Draft202012Validator(root)
        error = next(iter(validator.iter_errors(value)), None)
        if error is None:
            return None
        where = "/".join(map(str, error.absolute_path)) or "body"
        return f"{where}: {error.message[:300]}"

    def check_response(self, method: str, path: str, status: int, content_type: str,
                       body: bytes) -> str | None:
        """What is wrong with this response, or ``None``."""
        template = self.template(path)
        operation = (self.document["paths"][template].get(method.lower())
                     if template else None)
        if operation is None:
            if status not in UNROUTED:
                return f"{status} for a path or method the API lacks"
            return self._check_body(self._error_content(), content_type, body)
        documented = operation["responses"].get(str(status),
                                                operation["responses"].get("default"))
        if documented is None:
            return (f"status {status} is not documented for {method} {template} "
                    f"(documented: {sorted(operation['responses'])})")
        return self._check_body(documented.get("content", {}), content_type, body)

    def _error_content(self) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}

    def _check_body(self, content: dict[str, Any], content_type: str,
                    body: bytes) -> str | None:
        media = content_type.split(";")[0].strip().lower()
        if not content:
            return f"an undocumented body ({media})" if body else None
        if media not in content and "*/*" in content:
            return None  # any media type (an exposed port relays the app's own)
        if media not in content:
            return f"media type {media!r} is not documented (documented: {sorted(content)})"
        schema = content[media].get("schema")
        if not schema:
            return None
        if media == "application/json":
            try:
                value = json.loads(body)
            except ValueError as exc:
                return f"the body is not JSON: {exc}"
            return self.validate(schema, value)
        if media == NDJSON:
            complete = body[:body.rfind(b"\n") + 1]  # a cut-off stream ends mid-line
            for number, line in enumerate(complete.splitlines(), 1):
                if line.strip():
                    problem = self.validate(schema, json.loads(line))
                    if problem:
                        return f"line {number}: {problem}"
        return None


class SpecCheck:
    """ASGI wrapper: checks each response the app sends; :meth:`drain` returns problems."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.problems: list[str] = []
        self._spec: Spec | None = None

    @property
    def spec(self) -> Spec:
        if self._spec is None:
            self._spec = Spec(self.app.openapi())
        return self._spec

    def drain(self) -> list[str]:
        problems, self.problems = self.problems, []
        return problems

    def fail_if_off_spec(self) -> None:
        """Fail the running test with the responses that strayed from the document so far."""
        problems = self.drain()
        if problems:
            pytest.fail("responses that do not match the OpenAPI document:\n"
                        + "\n".join(problems[:20]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _PORT_HOST.match(
                dict(scope["headers"]).get(b"host", b"").decode("latin-1")) or (
                    scope["path"] + "/").startswith(_E2B) or scope["path"] == _E2B_SIGNED or (
                        scope["path"] + "/").startswith(_CONSOLE + "/"):
            # Host-based port traffic is the app's, on no path of the API's; the E2B
            # API's answers follow E2B's API, not this document (tests/server/test_e2b_*),
            # signed file URLs at the root included. The console's /ui is tested by
            # tests/server/test_ui_*.
            await self.app(scope, receive, send)
            return
        status = 0
        content_type = ""
        body = bytearray()

        async def capturing(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        content_type = value.decode("latin-1")
            elif message["type"] == "http.response.body" and len(body) < _KEEP:
                body.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, capturing)
        if not status:
            return
        if content_type.startswith("application/octet-stream"):
            body.clear()  # a download: its bytes are the file's, there is no schema
            kept = b""
        else:
            kept = bytes(body)
        problem = self.spec.check_response(scope["method"], scope["path"], status,
                                           content_type, kept)
        if problem:
            self.problems.append(f"{scope['method']} {scope['path']} -> {status}: {problem}")
