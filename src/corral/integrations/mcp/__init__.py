"""An MCP server offering Corral sandboxes as tools.

* ``corral mcp``: over stdio, a client of a Corral server (``CORRAL_URL``,
  ``CORRAL_API_KEY``, ``CORRAL_CA_FILE``), for desktop MCP clients.
* ``corral serve`` mounts the same tools over streamable HTTP at ``/mcp``, behind the API
  key like every other path (:mod:`corral.server.routes.mcp`).

Tools: ``create_sandbox`` (or reuse a named one), ``run_code``, ``run_command``,
``list_files``, ``read_file``, ``write_file``, ``kill_sandbox``. See
docs/integrations/mcp.md.
"""

from .server import Backend, SdkBackend, build_server

__all__ = ["Backend", "SdkBackend", "build_server"]
