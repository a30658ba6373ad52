"""The server's settings, read once at start: flag > ``CORRAL_*`` env > default."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from corral.api.errors import InvalidArgumentError
from corral.api.limits import DEFAULT_PAUSED_TTL, SNAPSHOT_TTL_RANGE
from corral.api.network import NetworkPolicy
from corral.api.resources import check_paused_ttl
from corral.node import NodeSettings

from .quota import TenantQuota
from .store.schema import database_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
#: Largest JSON (or stdin) request body; file uploads stream and are bounded by the disk.
MAX_BODY = 1024 * 1024
#: Seconds a snapshot is kept when its request says nothing (7 days).
DEFAULT_SNAPSHOT_TTL = 7 * 24 * 3600.0
#: Sandbox metrics: seconds between two samples, and how long after a sandbox stopped
#: they (and its command history) are kept: defaults and bounds.
METRICS_INTERVAL, METRICS_INTERVAL_RANGE = 5.0, (0.1, 3600.0)
METRICS_RETENTION, METRICS_RETENTION_RANGE = 3600.0, (0.0, 7 * 24 * 3600.0)


@dataclass(frozen=True)
class RequestLimits:
    """What one client may ask of the server, and how long it may take to ask.

    Each can be set with ``CORRAL_<NAME>`` (``CORRAL_RATE=100``); docs/api.md lists them.
    A rate, burst or count of 0 turns that limit off.

    Attributes:
        rate: requests a second one API key may make, sustained (a token bucket).
        burst: requests one API key may make at once, above ``rate``.
        in_flight_per_key: requests of one API key being served at once (streams included).
        in_flight: requests being served at once, all keys together; past it: 503.
        auth_failure_rate, auth_failure_burst: failed authentications one client address
            (an IPv6 /64) may make, sustained and at once; past them its requests with a key
            not recently seen working are refused (429) without a lookup.
        buckets: client addresses (and keys) whose buckets are kept; the longest unused
            are dropped first, and a dropped bucket was full anyway unless the table
            overflowed.
        json_depth: deepest nesting of arrays and objects a JSON body may have.
        body_timeout: seconds a JSON (or stdin) body may take to arrive whole.
        body_idle_timeout: seconds a streamed upload may pause between two pieces.
        header_timeout: seconds a connection may take to send a request's line and headers.
        keep_alive: seconds an idle connection is kept open between requests.
        max_connections: open connections; one more is answered 503 and closed.
        shutdown_grace: seconds requests in flight get to finish when the server stops.
    """

    rate: float = 1000.0
    burst: int = 2000
    in_flight_per_key: int = 128
    in_flight: int = 1024
    auth_failure_rate: float = 1.0
    auth_failure_burst: int = 200
    buckets: int = 10_000
    json_depth: int = 64
    body_timeout: float = 30.0
    body_idle_timeout: float = 60.0
    header_timeout: float = 10.0
    keep_alive: float = 5.0
    max_connections: int = 1000
    shutdown_grace: float = 30.0

    @classmethod
    def from_env(cls, overrides: Mapping[str, float | None] | None = None,
                 env: Mapping[str, str] | None = None) -> RequestLimits:
        """Defaults, overridden by ``CORRAL_<NAME>``, overridden by ``overrides`` (flags)."""
        env = os.environ if env is None else env
        values: dict[str, float] = {}
        for f in fields(cls):
            raw = env.get(f"CORRAL_{f.name.upper()}")
            given = (overrides or {}).get(f.name)
            if given is not None:
                values[f.name] = given
            elif raw:
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise InvalidArgumentError(
                        f"CORRAL_{f.name.upper()}={raw!r:.40} is not a number") from None
        return cls().with_values(values)

    def with_values(self, values: Mapping[str, float]) -> RequestLimits:
        """A copy with ``values`` checked and converted to each field's type."""
        checked: dict[str, float | int] = {}
        for f in fields(self):
            if f.name not in values:
                continue
            value = values[f.name]
            if not value >= 0 or value == float("inf"):
                raise InvalidArgumentError(f"limit {f.name} must be a number >= 0, not "
                                           f"{value!r:.40}")
            checked[f.name] = int(value) if f.type in ("int", int) else float(value)
        return replace(self, **checked)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AuditSettings:
    """How much of the audit log is kept (``CORRAL_AUDIT_MAX_ROWS``,
    ``CORRAL_AUDIT_MAX_AGE_DAYS``): the newest ``max_rows`` records, none older than
    ``max_age_days``. 0 keeps everything (not recommended: the table then only grows)."""

    max_rows: int = 1_000_000
    max_age_days: float = 90.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuditSettings:
        env = os.environ if env is None else env
        try:
            return cls(max_rows=int(env.get("CORRAL_AUDIT_MAX_ROWS") or cls.max_rows),
                       max_age_days=float(env.get("CORRAL_AUDIT_MAX_AGE_DAYS")
                                          or cls.max_age_days))
        except ValueError:
            raise InvalidArgumentError("CORRAL_AUDIT_MAX_ROWS and CORRAL_AUDIT_MAX_AGE_DAYS "
                                       "must be numbers") from None


