"""One thin module per resource: parse, authorize (:data:`corral.server.auth.Tenant`),
call a service, serialize."""

from . import commands, files, metrics, sandboxes

__all__ = ["commands", "files", "metrics", "sandboxes"]
