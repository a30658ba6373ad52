"""Prometheus metrics of one server, served at ``GET /metrics`` (behind the API key).

Labels are drawn from small, fixed sets only: route templates (never the path as sent),
HTTP statuses, error codes, command outcomes and sandbox states, and tenant names (which
the operator chose, ``corral keys create --tenant``; as many series as tenants with live
sandboxes). Nothing is labelled by sandbox id, key or anything a client chose, so the
series stay few. The per-tenant figures (``corral_tenant_*``) name every tenant and its
use, so they are in the exposition an operator's key scrapes only (docs/api.md). Each app
has its own registries, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import ErrorCode, code_for_status
from corral.node import Node, SandboxState

from .services.sampler import MetricsSampler
from .services.sandboxes import SandboxService

#: Route label of a request that matched no route (its path is never a label).
UNMATCHED: Final = "unmatched"
#: How a command ended, as ``corral_commands_total{outcome}`` names it.
OUTCOMES: Final = ("success", "failure", "timeout", "killed", "error", "background")
#: Sandbox create takes tens of milliseconds to tens of seconds (a cold image).
CREATE_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)
_LIVE_STATES: Final = (SandboxState.STARTING, SandboxState.RUNNING, SandboxState.PAUSED,
                        SandboxState.STOPPING)


class _SandboxStates(Collector):
    """``corral_sandboxes{state}``: the node's live sandboxes, counted at scrape time."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        counts = dict.fromkeys(_LIVE_STATES, 0)
        for sandbox in self._node.list():
            if sandbox.state in counts:
                counts[sandbox.state] += 1
        family = GaugeMetricFamily("corral_sandboxes", "Sandboxes on this node by state",
                                   labels=["state"])
        for state, count in counts.items():
            family.add_metric([state.value], count)
        yield family


class _Pools(Collector):
    """``corral_pool_*{image,runtime}``: warm pools (operator-configured labels only)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        labels = ["image", "runtime"]
        ready = GaugeMetricFamily("corral_pool_ready", "Sandboxes ready in a warm pool",
                                  labels=labels)
        counters = {name: CounterMetricFamily(f"corral_pool_{name}", help_text, labels=labels)
                    for name, help_text in (
                        ("hits", "Creates served from a warm pool"),
                        ("misses", "Creates that matched a pool but found it empty"),
                        ("unhealthy", "Pooled sandboxes dropped by the health check"),
                        ("failed_starts", "Pool refills that failed to start"))}
        for pool in self._node.pools:
            key = [pool.spec.image, pool.runtime]
            ready.add_metric(key, pool.stats.ready)
            for name, family in counters.items():
                family.add_metric(key, getattr(pool.stats, name))
        yield ready
        yield from counters.values()


class _Egress(Collector):
    """``corral_egress_verdicts{kind,reason}``: sandboxes' resolvers' and proxies' verdicts."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "corral_egress_verdicts", "Names looked up and connected to by sandboxes, by "
            "kind (dns, connect) and verdict (allowed, or why not)", labels=["kind", "reason"])
        for (kind, reason), count in sorted(self._node.network.verdicts.items()):
            family.add_metric([kind, reason], count)
        yield family


class _Tenants(Collector):
    """``corral_tenant_*{tenant}``: each tenant's live sandboxes by state, and what its
    running ones use by their latest samples (:class:`~.services.sampler.MetricsSampler`)."""

    def __init__(self, sandboxes: SandboxService, sampler: MetricsSampler) -> None:
        self._sandboxes = sandboxes
        self._sampler = sampler

    def collect(self) -> Iterable[Metric]:
        counts: dict[tuple[str, str], int] = {}
        for tenant, sandbox in self._sandboxes.tenanted():
            if sandbox.state in _LIVE_STATES:
                key = (tenant, sandbox.state.value)
                counts[key] = counts.get(key, 0) + 1
        states = GaugeMetricFamily("corral_tenant_sandboxes",
                                   "Each tenant's live sandboxes by state",
                                   labels=["tenant", "state"])
        for (tenant, state), count in sorted(counts.items()):
            states.add_metric([tenant, state], count)
        yield states
        totals = sorted(self._sampler.tenant_totals().items())
        for name, help_text, field in (
                ("cpu_percent", "Each tenant's running sandboxes' CPU, summed (100 per "
                                "sandbox whose cores are all busy), at their latest samples",
                 "cpu_percent"),
                ("memory_bytes", "Each tenant's running sandboxes' memory in use, summed",
                 "memory_bytes"),
                ("disk_bytes", "Each tenant's running sandboxes' writable layers in use, "
                               "summed", "disk_bytes")):
            family = GaugeMetricFamily(f"corral_tenant_{name}", help_text, labels=["tenant"])
            for tenant, total in totals:
                family.add_metric([tenant], getattr(total, field))
            yield family


