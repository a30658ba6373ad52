"""``GET /metrics``: behind the key, parseable, moving with the calls, never labelled by
sandbox id or tenant."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from corral import Sandbox

from .conftest import Server, assert_error

T = TypeVar("T")


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with server.http(server.key) as http:
        response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_a_key(server: Server) -> None:
    with server.http() as http:
        assert_error(http.get("/metrics"), 401, "unauthenticated")


def test_counters_move_with_calls(server: Server) -> None:
    before = scrape(server)
    with Sandbox.create("python", timeout=300, metadata={"suite": "metrics"},
                        **server.sdk()) as sb:
        sb.commands.run("true")
        sb.commands.run("exit 7")
        sb.commands.run("echo hi", on_stdout=lambda _: None)  # streamed
        during = scrape(server)
        sandbox_id = sb.id
    with server.http(server.key) as http:
        assert_error(http.get(f"/v1/sandboxes/{sandbox_id}x"), 404, "not_found")
    after = scrape(server)

    assert value(during, "corral_sandboxes", state="running") >= 1
    assert (value(after, "corral_sandbox_create_seconds_count")
            == value(before, "corral_sandbox_create_seconds_count") + 1)
    assert (value(after, "corral_commands_total", outcome="success")
            >= value(before, "corral_commands_total", outcome="success") + 2)
    assert (value(after, "corral_commands_total", outcome="failure")
            >= value(before, "corral_commands_total", outcome="failure") + 1)
    route = {"route": "/v1/sandboxes/{sandbox_id}", "method": "GET", "status": "404"}
    assert (value(after, "corral_http_requests_total", **route)
            >= value(before, "corral_http_requests_total", **route) + 1)
    created = {"route": "/v1/sandboxes", "method": "POST", "status": "201"}
    assert (value(after, "corral_http_requests_total", **created)
            >= value(before, "corral_http_requests_total", **created) + 1)
    assert (value(after, "corral_errors_total", code="not_found")
            >= value(before, "corral_errors_total", code="not_found") + 1)

    # Tenants label only their own figures (corral_tenant_*), by the operator's name.
    labels = {v for (_, pairs) in after for (k, v) in pairs if k != "tenant"}
    assert not any(sandbox_id in v or v in ("alpha", "beta", "metrics") for v in labels)
    assert all(name.startswith("corral_tenant_") for (name, pairs) in after
               if any(k == "tenant" for k, _ in pairs))


def test_unauthenticated_and_unknown_paths_are_counted_without_their_path(
        server: Server) -> None:
    before = scrape(server)
    with server.http() as http:
        http.get("/v1/sandboxes/sbx-secretpath/files")
        http.get("/no/such/route-xyz")
    after = scrape(server)
    assert (value(after, "corral_errors_total", code="unauthenticated")
            >= value(before, "corral_errors_total", code="unauthenticated") + 2)
    unmatched = {"route": "unmatched", "method": "GET", "status": "401"}
    assert (value(after, "corral_http_requests_total", **unmatched)
            >= value(before, "corral_http_requests_total", **unmatched) + 1)
    assert not any("secretpath" in v or "route-xyz" in v
                   for (_, pairs) in after for (_, v) in pairs)


def test_tenants_figures_add_up_their_sandboxes(server: Server) -> None:
    """``corral_tenant_*``: each tenant's live sandboxes by state, and what its running ones
    use at their latest samples; another tenant's figures move apart."""
    with Sandbox.create("python", timeout=300, **server.sdk()) as a, \
            Sandbox.create("python", timeout=300, url=server.url,
                           api_key=server.other_key) as b:
        a.commands.run("head -c 2000000 /dev/urandom > /work/blob")

        def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = scrape(server)
            ok = (value(samples, "corral_tenant_memory_bytes", tenant="alpha") > 0
                  and value(samples, "corral_tenant_memory_bytes", tenant="beta") > 0
                  and value(samples, "corral_tenant_disk_bytes", tenant="alpha") >= 2000000)
            return samples if ok else None
        samples = _wait(counted)
        assert value(samples, "corral_tenant_sandboxes", tenant="alpha", state="running") >= 1
        assert value(samples, "corral_tenant_sandboxes", tenant="beta", state="running") >= 1
        assert value(samples, "corral_tenant_cpu_percent", tenant="alpha") >= 0
        assert a.id and b.id
        assert not any(a.id in v or b.id in v for (_, pairs) in samples for (_, v) in pairs)
        beta_running = value(samples, "corral_tenant_sandboxes", tenant="beta",
                             state="running")
        b.kill()
        after = _wait(lambda: (s if value(s := scrape(server), "corral_tenant_sandboxes",
                                            tenant="beta", state="running") < beta_running
                               else None))
        assert value(after, "corral_tenant_sandboxes", tenant="alpha", state="running") >= 1


def _wait(probe: Callable[[], T | None], deadline: float = 60.0) -> T:
    end = time.monotonic() + deadline
    while (found := probe()) is None:
        assert time.monotonic() < end, "the figures never got there"
        time.sleep(0.1)
    return found
