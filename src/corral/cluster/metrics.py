"""Prometheus figures of a cluster's API server, at its ``GET /metrics``.

Beside the single server's request figures (:class:`corral.server.metrics.Metrics`, made
without a node), what the control plane knows: its nodes by state, the cluster's warm
pools, its sandboxes by state from the shared records and the Ray calls this API server
made; and, for operators' scrapes only (as ``/v1/nodes`` is theirs alone), what each node
holds (as its last heartbeat said, plus what was placed since) and each tenant's
sandboxes. Labels are node names, images, runtimes, states and tenants: all the
operator's, none a client's. Sandbox figures (CPU, memory) are each node's own
``/metrics``.

Collectors run when Prometheus scrapes, on the event loop (the views they read change
there); what they need of the shared database is read first, in a thread
(:meth:`ClusterFigures.refresh`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .control import Cluster
from .directory import LIVE, LOST, NodeRecord

#: What ``corral_cluster_nodes{state}`` counts (a node counts once, by the first that holds).
NODE_STATES = ("lost", "draining", "cordoned", "ready")


class ClusterFigures(Collector):
    """The nodes by state, the pools, the sandboxes and Ray calls, as this API server knows
    them."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._records: list[NodeRecord] = []
        #: Sandboxes live or lost by (tenant, state), as last read.
        self.counts: dict[tuple[str, str], int] = {}

    async def refresh(self) -> None:
        """Read the nodes' and sandboxes' records (call before each scrape)."""
        directory = self._cluster.directory
        self._records, self.counts = await asyncio.to_thread(
            lambda: (directory.nodes(), directory.counts()))

    def collect(self) -> Iterable[Metric]:
        cluster = self._cluster
        records = self._records
        states = dict.fromkeys(NODE_STATES, 0)
        for record in records:
            state = ("lost" if record.state == "lost" else "draining" if record.draining
                     else "cordoned" if record.cordoned else "ready")
            states[state] += 1
        nodes = GaugeMetricFamily("corral_cluster_nodes", "The cluster's nodes by state",
                                  labels=["state"])
        for state, count in states.items():
            nodes.add_metric([state], count)
        yield nodes
        pools = GaugeMetricFamily("corral_pool_ready", "Sandboxes ready in the cluster's warm "
                                  "pools, summed over the nodes", labels=["image", "runtime"])
        for pool in cluster.pools():
            pools.add_metric([str(pool["image"]), str(pool["runtime"])], pool["ready"])
        yield pools
        counts = self.counts
        sandboxes = GaugeMetricFamily("corral_sandboxes", "The cluster's sandboxes by state "
                                      "(lost: on a node that does not answer)",
                                      labels=["state"])
        for state in (LIVE, LOST):
            sandboxes.add_metric([state], sum(n for (_, s), n in counts.items() if s == state))
        yield sandboxes
        calls = CounterMetricFamily("corral_cluster_ray_calls", "Ray actor calls this API "
                                    "server made, by method", labels=["method"])
        for method, count in sorted(cluster.ray_calls.items()):
            calls.add_metric([method], count)
        yield calls


class NodeFigures(Collector):
    """What each node holds and has (operators only)."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def collect(self) -> Iterable[Metric]:
        per_node = {name: GaugeMetricFamily(f"corral_cluster_node_{name}", text,
                                            labels=["node"])
                    for name, text in (
                        ("sandboxes", "Sandboxes on each node"),
                        ("cpus", "Each node's cores"),
                        ("cpus_allocated", "CPU limits of the sandboxes on each node, summed"),
                        ("memory_bytes", "Each node's memory"),
                        ("memory_allocated_bytes",
                         "Memory limits of the sandboxes on each node, summed"),
                        ("gpus", "Each node's GPUs"),
                        ("gpus_free", "Each node's GPUs that no sandbox holds"))}
        for view in sorted(self._cluster.views(), key=lambda v: v.name):
            name = view.name
            cpus, memory = view.allocated()
            for figure, value in (("sandboxes", len(view.sandboxes)), ("cpus", view.cpus),
                                  ("cpus_allocated", cpus),
                                  ("memory_bytes", view.memory_mib * 2**20),
                                  ("memory_allocated_bytes", memory * 2**20),
                                  ("gpus", len(view.gpus)),
                                  ("gpus_free", view.free_gpus(None))):
                per_node[figure].add_metric([name], value)
        yield from per_node.values()


class TenantFigures(Collector):
    """``corral_tenant_sandboxes{tenant,state}`` from the shared records (operators only),
    as ``figures`` last read them."""

    def __init__(self, figures: ClusterFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("corral_tenant_sandboxes", "Each tenant's sandboxes in "
                                   "the cluster by state", labels=["tenant", "state"])
        for (tenant, state), count in sorted(self._figures.counts.items()):
            family.add_metric([tenant, state], count)
        yield family
