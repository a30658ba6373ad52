"""The FastAPI application: ``create_app(settings)``.

One process holds the control plane and the node: the lifespan opens the store, starts
the node (which sweeps what a previous run left) and closes both in reverse. Requests go
through authentication, then the body bound, then a route. Docs pages are off: every
path needs a key, and the OpenAPI document is available as ``app.openapi()``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from corral import __version__
from corral.node import Node

from . import errors
from .auth import Authenticate
from .limits import BodyLimit
from .routes import commands, files, sandboxes
from .services import CommandService, FileService, SandboxService
from .settings import ServerSettings
from .store import KeyStore, SandboxStore, open_engine
from .store.schema import database_url

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings) -> FastAPI:
    """The app serving ``settings``; its node starts when the server does."""
    engine = open_engine(database_url(settings.node.data_dir, settings.database_url or None))
    keys = KeyStore(engine)
    node = Node(settings.node)
    sandbox_service = SandboxService(node, SandboxStore(engine))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            await sandbox_service.start()
            log.info("corral server ready on %s", settings.url)
            yield
        finally:
            await sandbox_service.close()
            await node.close()
            await sandbox_service.record_all()
            engine.dispose()

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.keys = keys
    app.state.sandboxes = sandbox_service
    app.state.commands = CommandService(sandbox_service)
    app.state.files = FileService(sandbox_service)
    errors.install(app)
    for module in (sandboxes, commands, files):
        app.include_router(module.router)
    # Added last runs first: authentication, then the body bound, then the routes.
    app.add_middleware(BodyLimit, limit=settings.max_body, exempt=files.is_upload)
    app.add_middleware(Authenticate, keys=keys)
    return app
