"""What routes share: the services, from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

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


Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]
Commands = Annotated[CommandService, Depends(_commands)]
Files = Annotated[FileService, Depends(_files)]
SandboxId = Annotated[str, Path(max_length=64)]
