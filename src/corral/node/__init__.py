"""One host: sandbox lifecycle, images, the agent channel.

:class:`Node` is the async core; :class:`SyncNode` its blocking face.
"""

from .commands import CommandHandle, Commands, OutputEvent
from .files import Files
from corral.api.models import EntryInfo

from .models import CommandResult, ProcessInfo, SandboxInfo, SandboxState
from .node import Node, NodeSettings
from .sandbox import Sandbox
from .sync import SyncNode, SyncSandbox

__all__ = [
    "CommandHandle", "CommandResult", "Commands", "EntryInfo", "Files", "Node", "NodeSettings",
    "OutputEvent", "ProcessInfo", "Sandbox", "SandboxInfo", "SandboxState", "SyncNode",
    "SyncSandbox",
]
