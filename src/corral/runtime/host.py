"""The host as code outside ``runtime/`` sees it: probes, and the few node-wide writes.

The node, the CLI and the benchmark reach host state only through this module; none of
them imports a ``*_unsafe`` module (``tests/unit/runtime/test_privileged_imports.py`` checks).

Read only:

* :func:`cgroup_layout`, :class:`Layout`: where the cgroup hierarchies are mounted.
* :func:`favordynmods_enabled`: whether moving a process into a cgroup is fast here.
* :func:`leftover_names`: sandbox ids a node's cgroups still hold.
* :class:`CgroupView`: a sandbox's cgroups, their processes and counters.
* :func:`mounts_under`: what is mounted at or below a folder.
* :func:`channel_socket`: where a restarted node listens for a sandbox's agent.

Writes (implemented in :mod:`._cgroups_unsafe`, :mod:`._mounts_unsafe` and
:mod:`._host`):

* :func:`favor_dynamic_changes`: a node's start remounts the v2 hierarchy with
  ``favordynmods``.
* :func:`remove_node_cgroups`: a node's close removes its (empty) parent cgroups.
* :func:`sweep`, :func:`teardown`: kill, unmount, uncgroup and delete sandboxes a node
  left behind, or one sandbox.
* :func:`give_socket`: hand a bound channel socket to its folder's owner alone.
* :class:`SandboxCgroups`: make, limit, join, kill and remove a sandbox's cgroups (the
  benchmark's bare sandboxes, which no runtime starts).
"""

from __future__ import annotations

from ._cgroups import CgroupView, Layout, cgroup_layout, favordynmods_enabled, leftover_names
from ._cgroups_unsafe import SandboxCgroups, favor_dynamic_changes, remove_node_cgroups
from ._host import channel_socket, sweep, teardown
from ._mounts import mounts_under
from ._mounts_unsafe import give_socket

__all__ = [
    "CgroupView", "Layout", "SandboxCgroups", "cgroup_layout", "channel_socket",
    "favor_dynamic_changes", "favordynmods_enabled", "give_socket", "leftover_names",
    "mounts_under",
    "remove_node_cgroups", "sweep", "teardown",
]
