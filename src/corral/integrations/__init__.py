"""Corral for agent frameworks: clients of the public SDK (:mod:`corral.sdk`).

* :mod:`corral.integrations.semantic_kernel`: ``CorralPlugin``, kernel functions.
* :mod:`corral.integrations.agent_framework`: Microsoft Agent Framework tools.
* :mod:`corral.integrations.mcp`: an MCP server (``corral mcp``; streamable HTTP is
  mounted on ``corral serve`` at ``/mcp``).
* :class:`HostDirectories`: the only way host files reach these tools, confined to
  directories the developer allow-lists.

Azure Container Apps dynamic-sessions clients (Semantic Kernel's ``SessionsPythonTool``)
need no code here: ``corral serve`` speaks their API at ``/aca/<pool>/``
(:mod:`corral.server.routes.aca`, part of the server since it uses the server's services).

Each framework is an optional extra (``pip install 'corral[integrations]'``) and is
imported only by its own subpackage.
"""

from ._host_files import HostDirectories
from ._tools import SandboxTools

__all__ = ["HostDirectories", "SandboxTools"]