@dataclass(frozen=True)
class AcaSettings:
    """The Azure Container Apps dynamic-sessions façade (``/aca/{pool}/``).

    Attributes:
        pools: pool name -> the image its sessions' sandboxes start from
            (``CORRAL_ACA_POOLS=default=python,big=python-ml``); ``default`` always exists.
        cooldown: seconds a session may go unused before its sandbox is stopped, as a
            pool's ``cooldownPeriodInSeconds`` in Azure (``CORRAL_ACA_COOLDOWN``).
        lifetime: seconds a session's sandbox may live at most (``CORRAL_ACA_LIFETIME``).
    """

    pools: Mapping[str, str] = field(default_factory=lambda: {"default": "python"})
    cooldown: float = 300.0
    lifetime: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AcaSettings:
        env = os.environ if env is None else env
        pools = {"default": "python"}
        for item in filter(None, (p.strip() for p in env.get("CORRAL_ACA_POOLS", "").split(","))):
            name, sep, image = item.partition("=")
            if not sep or not name.strip() or not image.strip():
                raise InvalidArgumentError("CORRAL_ACA_POOLS is NAME=IMAGE[,NAME=IMAGE...]")
            pools[name.strip()] = image.strip()
        try:
            return cls(pools=pools,
                       cooldown=float(env.get("CORRAL_ACA_COOLDOWN") or cls.cooldown),
                       lifetime=float(env.get("CORRAL_ACA_LIFETIME") or cls.lifetime))
        except ValueError:
            raise InvalidArgumentError("CORRAL_ACA_COOLDOWN and CORRAL_ACA_LIFETIME must be "
                                       "numbers of seconds") from None


#: Bounds of the console's session lifetimes, in seconds, and of sessions per key.
UI_SESSION_SECONDS = (1.0, 30 * 24 * 3600.0)
UI_SESSIONS_PER_KEY = (1, 1000)


