"""The published OpenAPI document: public, valid OpenAPI 3, and true to what the server sends.

The conftest checks every server test's responses inside the server; here a client does
the same from the outside, against the document as fetched, over a representative replay
of the API (create, get, list, run, stream, files up and down, list/stat, and the errors
400/401/404/410/413), and the checker itself is shown to fail on what it must catch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from corral import Sandbox

from ._spec import Spec
from .conftest import Server, assert_error


@pytest.fixture(scope="module")
def spec(server: Server) -> Spec:
    with server.http() as http:  # no key: the document is public
        response = http.get("/openapi.json")
    assert response.status_code == 200, response.text
    return Spec(response.json())


@pytest.fixture
def checked(server: Server, spec: Spec) -> Iterator[tuple[httpx.Client, list[str]]]:
    """Tenant alpha's client; every response it gets is checked against the fetched spec."""
    problems: list[str] = []
    seen: list[str] = []

    def check(response: httpx.Response) -> None:
        response.read()
        request = response.request
        seen.append(f"{request.method} {request.url.path} {response.status_code}")
        problem = spec.check_response(request.method, request.url.path, response.status_code,
                                      response.headers.get("content-type", ""),
                                      response.content)
        if problem:
            problems.append(f"{request.method} {request.url.path}: {problem}")

    with server.http(server.key) as http:
        http.event_hooks["response"] = [check]
        yield http, problems
    assert seen, "no response was checked"


def test_the_document_is_public_and_valid_openapi_3(server: Server, spec: Spec) -> None:
    validate(spec.document)  # raises on an invalid document
    assert spec.document["openapi"].startswith("3.")
    assert spec.document == server.spec_check.spec.document  # what the conftest checks
    with server.http("crl_not-a-key") as http:
        assert http.get("/openapi.json").status_code == 200
        assert_error(http.get("/v1/sandboxes"), 401, "unauthenticated")
    with server.http() as http:
        assert_error(http.get("/metrics"), 401, "unauthenticated")


def test_every_operation_documents_the_error_shape(spec: Spec) -> None:
    for path, operations in spec.document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            if path == "/openapi.json":
                continue
            for status in ("400", "401", "413", "429", "500"):
                if status == "413" and "ports" in operation.get("tags", ()):
                    continue  # a port's bodies stream to the app, bounded by its sandbox
                schema = responses[status]["content"]["application/json"]["schema"]
                if path == "/mcp" and status == "400":  # or the MCP transport's JSON-RPC error
                    schema = schema["anyOf"][0]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
            if "{sandbox_id}" in path:
                assert {"404", "410"} <= set(responses), (method, path)
    run = spec.document["paths"]["/v1/sandboxes/{sandbox_id}/commands"]["post"]
    assert run["responses"]["200"]["content"]["application/x-ndjson"]["schema"] == {
        "$ref": "#/components/schemas/CommandEvent"}


