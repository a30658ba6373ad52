"""One thin module per resource: parse, authorize (:data:`corral.server.auth.Tenant`),
call a service, serialize."""

from . import audit, commands, files, metrics, sandboxes

__all__ = ["audit", "commands", "files", "metrics", "sandboxes"]