@dataclass(frozen=True)
class UiSettings:
    """The web console's sessions (``/ui``).

    Attributes:
        session_idle: seconds a session may go without a request before it ends
            (``CORRAL_UI_SESSION_IDLE``, default 8 h).
        session_lifetime: seconds a session lasts at most, however busy
            (``CORRAL_UI_SESSION_LIFETIME``, default 24 h). Both 1 s to 30 days.
        sessions_per_key: sessions one API key may hold; a login past it ends the key's
            oldest (``CORRAL_UI_SESSIONS_PER_KEY``, default 16, 1 to 1000).
    """

    session_idle: float = 8 * 3600.0
    session_lifetime: float = 24 * 3600.0
    sessions_per_key: int = 16

    def __post_init__(self) -> None:
        low, high = UI_SESSION_SECONDS
        for name in ("session_idle", "session_lifetime"):
            value = getattr(self, name)
            if not low <= value <= high:
                raise InvalidArgumentError(
                    f"the console's {name.replace('_', ' ')} must be {low:g} to {high:g} "
                    f"seconds (CORRAL_UI_{name.upper()}), not {value:g}")
        low_n, high_n = UI_SESSIONS_PER_KEY
        if not low_n <= self.sessions_per_key <= high_n:
            raise InvalidArgumentError(
                f"the console's sessions per key must be {low_n} to {high_n} "
                f"(CORRAL_UI_SESSIONS_PER_KEY), not {self.sessions_per_key}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UiSettings:
        env = os.environ if env is None else env
        try:
            return cls(
                session_idle=float(env.get("CORRAL_UI_SESSION_IDLE") or cls.session_idle),
                session_lifetime=float(env.get("CORRAL_UI_SESSION_LIFETIME")
                                       or cls.session_lifetime),
                sessions_per_key=int(env.get("CORRAL_UI_SESSIONS_PER_KEY")
                                     or cls.sessions_per_key))
        except ValueError:
            raise InvalidArgumentError(
                "CORRAL_UI_SESSION_IDLE and CORRAL_UI_SESSION_LIFETIME must be numbers of "
                "seconds, CORRAL_UI_SESSIONS_PER_KEY a whole number") from None


def _mib_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise InvalidArgumentError(f"{name}={raw!r:.40} is not a whole number of MiB") from None
    if value < 1:
        raise InvalidArgumentError(f"{name} must be at least 1 MiB")
    return value


@dataclass(frozen=True)
class ServerSettings:
    """Attributes:
        node: where the embedded node keeps sandboxes and images.
        host, port: where to listen (``CORRAL_HOST``, ``CORRAL_PORT``); loopback by default.
        database_url: SQLAlchemy URL (``CORRAL_DATABASE_URL``), default SQLite in the data dir.
        max_body: largest request body outside file uploads, in bytes.
        idle_check_interval: seconds between two looks for sandboxes idle past their
            ``idle_timeout``.
        tls: serve HTTPS with a certificate from the server's own CA (``CORRAL_TLS=1``);
            off by default.
        tls_names: host names or addresses the certificate names besides ``localhost``,
            ``127.0.0.1`` and ``::1`` (``CORRAL_TLS_NAMES``, comma-separated).
        limits: rate limits, concurrency caps and timeouts of requests.
        audit: how much of the audit log is kept.
        keep_sandboxes: leave running sandboxes running when the server stops, for the next
            server on the same data dir to re-attach (``CORRAL_KEEP_SANDBOXES=0`` stops
            them instead); see ``NodeSettings.orphan_grace``.
        aca: the Azure Container Apps dynamic-sessions façade's pools and timeouts.
        ports_domain: host-based port URLs are ``{port}-{id}.{ports_domain}``
            (``CORRAL_PORTS_DOMAIN``); ``localhost`` works on the server's machine out of the
            box. Point a wildcard DNS name (and certificate) at the server to use another.
        mcp_network: the most a model may ask a sandbox to reach through the ``/mcp``
            tools (``CORRAL_MCP_NETWORK``, e.g. ``allow:pypi.org,files.pythonhosted.org``;
            default none).
        image_quota: bytes each tenant's built images may take together
            (``CORRAL_IMAGE_QUOTA_MIB``, default 20 GiB).
        volume_quota_mib: MiB each tenant's volumes may take together, counting each at
            its size (``CORRAL_VOLUME_QUOTA_MIB``, default 100 GiB).
        snapshot_quota_mib: MiB each tenant's snapshots may take on disk together
            (``CORRAL_SNAPSHOT_QUOTA_MIB``, default 20 GiB).
        snapshot_ttl: seconds a snapshot is kept when its request names no ``ttl``
            (``CORRAL_SNAPSHOT_TTL``, default 7 days; 60 s to 90 days).
        snapshot_sweep_interval: seconds between two looks for expired snapshots (a
            snapshot outlives its time by at most about this; reads treat it as gone).
        paused_ttl: seconds a sandbox may stay paused before the server kills it
            (``CORRAL_PAUSED_TTL``, default 30 days, at most a year): a create's
            ``paused_ttl`` when it gives none, and the most it may ask for.
        e2b: serve the E2B-compatible API under ``/e2b`` (``CORRAL_E2B``, on by default;
            ``CORRAL_E2B=0`` turns it off), so the e2b SDKs work unmodified (docs/e2b.md).
        e2b_internet: what an E2B create that says nothing of the network gets (E2B's
            default is internet on): ``CORRAL_E2B_INTERNET=1`` gives it ``"all"`` (public
            addresses, under the operator's rules), off by default gives ``"none"``.
        metrics_interval: seconds between two samples of every running sandbox's metrics
            (``CORRAL_METRICS_INTERVAL``, default 5; 0.1 to 3600).
        metrics_retention: seconds a stopped sandbox's metrics and command history are
            kept (``CORRAL_METRICS_RETENTION``, default 3600; 0 to 7 days).
        ui: the web console's session lifetimes (:class:`UiSettings`).
        quota: what one tenant may hold at once (:class:`TenantQuota`).
        cluster_token: set on a cluster's node server (read from the file
            ``CORRAL_CLUSTER_TOKEN_FILE``, which the node actor writes): the node token
            requests from the control plane carry (:mod:`corral.cluster.trust`); empty on a
            server of its own.
    """

    node: NodeSettings
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str = ""
    max_body: int = MAX_BODY
    idle_check_interval: float = 1.0
    tls: bool = False
    tls_names: tuple[str, ...] = ()
    limits: RequestLimits = field(default_factory=RequestLimits)
    audit: AuditSettings = field(default_factory=AuditSettings)
    keep_sandboxes: bool = True
    aca: AcaSettings = field(default_factory=AcaSettings)
    ports_domain: str = "localhost"
    mcp_network: NetworkPolicy = field(default_factory=NetworkPolicy)
    image_quota: int = 20 * 1024 ** 3
    volume_quota_mib: int = 100 * 1024
    snapshot_quota_mib: int = 20 * 1024
    snapshot_ttl: float = DEFAULT_SNAPSHOT_TTL
    snapshot_sweep_interval: float = 30.0
    paused_ttl: float = DEFAULT_PAUSED_TTL
    e2b: bool = True
    e2b_internet: bool = False
    metrics_interval: float = METRICS_INTERVAL
    metrics_retention: float = METRICS_RETENTION
    ui: UiSettings = field(default_factory=UiSettings)
    quota: TenantQuota = field(default_factory=TenantQuota)
    cluster_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        for name, value, (low, high) in (
                ("CORRAL_METRICS_INTERVAL", self.metrics_interval, METRICS_INTERVAL_RANGE),
                ("CORRAL_METRICS_RETENTION", self.metrics_retention, METRICS_RETENTION_RANGE)):
            if not low <= value <= high:
                raise InvalidArgumentError(f"{name} must be {low:g} to {high:g} seconds, "
                                           f"not {value:g}")
        check_paused_ttl(self.paused_ttl, "the server's paused TTL (CORRAL_PAUSED_TTL)")
        low, high = SNAPSHOT_TTL_RANGE
        if not low <= self.snapshot_ttl <= high:
            raise InvalidArgumentError(f"the snapshot TTL must be {low:g} to {high:g} seconds "
                                       f"(CORRAL_SNAPSHOT_TTL), not {self.snapshot_ttl:g}")
        if not _DOMAIN.match(self.ports_domain):
            raise InvalidArgumentError(
                f"the ports domain {self.ports_domain!r:.80} is not a DNS name (letters, "
                "digits, hyphens and dots, such as sandboxes.example.org)")

    @classmethod
    def from_env(cls, *, data_dir: Path | None = None, host: str | None = None,
                 port: int | None = None, tls: bool | None = None,
                 tls_names: Sequence[str] | None = None,
                 limits: Mapping[str, float | None] | None = None,
                 ports_domain: str | None = None) -> ServerSettings:
        node = NodeSettings.from_env(data_dir)
        if tls is None:
            tls = _flag(os.environ.get("CORRAL_TLS", ""))
        if not tls_names:
            tls_names = os.environ.get("CORRAL_TLS_NAMES", "").split(",")
        return cls(
            node=node,
            host=host or os.environ.get("CORRAL_HOST", DEFAULT_HOST),
            port=port if port is not None else int(os.environ.get("CORRAL_PORT",
                                                                  DEFAULT_PORT)),
            database_url=database_url(node.data_dir, os.environ.get("CORRAL_DATABASE_URL")),
            tls=tls,
            tls_names=tuple(n.strip() for n in tls_names if n.strip()),
            limits=RequestLimits.from_env(limits),
            audit=AuditSettings.from_env(),
            keep_sandboxes=_flag(os.environ.get("CORRAL_KEEP_SANDBOXES", "1")),
            aca=AcaSettings.from_env(),
            mcp_network=NetworkPolicy.parse_flags(
                os.environ.get("CORRAL_MCP_NETWORK", "").split(), "CORRAL_MCP_NETWORK"),
            ports_domain=(ports_domain or os.environ.get("CORRAL_PORTS_DOMAIN")
                          or "localhost").strip().lower().rstrip("."),
            image_quota=_mib_env("CORRAL_IMAGE_QUOTA_MIB", 20 * 1024) * 1024 * 1024,
            volume_quota_mib=_mib_env("CORRAL_VOLUME_QUOTA_MIB", 100 * 1024),
            snapshot_quota_mib=_mib_env("CORRAL_SNAPSHOT_QUOTA_MIB", 20 * 1024),
            snapshot_ttl=_seconds_env("CORRAL_SNAPSHOT_TTL", DEFAULT_SNAPSHOT_TTL),
            paused_ttl=_seconds_env("CORRAL_PAUSED_TTL", DEFAULT_PAUSED_TTL),
            e2b=_flag(os.environ.get("CORRAL_E2B", "1")),
            e2b_internet=_flag(os.environ.get("CORRAL_E2B_INTERNET", "0")),
            metrics_interval=_seconds_env("CORRAL_METRICS_INTERVAL", METRICS_INTERVAL),
            metrics_retention=_seconds_env("CORRAL_METRICS_RETENTION", METRICS_RETENTION),
            ui=UiSettings.from_env(),
            quota=TenantQuota.from_env(),
            cluster_token=_cluster_token(os.environ.get("CORRAL_CLUSTER_TOKEN_FILE", "")),
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def tls_dir(self) -> Path:
        """Where the CA and the server certificate live."""
        return self.node.data_dir / "tls"


_DOMAIN = re.compile(r"^(?=.{1,200}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                     r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _seconds_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{name} must be a number of seconds, not {raw!r:.40}"
                                   ) from None
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number of seconds")
    return value


def _cluster_token(path: str) -> str:
    if not path:
        return ""
    from corral.cluster.trust import load_secret
    return load_secret(Path(path), what="node token")


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}