def test_a_replay_of_the_api_matches_the_document(
        server: Server, checked: tuple[httpx.Client, list[str]]) -> None:
    http, problems = checked
    created = http.post("/v1/sandboxes", json={"image": "python", "timeout": 300,
                                               "metadata": {"suite": "openapi"}})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    base = f"/v1/sandboxes/{sid}"
    try:
        assert http.get(base).status_code == 200
        assert http.get("/v1/sandboxes", params={"metadata.suite": "openapi"}
                        ).status_code == 200
        assert http.post(f"{base}/timeout", json={"timeout": 300}).status_code == 200
        run = http.post(f"{base}/commands", json={"cmd": "echo out; echo err >&2; exit 3"})
        assert run.json()["exit_code"] == 3
        with http.stream("POST", f"{base}/commands",
                         json={"cmd": ["sh", "-c", "echo a; echo b >&2"], "stream": True}
                         ) as stream:
            types = [json.loads(line)["type"] for line in stream.iter_lines() if line]
        assert types[0] == "started" and types[-1] == "exit" and "stdout" in types
        started = http.post(f"{base}/commands", json={"cmd": ["cat"], "background": True,
                                                      "stdin_open": True})
        cid = started.json()["id"]
        assert http.get(f"{base}/commands").status_code == 200
        assert http.post(f"{base}/commands/{cid}/stdin", params={"eof": "true"},
                         content=b"x").status_code == 204
        assert http.put(f"{base}/files", params={"path": "/work/d/a.txt"},
                        content=b"hello").status_code == 200
        assert http.get(f"{base}/files", params={"path": "/work/d/a.txt"}).content == b"hello"
        for route in ("list", "stat", "exists"):
            assert http.get(f"{base}/files/{route}", params={"path": "/work/d"}
                            ).status_code == 200
        assert http.post(f"{base}/files/mkdir", json={"path": "/work/e"}).status_code == 200
        assert http.post(f"{base}/files/rename", json={"src": "/work/d/a.txt",
                                                       "dst": "/work/e/b.txt"}
                         ).status_code == 204
        assert http.delete(f"{base}/files", params={"path": "/work/e", "recursive": "true"}
                           ).status_code == 204
        # Errors.
        assert_error(http.post("/v1/sandboxes", json={"bogus": 1}), 400, "invalid_argument")
        assert_error(http.get(f"{base}/files/stat", params={"path": "/nope"}), 404,
                     "not_found")
        assert_error(http.get("/v1/sandboxes/sbx-000000000000"), 404, "not_found")
        assert_error(http.post(f"{base}/commands", content=b"{" + b" " * (2 << 20) + b"}",
                               headers={"Content-Type": "application/json"}),
                     413, "request_too_large")
        assert_error(http.get("/v1/sandboxes", headers={"Authorization": "Bearer crl_x"}),
                     401, "unauthenticated")
        assert http.get("/metrics").status_code == 200
    finally:
        assert http.delete(base).status_code == 204
    assert_error(http.post(f"{base}/commands", json={"cmd": "id"}), 410,
                 "sandbox_not_running")
    assert not problems, "\n".join(problems)


def _error(code: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": "m"}}).encode()


@pytest.mark.parametrize(("method", "path", "status", "kind", "body", "wrong"), [
    ("POST", "/v1/sandboxes", 422, "application/json", _error("x"), "not documented"),
    ("GET", "/v1/sandboxes", 200, "application/json", b'{"sandboxes": 3}', "sandboxes"),
    ("GET", "/v1/sandboxes/sbx-1", 404, "application/json", b'{"detail": "no"}', "detail"),
    ("GET", "/v1/sandboxes/sbx-1", 404, "text/plain", b"Not Found", "media type"),
    ("POST", "/v1/sandboxes/sbx-1/commands", 200, "application/x-ndjson",
     b'{"type": "started", "id": 1, "pid": 2}\n{"type": "bogus"}\n', "line 2"),
    ("DELETE", "/v1/sandboxes/sbx-1", 204, "application/json", b"{}", "undocumented body"),
    ("GET", "/v2/elsewhere", 200, "application/json", b"{}", "lacks"),
])
def test_the_checker_catches_what_strays(spec: Spec, method: str, path: str, status: int,
                                         kind: str, body: bytes, wrong: str) -> None:
    problem = spec.check_response(method, path, status, kind, body)
    assert problem is not None and wrong in problem, problem


def test_the_checker_passes_what_is_documented(spec: Spec, default_sandbox: Sandbox) -> None:
    good: list[tuple[str, str, int, str, Any]] = [
        ("GET", f"/v1/sandboxes/{default_sandbox.id}", 200, "application/json",
         default_sandbox.info.model_dump_json().encode()),
        ("GET", "/v1/sandboxes/sbx-1", 404, "application/json", _error("not_found")),
        ("DELETE", "/v1/sandboxes/sbx-1", 204, "", b""),
    ]
    for method, path, status, kind, body in good:
        assert spec.check_response(method, path, status, kind, body) is None


def test_docs_list_every_route(spec: Spec) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    for path, operations in spec.document["paths"].items():
        for method in operations:
            assert f"| {method.upper()} | `{path}` |" in docs, (method, path)
