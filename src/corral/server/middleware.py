"""The layers every request passes before a route, in order (outermost first):

0. :class:`~corral.server.e2b.hosts.HostRouting` (with the E2B API on): E2B's host-based
   URLs (``api.<domain>``, ``49983-<id>.<domain>``) become requests under ``/e2b``.
1. :class:`~corral.server.logs.RequestLog`: request id, ``X-Request-ID``, the access line.
1a. :class:`~corral.server.e2b.ErrorShape`: under ``/e2b``, errors in E2B's body.
2. :class:`~corral.server.metrics.HttpMetrics`: counts every answer, refusals included.
3. :class:`~corral.server.ratelimit.ServerCap`: requests in flight server-wide (503).
4. :class:`~corral.server.limits.HeaderLimit`: header bytes (400).
4a. :class:`~corral.server.ports.PortGateway`: traffic for a sandbox's exposed port is
   answered here, with its own credentials (a port token, a signed URL, the owner's key).
5. :class:`~corral.server.openapi.AuthenticateExceptSpec`: the key (401), or on E2B's
   envd paths the sandbox's access token (or a signature, on ``/files``), or a signed file
   URL (:mod:`~corral.server.file_urls`), or the console's session cookie with its CSRF
   token (:mod:`~corral.server.sessions`); failed authentications per client address (429).
6. :class:`~corral.server.ratelimit.KeyLimits`: the key's token bucket and requests in
   flight (429).
7. :class:`~corral.server.audit.AuditTrail`: who did what to which sandbox.
8. :class:`~corral.server.limits.BodyLimit`: body size, nesting and deadlines (413, 400).

Each refuses as early as it can, so a refused request costs little: no key lookup past
the server's cap, no body read past authentication and rate limits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fastapi import FastAPI

from . import openapi
from .audit import AuditTrail
from .auth import Alternative
from . import e2b
from .e2b import ErrorShape
from .e2b.hosts import HostRouting
from .limits import BodyLimit, HeaderLimit
from .logs import RequestLog
from .metrics import HttpMetrics, RouteTemplates
from .ports import PortGateway, PortProxy
from .ratelimit import Buckets, KeyLimits, ServerCap
from .routes import files, images, volumes
from .settings import ServerSettings
from .store import KeyStore
from .store.audit import AuditStore
from .store.ui_sessions import UiSessionStore

events = logging.getLogger("corral.server.events")


def install(app: FastAPI, settings: ServerSettings, keys: KeyStore, audit: AuditStore,
            ports: PortProxy, failures: Buckets, *, extra_routes: Sequence[str] = (),
            extra_actions: Mapping[tuple[str, str], str] | None = None,
            e2b_prefix: str | None = None, alternative_auth: Alternative | None = None,
            sessions: UiSessionStore | None = None) -> None:
    """Add the layers above to ``app`` (Starlette runs the one added last first).

    ``failures``: failed authentications per client address, API keys' and port
    credentials' together. ``extra_routes``, ``extra_actions``: path templates and audited
    actions of a mounted API outside the published document (the E2B one). ``e2b_prefix``:
    where the E2B API is mounted; every error under it is answered in E2B's shape
    (:class:`~corral.server.e2b.ErrorShape`, between the access log and the metrics, so
    metrics and the audit trail still see Corral's codes). ``alternative_auth``: how
    requests that carry no key authenticate (E2B's envd paths: the sandbox's token).
    ``sessions``: the web console's, whose cookie authenticates too
    (:mod:`~corral.server.sessions`).
    """
    limits = settings.limits
    routes = RouteTemplates(lambda: [*openapi.templates(app.openapi()), *extra_routes])
    app.add_middleware(BodyLimit, limit=settings.max_body,
                       exempt=lambda scope: (files.is_upload(scope)
                                             or images.is_context_upload(scope)
                                             or volumes.is_upload(scope)
                                             or (e2b_prefix is not None
                                                 and e2b.is_upload(scope))),
                       json_depth=limits.json_depth, timeout=limits.body_timeout,
                       idle_timeout=limits.body_idle_timeout)
    app.add_middleware(AuditTrail, store=audit, settings=settings.audit, route=routes,
                       actions=extra_actions)
    app.add_middleware(KeyLimits, rate=limits.rate, burst=limits.burst,
                       in_flight=limits.in_flight_per_key, size=limits.buckets)
    app.add_middleware(openapi.AuthenticateExceptSpec, keys=keys, failures=failures,
                       recent_size=limits.buckets, alternative=alternative_auth,
                       sessions=sessions)
    app.add_middleware(PortGateway, proxy=ports)
    app.add_middleware(HeaderLimit)
    app.add_middleware(ServerCap, limit=limits.in_flight)
    app.add_middleware(HttpMetrics, metrics=app.state.metrics, templates=routes)
    if e2b_prefix is not None:
        app.add_middleware(ErrorShape, prefix=e2b_prefix)
    app.add_middleware(RequestLog, route=routes)
    if e2b_prefix is not None:
        app.add_middleware(HostRouting, prefix=e2b_prefix, domain=settings.ports_domain)
    app.state.sandboxes.on_stopped.append(
        lambda sandbox_id: events.info("sandbox %s stopped", sandbox_id,
                                       extra={"event": "sandbox.stopped"}))
