"""One host: sandbox lifecycle, images, the agent channel.

:class:`Node` is the async core; :class:`SyncNode` its blocking face. Its sandboxes offer
the same contract as the SDK's (:mod:`corral.api.contract`).
"""

from corral.api.command_events import Output
from corral.api.models import CommandResult, EntryInfo, ProcessInfo, SandboxInfo

from .commands import CommandHandle, Commands
from .files import Files
from .lifecycle import Lifecycle, SandboxState
from .node import Node
from .sandbox import Sandbox
from .settings import NodeSettings
from .sync import SyncNode, SyncSandbox

__all__ = [
    "CommandHandle", "CommandResult", "Commands", "EntryInfo", "Files", "Lifecycle", "Node",
    "NodeSettings", "Output", "ProcessInfo", "Sandbox", "SandboxInfo", "SandboxState",
    "SyncNode", "SyncSandbox",
]
