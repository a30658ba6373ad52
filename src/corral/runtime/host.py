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
  left behind, or one sandbox; :func:`sweep_networks`: their network namespaces.
* :func:`give_socket`: hand a bound channel socket to its folder's owner alone.
* :func:`copy_changes`: freeze a sandbox and copy what it changed in its image (an image
  build's step, :mod:`corral.node.builder`).
* :class:`SandboxCgroups`: make, limit, join, kill and remove a sandbox's cgroups (the
  benchmark's bare sandboxes, which no runtime starts).
* :func:`ensure_net_table`, :func:`create_net`, :func:`update_net`, :func:`destroy_net`:
  the shared nftables table, and one sandbox's network namespace, veth pair and rules
  (:mod:`._net_unsafe`); :func:`reinstate_net`: that slot made ready for a restore into
  it (its address put back, or all of it made again after a reboot);
  :func:`taken_net_slots`, :func:`net_slots` and :class:`SandboxNet` say which slots of
  the pool exist and what one names (:func:`net_namespace_path`: where a node's slot
  keeps its namespace);
  :class:`NflogReader` reads the packets those rules refused (:mod:`._nflog`).
* :func:`make_volume_fs`, :func:`mount_volume`, :func:`prepare_volume_root`,
  :func:`unmount_volume`, :func:`volume_mounted`, :func:`loop_backings`: a volume's ext4
  filesystem in a sparse file, loop-mounted ``nosuid,nodev`` on the host
  (:mod:`._volumes_unsafe`).
"""

from __future__ import annotations

from ._cgroups import CgroupView, Layout, cgroup_layout, favordynmods_enabled, leftover_names
from ._cgroups_unsafe import SandboxCgroups, favor_dynamic_changes, remove_node_cgroups
from ._host import channel_socket, copy_changes, sweep, sweep_networks, teardown
from ._mounts import mounts_under
from ._mounts_unsafe import give_socket
from ._net_unsafe import DNS_PORT as NET_DNS_PORT
from ._net_unsafe import HOST_PREFIX as NET_HOST_PREFIX
from ._net_unsafe import LOG_BURST as NET_LOG_BURST
from ._net_unsafe import LOG_RATE as NET_LOG_RATE
from ._net_unsafe import PROXY_PORT as NET_PROXY_PORT
from ._net_unsafe import SandboxNet
from ._net_unsafe import netns_path as net_namespace_path
from ._net_unsafe import create as create_net
from ._net_unsafe import destroy as destroy_net
from ._net_unsafe import ensure_table as ensure_net_table
from ._net_unsafe import reinstate as reinstate_net
from ._net_unsafe import slots as net_slots
from ._net_unsafe import taken_slots as taken_net_slots
from ._net_unsafe import traffic as net_traffic
from ._net_unsafe import update as update_net
from ._nflog import LoggedPacket, NflogReader
from ._nflog import group_of as nflog_group
from ._volumes_unsafe import is_mounted as volume_mounted
from ._volumes_unsafe import loop_backings
from ._volumes_unsafe import make_filesystem as make_volume_fs
from ._volumes_unsafe import mount as mount_volume
from ._volumes_unsafe import prepare_root as prepare_volume_root
from ._volumes_unsafe import unmount as unmount_volume

__all__ = [
    "NET_DNS_PORT", "NET_HOST_PREFIX", "NET_LOG_BURST", "NET_LOG_RATE", "NET_PROXY_PORT",
    "CgroupView", "Layout", "LoggedPacket", "NflogReader",
    "SandboxCgroups", "SandboxNet", "cgroup_layout", "channel_socket", "copy_changes", "create_net",
    "destroy_net", "ensure_net_table", "favor_dynamic_changes", "favordynmods_enabled",
    "give_socket", "leftover_names", "loop_backings", "make_volume_fs", "mount_volume",
    "mounts_under", "net_namespace_path", "net_slots", "net_traffic", "nflog_group",
    "prepare_volume_root", "reinstate_net", "remove_node_cgroups", "sweep", "sweep_networks",
    "taken_net_slots", "teardown", "unmount_volume", "update_net", "volume_mounted",
]
