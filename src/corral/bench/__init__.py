"""Corral's benchmark: sandbox start-up, exec and file round trips, run_code, warm pools,
creation throughput, idle density and (gVisor) checkpoint/restore, each beside its bare
primitive (``runsc run``, ``bwrap``, a host ``fork+exec``) measured in the same run.

Run it with ``corral bench``; the results and how to read them are in docs/benchmarks.md.
"""

from .report import BenchReport, markdown, rich_table
from .stats import Row, RuntimeResult, Stat
from .suite import BenchConfig, run_benchmark

__all__ = ["BenchConfig", "BenchReport", "Row", "RuntimeResult", "Stat", "markdown",
           "rich_table", "run_benchmark"]
