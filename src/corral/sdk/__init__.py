"""The Python SDK: :class:`AsyncSandbox` (the core) and :class:`Sandbox` (its blocking face).

Example::

    from corral import Sandbox

    with Sandbox.create(image="python", timeout=600) as sb:
        r = sb.commands.run("python3 -c 'print(2+2)'")
        print(r.exit_code, r.stdout, r.stderr)

Set ``CORRAL_URL`` and ``CORRAL_API_KEY`` (``corral keys create``), or pass ``url=`` and
``api_key=``. Errors are the same classes the server raised, rooted at
:class:`corral.SandboxError`.
"""

from corral.api.command_events import Output
from corral.api.models import CommandResult, EntryInfo, ProcessInfo, PtySize
from corral.api.models import CommandRecord, MetricSample, SandboxInfo, SnapshotInfo, WatchEvent

from .code import AsyncCodeInterpreter, Context, Execution, ExecutionError, Logs, Result
from .commands import AsyncCommandHandle, AsyncCommands
from .files import AsyncFiles, AsyncWatchHandle
from .images import Image
from .sandbox import AsyncSandbox
from .snapshots import AsyncSnapshot
from .pty import AsyncPty, AsyncPtyHandle
from .sync import (CodeInterpreter, CommandHandle, Commands, Files, Pty, PtyHandle, Sandbox,
                   Snapshot, Volume, WatchHandle)
from .volumes import AsyncVolume

__all__ = [
    "AsyncCodeInterpreter", "CodeInterpreter", "Context", "Execution", "ExecutionError",
    "Logs", "Result",
    "AsyncCommandHandle", "AsyncCommands", "AsyncFiles", "AsyncSandbox", "CommandHandle",
    "CommandResult", "Commands", "EntryInfo", "Files", "Image", "Output", "ProcessInfo",
    "Sandbox", "AsyncVolume", "Volume", "AsyncSnapshot", "Snapshot",
    "AsyncPty", "AsyncPtyHandle", "Pty", "PtyHandle", "PtySize",
    "SandboxInfo", "SnapshotInfo", "AsyncWatchHandle", "WatchHandle", "WatchEvent",
    "MetricSample", "CommandRecord",
]
