"""The control plane's logic. Routes parse and serialize; these decide and act."""

from .commands import CommandService
from .files import FileService
from .reaper import IdleReaper
from .sandboxes import SandboxService

__all__ = ["CommandService", "FileService", "IdleReaper", "SandboxService"]
