"""The control plane: an HTTP API over the node, with API keys per tenant.

``corral serve`` runs it; :func:`create_app` builds the ASGI app for any server.
"""

from .app import create_app
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
