"""One host: sandbox lifecycle, images, the agent channel.

:class:`Node` is the async core; :class:`SyncNode` its blocking face. Its sandboxes offer
the same contract as the SDK's (:mod:`corral.api.contract`).
"""

from corral.api.command_events import Output
from corral.api.models import CommandResult, EntryInfo, ProcessInfo, SandboxInfo

from .commands import NodeCommandHandle, NodeCommands
from .files import NodeFiles, NodeWatch
from .lifecycle import Lifecycle, SandboxState
from .node import Node
from .sandbox import NodeSandbox
from .settings import NodeSettings
from .sync import SyncNode, SyncNodeSandbox

__all__ = [
    "CommandResult", "EntryInfo", "Lifecycle", "Node", "NodeCommandHandle", "NodeCommands",
    "NodeFiles", "NodeSandbox", "NodeWatch", "NodeSettings", "Output", "ProcessInfo", "SandboxInfo",
    "SandboxState", "SyncNode", "SyncNodeSandbox",
]
