"""A node's settings: where it keeps its state and how much it takes on. Read once, at start.

Flag > ``CORRAL_*`` environment variable > default; ``corral serve`` builds them from its
flags, everything else from :meth:`NodeSettings.from_env`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from corral.api.errors import InvalidArgumentError
from corral.api.network import MAX_ENTRIES, NetOperator
from corral.api.resources import Resources
from corral.runtime import GvisorOptions
from corral.runtime.agent_bundle import ORPHAN_GRACE

from .builder import BUILD_RESOURCES, Registries
from .pools import PoolSpec


@dataclass(frozen=True)
class NodeSettings:
    """Where a node keeps its state. Read once, at start.

    Attributes:
        data_dir: sandboxes' host state and the agent bundle (``CORRAL_DATA_DIR``,
            default ``/var/lib/corral``).
        image_dir: built images (``CORRAL_IMAGE_DIR``, default ``<data_dir>/images``).
        max_sandboxes: live sandboxes this node accepts before answering "resource exhausted".
        tune_cgroups: remount the cgroup v2 hierarchy with ``favordynmods`` at start
            (``CORRAL_TUNE_CGROUPS=0`` to leave the host alone); see
            :func:`corral.runtime.host.favor_dynamic_changes`.
        orphan_grace: seconds a sandbox outlives its node, waiting for a restarted node on
            the same data dir to adopt it (``CORRAL_ORPHAN_GRACE``); 0 ends sandboxes with
            their node.
        pools: warm pools to keep filled (``CORRAL_POOLS=python:gvisor=4,python=2``); see
            :mod:`corral.node.pools`.
        max_starting: sandboxes starting at once; more wait their turn (default: twice the
            CPUs, ``CORRAL_MAX_STARTING``). Starting is CPU-bound: more at once only thrash.
        start_queue: creates that may wait for a turn; one more is refused as "resource
            exhausted" at once instead of queueing without bound (``CORRAL_START_QUEUE``).
        gvisor: which runsc and gVisor platform (``CORRAL_RUNSC``,
            ``CORRAL_GVISOR_PLATFORM``); None: read from the environment when the runtime
            is made.
        network: the operator's network rules (:class:`corral.api.network.NetOperator`):
            ranges opened to sandboxes (``CORRAL_NET_OPEN``), the resolver
            (``CORRAL_NET_DNS``), a global deny list (``CORRAL_NET_DENY``), whether ``all``
            may be asked for (``CORRAL_NET_ALLOW_ALL=0`` forbids it), the entry cap
            (``CORRAL_NET_MAX_ENTRIES``) and the sandboxes' address pool
            (``CORRAL_NET_POOL``). Lists are comma- or space-separated.
        registries: the package registries image builds may reach
            (:class:`corral.node.builder.Registries`, ``CORRAL_BUILD_*``).
        build_resources: the limits of each build step's sandbox.
    """

    data_dir: Path
    image_dir: Path
    max_sandboxes: int = 1000
    tune_cgroups: bool = True
    orphan_grace: float = ORPHAN_GRACE
    pools: tuple[PoolSpec, ...] = ()
    max_starting: int = field(default_factory=lambda: 2 * (os.cpu_count() or 1))
    start_queue: int = 256
    gvisor: GvisorOptions | None = None
    network: NetOperator = field(default_factory=NetOperator)
    registries: Registries = field(default_factory=Registries)
    build_resources: Resources = BUILD_RESOURCES

    def __post_init__(self) -> None:
        if self.max_starting < 1 or self.start_queue < 0:
            raise InvalidArgumentError("max_starting must be at least 1 and start_queue >= 0")
        if sum(pool.size for pool in self.pools) > self.max_sandboxes:
            raise InvalidArgumentError("the warm pools hold more sandboxes than max_sandboxes")
        # Resolved: mount points are compared with /proc/self/mountinfo, which has no links.
        object.__setattr__(self, "data_dir", Path(os.path.realpath(self.data_dir)))
        object.__setattr__(self, "image_dir", Path(os.path.realpath(self.image_dir)))

    @classmethod
    def from_env(cls, data_dir: Path | None = None) -> NodeSettings:
        data = data_dir or Path(os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral"))
        images = Path(os.environ.get("CORRAL_IMAGE_DIR", str(data / "images")))
        tune = os.environ.get("CORRAL_TUNE_CGROUPS", "1") != "0"
        grace = os.environ.get("CORRAL_ORPHAN_GRACE", f"{ORPHAN_GRACE:g}")
        try:
            orphan_grace = float(grace)
        except ValueError:
            raise InvalidArgumentError(f"CORRAL_ORPHAN_GRACE={grace!r:.40} is not a number of "
                                       "seconds") from None
        if not 0 <= orphan_grace <= 7 * 24 * 3600:
            raise InvalidArgumentError("CORRAL_ORPHAN_GRACE must be 0 to 604800 seconds")
        pools = PoolSpec.parse_list(os.environ.get("CORRAL_POOLS", ""))
        defaults = cls(data_dir=data, image_dir=images)
        return cls(data_dir=data, image_dir=images, tune_cgroups=tune,
                   orphan_grace=orphan_grace, pools=pools,
                   max_starting=_int_env("CORRAL_MAX_STARTING", defaults.max_starting),
                   start_queue=_int_env("CORRAL_START_QUEUE", defaults.start_queue),
                   gvisor=GvisorOptions.from_env(), network=network_from_env(),
                   registries=Registries.from_env())

    @property
    def built_dir(self) -> Path:
        """Where built images' layers and manifests live (:mod:`corral.node.layers`)."""
        return self.data_dir / "built"

    @property
    def node_key(self) -> str:
        """Names this node's cgroups, so that sweeping never touches another node's."""
        return hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]


def network_from_env(open_ranges: tuple[str, ...] = (), dns: str | None = None
                     ) -> NetOperator:
    """The operator's network rules from ``CORRAL_NET_*``, plus ``open_ranges`` and
    ``dns`` given as flags (which add to, or replace, the environment's)."""
    allow_all = os.environ.get("CORRAL_NET_ALLOW_ALL", "1")
    if allow_all not in ("0", "1"):
        raise InvalidArgumentError(f"CORRAL_NET_ALLOW_ALL={allow_all!r:.20} must be 0 or 1")
    return NetOperator.parse(
        open_ranges=(*_list_env("CORRAL_NET_OPEN"), *open_ranges),
        deny=_list_env("CORRAL_NET_DENY"),
        dns=dns or os.environ.get("CORRAL_NET_DNS") or None, allow_all=allow_all == "1",
        max_entries=_int_env("CORRAL_NET_MAX_ENTRIES", MAX_ENTRIES),
        pool=os.environ.get("CORRAL_NET_POOL") or None)


def _list_env(name: str) -> list[str]:
    return os.environ.get(name, "").replace(",", " ").split()


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise InvalidArgumentError(f"{name}={raw!r:.40} is not a whole number") from None