class Metrics:
    """The server's metrics; :meth:`exposition` renders them for Prometheus.

    ``node``: the node whose sandboxes, pools and egress verdicts are shown. A cluster's
    API server has none (its own figures are added with :meth:`add`); it passes commands on
    to the nodes, whose own ``/metrics`` count them, so it shows no command counts.
    """

    def __init__(self, node: Node | None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: What only an operator's scrape shows: every tenant's figures.
        self.operator_registry = CollectorRegistry(auto_describe=True)
        if node is not None:
            self.registry.register(_SandboxStates(node))
            self.registry.register(_Pools(node))
            self.registry.register(_Egress(node))
        self.create_seconds = Histogram(
            "corral_sandbox_create_seconds", "Time to create a sandbox that started",
            buckets=CREATE_BUCKETS, registry=self.registry)
        self.commands = Counter(
            "corral_commands", "Commands run through the API, by how they ended",
            ["outcome"], registry=self.registry if node is not None else None)
        self.requests = Counter(
            "corral_http_requests", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=self.registry)
        self.errors = Counter(
            "corral_errors", "Error responses by error code", ["code"],
            registry=self.registry)
        for outcome in OUTCOMES:  # present from the start, so rate() sees the first one
            self.commands.labels(outcome)

    def add_tenants(self, sandboxes: SandboxService, sampler: MetricsSampler) -> None:
        """Add the per-tenant figures (``corral_tenant_*``), for operators' scrapes."""
        self.operator_registry.register(_Tenants(sandboxes, sampler))

    def add(self, collector: Collector, *, operator: bool = False) -> None:
        """Show ``collector``'s figures too; with ``operator``, to operators' scrapes only."""
        (self.operator_registry if operator else self.registry).register(collector)

    def command_ended(self, exit_code: int, reason: str | None) -> None:
        self.commands.labels(outcome_of(exit_code, reason)).inc()

    def exposition(self, operator: bool = False) -> bytes:
        """The text format; with ``operator``, every tenant's figures too."""
        text = generate_latest(self.registry)
        return text + generate_latest(self.operator_registry) if operator else text


def outcome_of(exit_code: int, reason: str | None) -> str:
    """``success`` / ``failure`` by exit status, unless Corral ended it (timeout, kill)."""
    if reason == "timeout":
        return "timeout"
    if reason:
        return "killed"
    return "success" if exit_code == 0 else "failure"


def _pattern(template: str) -> re.Pattern[str]:
    """A template as a regex: a parameter is one segment, or any number of them written
    ``{name:path}`` (as Starlette writes routes whose parameter is a path)."""
    return re.compile("^" + re.sub(
        r"\{([^/}:]+)(:path)?\}",
        lambda m: f"(?P<{m.group(1)}>{'.+' if m.group(2) else '[^/]+'})", template) + "$")


class RouteTemplates:
    """Which path template of the published document a path matches, and its
    ``{sandbox_id}``; built on first use, since the document is too."""

    def __init__(self, templates: Callable[[], Iterable[str]]) -> None:
        self._templates = templates
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, path: str) -> tuple[str, str | None]:
        """``(template, sandbox id)``; ``(UNMATCHED, None)`` for a path the API lacks."""
        if self._patterns is None:
            self._patterns = [(_pattern(t), t.replace(":path}", "}"))
                              for t in self._templates()]
        for pattern, template in self._patterns:
            found = pattern.match(path)
            if found:
                return template, found.groupdict().get("sandbox_id")
        return UNMATCHED, None


class HttpMetrics:
    """Count every response by route template and status, and errors by code.

    Outermost middleware, so answers of the layers inside it (401 from authentication,
    413 from the body bound, 429 from rate limits) are counted too. The route label is the
    path template of the published OpenAPI document the path matches, never the path as
    sent. The error code is the one the body names (429 and 503 each answer two codes).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self._templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None
        counted = False

        async def recording(message: Message) -> None:
            # Counted before the client can have the answer, so that a scrape made after
            # it saw a response always counts that response.
            nonlocal status, counted
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.requests.labels(self.route(scope["path"]), scope["method"],
                                             str(status)).inc()
                counted = status < 400
            elif message["type"] == "http.response.body" and not counted:
                assert status is not None  # noqa: S101 - ASGI: the start comes first
                self._error(status, error_code_of(message.get("body", b"")))
                counted = True
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            if status is None:  # an exception escaped every handler: it ends as a 500
                self.metrics.requests.labels(self.route(scope["path"]), scope["method"],
                                             "500").inc()
                self._error(500, None)
            elif not counted:  # an error answer that sent no body
                self._error(status, None)

    def _error(self, status: int, code: str | None) -> None:
        self.metrics.errors.labels(code or code_for_status(status).value).inc()

    def route(self, path: str) -> str:
        """The template ``path`` matches (``/v1/sandboxes/{sandbox_id}``), or ``unmatched``."""
        return self._templates(path)[0]


_CODES: Final = frozenset(code.value for code in ErrorCode)


def error_code_of(body: bytes) -> str | None:
    """The code of an error body in the one shape, if it is one (and a known code: the
    label set stays fixed)."""
    if not body.startswith(b'{"error"') or len(body) > 8192:
        return None
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if code in _CODES else None
