"""The code interpreter's pure parts under ``/e2b``: Corral's cell events as E2B's NDJSON
lines, the requests' checks, which paths are the interpreter's and whose tokens open them."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.datastructures import Headers

from corral.api import models
from corral.api.errors import InvalidArgumentError
from corral.api.limits import MAX_ENV_VARS
from corral.server.e2b import interpreter
from corral.server.e2b.mapping import Tokens


def test_output_result_error_and_end_lines() -> None:
    lines = interpreter.e2b_lines
    assert lines(models.CodeOutputEvent(type="stderr", text="w\n"), 7) == [
        {"type": "stderr", "text": "w\n", "timestamp": 7}]
    result = models.Result.model_validate({
        "text": "t", "png": "iVBO", "json": {"a": [1]}, "is_main_result": True,
        "extra": {"application/vnd.custom+json": {"k": 1}}})
    assert lines(models.CodeResultEvent(result=result), 0) == [{
        "type": "result", "text": "t", "png": "iVBO", "json": {"a": [1]},
        "extra": {"application/vnd.custom+json": {"k": 1}}, "is_main_result": True}]
    # A format left out is absent, not null; a display is not the main result.
    assert lines(models.CodeResultEvent(result=models.Result(html="<b/>")), 0) == [
        {"type": "result", "html": "<b/>", "is_main_result": False}]
    error = models.ExecutionError(name="NameError", value="x", traceback="tb")
    assert lines(models.CodeErrorEvent(error=error), 0) == [
        {"type": "error", "name": "NameError", "value": "x", "traceback": "tb"}]
    assert lines(models.CodeEndEvent(context="default", execution_count=3), 0) == [
        {"type": "number_of_executions", "execution_count": 3}, {"type": "end_of_execution"}]
    assert lines(models.CodeEndEvent(context="default-bash"), 0) == [
        {"type": "end_of_execution"}]


def test_a_sandbox_failing_mid_cell_is_the_cells_error() -> None:
    event = models.ErrorEvent(error=models.ErrorDetail(code="sandbox_not_running",
                                                       message="it stopped"))
    [line] = interpreter.e2b_lines(event, 0)
    assert line == {"type": "error", "name": "SandboxNotRunningError", "value": "it stopped",
                    "traceback": ""}


def test_languages() -> None:
    assert interpreter.language_of(None) == "python"
    assert interpreter.language_of("Bash") == "bash"
    # The image must have their kernels: the sandbox says so if it has not.
    for name in ("javascript", "typescript", "r", "java", "R", " Java "):
        assert interpreter.language_of(name) == name.strip().lower()
    for name in ("cobol", "js", "python3", ""):
        with pytest.raises(InvalidArgumentError, match="supported languages: python, bash, "
                                                       "r, javascript, typescript, java"):
            interpreter.language_of(name)


def test_execute_requests() -> None:
    request = interpreter.run_request(interpreter.Execute(code="1", env_vars={"A": "b"}))
    assert (request.code, request.language, request.context) == ("1", None, None)
    assert request.env == {"A": "b"} and request.stream
    # No short default: the client's timeout rules, the server's bound is a backstop.
    assert request.timeout == interpreter.MAX_CELL_SECONDS == 24 * 3600
    assert interpreter.run_request(interpreter.Execute(code="", language="bash")).language \
        == "bash"
    with pytest.raises(InvalidArgumentError, match="exclusive"):
        interpreter.run_request(interpreter.Execute(code="1", language="python",
                                                    context_id="default"))
    too_many = {f"V{i}": "" for i in range(MAX_ENV_VARS + 1)}
    with pytest.raises(InvalidArgumentError, match="env_vars"):
        interpreter.run_request(interpreter.Execute(code="1", env_vars=too_many))
    with pytest.raises(InvalidArgumentError, match="cwd"):
        interpreter.context_request(interpreter.NewContext(cwd="a\0b"))
    assert interpreter.context_request(interpreter.NewContext()).language == "python"


def test_paths_and_tokens(tmp_path: Path) -> None:
    assert all(interpreter.is_interpreter_path(p) for p in
               ("/execute", "/contexts", "/contexts/ctx-1/restart"))
    assert not any(interpreter.is_interpreter_path(p) for p in
                   ("/health", "/files", "/executes", "/process.Process/Start"))
    tokens = Tokens(tmp_path / "secret")
    sid = "sbx-1"

    def refusal(**headers: str) -> str | None:
        return interpreter.refusal(Headers(headers), tokens, sid)

    assert refusal(**{"e2b-traffic-access-token": tokens.traffic(sid)}) is None
    assert refusal(**{"x-access-token": tokens.envd(sid)}) is None
    assert "no E2B-Traffic-Access-Token" in (refusal() or "")
    # Each token only in its own header, and only the sandbox's own.
    assert refusal(**{"e2b-traffic-access-token": tokens.envd(sid)}) is not None
    assert refusal(**{"x-access-token": tokens.traffic(sid)}) is not None
    assert refusal(**{"e2b-traffic-access-token": tokens.traffic("sbx-2")}) is not None
    assert tokens.traffic(sid) != tokens.envd(sid)
