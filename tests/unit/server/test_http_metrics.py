"""HttpMetrics counts each answer before the client can have it: a scrape made after a
client saw a response always counts that response (and its error code)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from corral.server.metrics import HttpMetrics, Metrics, RouteTemplates


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _serve(app: Any, metrics: Metrics) -> list[tuple[str, float, float]]:
    """Run one GET through HttpMetrics; for each message the client gets, the request and
    error counts as they stood when it arrived."""
    seen: list[tuple[str, float, float]] = []
    wrapped = HttpMetrics(app, metrics, RouteTemplates(lambda: ["/v1/sandboxes"]))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        seen.append((message["type"],
                     _sample(metrics, "corral_http_requests_total",
                             {"route": "/v1/sandboxes", "method": "GET", "status": "429"}),
                     _sample(metrics, "corral_errors_total", {"code": "rate_limited"})))

    scope = {"type": "http", "method": "GET", "path": "/v1/sandboxes"}
    asyncio.run(wrapped(scope, receive, send))  # type: ignore[arg-type]
    return seen


def test_an_answer_is_counted_before_it_is_sent() -> None:
    metrics = Metrics(None)
    body = json.dumps({"error": {"code": "rate_limited", "message": "slow down"}}).encode()

    async def refusing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 429, "headers": []})
        await send({"type": "http.response.body", "body": body})

    assert _serve(refusing, metrics) == [("http.response.start", 1.0, 0.0),
                                         ("http.response.body", 1.0, 1.0)]


def test_an_escaping_exception_counts_as_a_500() -> None:
    metrics = Metrics(None)

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    try:
        _serve(failing, metrics)
    except RuntimeError:
        pass
    assert _sample(metrics, "corral_http_requests_total",
                   {"route": "/v1/sandboxes", "method": "GET", "status": "500"}) == 1.0
    assert _sample(metrics, "corral_errors_total", {"code": "internal"}) == 1.0


def test_without_a_node_there_are_no_command_counts() -> None:
    assert "corral_commands_total" not in Metrics(None).exposition().decode()
