"""What routes share: the services, from the app's state.

Dependencies are coroutines: FastAPI runs a plain function in its thread pool, a hop per
dependency per request for a lookup that never blocks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from ..metrics import Metrics as MetricsT
from ..services import CommandService, FileService, SandboxService
from ..services.images import ImageService
from ..services.snapshots import SnapshotService


async def _sandboxes(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.sandboxes
    return service


async def _commands(request: Request) -> CommandService:
    service: CommandService = request.app.state.commands
    return service


async def _files(request: Request) -> FileService:
    service: FileService = request.app.state.files
    return service


async def _images(request: Request) -> ImageService:
    service: ImageService = request.app.state.images
    return service


async def _snapshots(request: Request) -> SnapshotService:
    service: SnapshotService = request.app.state.snapshots
    return service


async def _metrics(request: Request) -> MetricsT:
    metrics: MetricsT = request.app.state.metrics
    return metrics


Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]
Commands = Annotated[CommandService, Depends(_commands)]
Files = Annotated[FileService, Depends(_files)]
Metrics = Annotated[MetricsT, Depends(_metrics)]
Images = Annotated[ImageService, Depends(_images)]
Snapshots = Annotated[SnapshotService, Depends(_snapshots)]
SandboxId = Annotated[str, Path(max_length=64)]
