"""What routes share: the services, from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from ..metrics import Metrics as MetricsT
from ..services import CommandService, FileService, SandboxService


def _sandboxes(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.sandboxes
    return service


def _commands(request: Request) -> CommandService:
    service: CommandService = request.app.state.commands
    return service


def _files(request: Request) -> FileService:
    service: FileService = request.app.state.files
    return service


def _metrics(request: Request) -> MetricsT:
    metrics: MetricsT = request.app.state.metrics
    return metrics


Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]
Commands = Annotated[CommandService, Depends(_commands)]
Files = Annotated[FileService, Depends(_files)]
Metrics = Annotated[MetricsT, Depends(_metrics)]
SandboxId = Annotated[str, Path(max_length=64)]
