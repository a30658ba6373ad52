"""The E2B-compatible API, mounted at ``/e2b``: the e2b SDKs run unmodified against Corral
with ``E2B_API_URL=<server>/e2b`` and a Corral key as ``E2B_API_KEY``.

Today: the control plane (create, connect, get, list, timeout, pause, metrics, kill,
network, snapshots, fork), envd's process service (:mod:`.envd`: commands, with
``E2B_SANDBOX_URL=<server>/e2b``), its filesystem service (:mod:`.filesystem`) with its
directory watches (:mod:`.watch`), file transfers (:mod:`.files`, also at the root's
``/files`` for signed URLs, which the SDKs build without the prefix), and the code
interpreter (:mod:`.interpreter`: ``run_code`` and contexts).
Requests pass Corral's own layers first (authentication by ``X-API-Key``, or on envd's
paths by the sandbox's access token, :class:`.envd.TokenAuth`; tenants, rate limits, body
bounds, the audit trail); errors on every path under the mount are E2B's
``{"code", "message"}`` (:class:`.mapping.ErrorShape`). The sub-app is not in Corral's
OpenAPI document: its API is E2B's, described in docs/e2b.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import Scope

from .. import errors
from ..services import CommandService, FileService, SandboxService
from ..services.sampler import MetricsSampler
from ..services.snapshots import SnapshotService
from . import envd, files, filesystem, interpreter, mapping, routes, watch
from .envd import TokenAuth
from .mapping import ErrorShape

PREFIX: Final = "/e2b"
#: The action names the audit trail records for E2B calls that change a sandbox.
_SANDBOX = f"{PREFIX}/sandboxes/{{sandbox_id}}"
AUDITED: Final = {
    ("POST", f"{PREFIX}/sandboxes"): "sandbox.create",
    ("POST", f"{PREFIX}/v2/sandboxes"): "sandbox.create",
    ("DELETE", _SANDBOX): "sandbox.kill",
    ("POST", f"{_SANDBOX}/timeout"): "sandbox.set_timeout",
    ("POST", f"{_SANDBOX}/connect"): "sandbox.connect",
    ("POST", f"{PREFIX}/v2/sandboxes/{{sandbox_id}}/connect"): "sandbox.connect",
    ("POST", f"{_SANDBOX}/pause"): "sandbox.pause",
    ("PUT", f"{_SANDBOX}/network"): "sandbox.set_network",
    ("POST", f"{_SANDBOX}/snapshots"): "sandbox.snapshot",
    ("POST", f"{_SANDBOX}/fork"): "sandbox.fork",
    ("DELETE", f"{PREFIX}/templates/{{template_id}}"): "snapshot.delete",
    **{("POST", f"{PREFIX}/process.Process/{method}"): action
       for method, action in envd.ACTIONS.items()},
    **{("POST", f"{PREFIX}/filesystem.Filesystem/{method}"): action
       for method, action in filesystem.ACTIONS.items()},
    ("POST", f"{PREFIX}/files"): "file.write",
    ("POST", "/files"): "file.write",
    **{(method, PREFIX + path): action for (method, path), action in interpreter.ACTIONS.items()},
}

__all__ = ["AUDITED", "PREFIX", "ErrorShape", "TokenAuth", "create_app",
           "install_signed_files", "is_upload", "templates"]


def is_upload(scope: Scope) -> bool:
    """Whether a request's body is read as it comes, by its route, under bounds of its own
    (exempt from the whole-body ones): an E2B file upload (the sandbox's disk bounds it),
    or ``StreamInput``'s client stream (each envelope bounded; input typed in as it
    arrives, for as long as the process runs)."""
    return files.is_upload(scope, PREFIX) or (
        scope.get("method") == "POST"
        and scope.get("path") == f"{PREFIX}/process.Process/StreamInput")


def create_app(sandboxes: SandboxService, commands: CommandService, files_: FileService,
               tokens: mapping.Tokens, snapshots: SnapshotService, sampler: MetricsSampler,
               *,
               internet: bool = False,
               public_images: Callable[[], list[str]] = list) -> FastAPI:
    """The sub-app to mount at :data:`PREFIX` (no schema, no docs pages of its own);
    ``internet``: whether a create that says nothing of the network gets ``"all"``;
    ``public_images``: the built public images (whether ``code-interpreter-v1`` gets the
    ``code-interpreter`` image, see :func:`mapping.image_of`)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.sandboxes = sandboxes
    app.state.commands = commands
    app.state.files = files_
    app.state.tokens = tokens
    app.state.snapshots = snapshots
    app.state.internet = internet
    app.state.sampler = sampler
    app.state.public_images = public_images
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(envd.router)
    app.include_router(filesystem.router)
    app.include_router(files.router)
    app.state.watchers = watch.Watchers(sandboxes)
    app.include_router(watch.router)
    app.include_router(interpreter.router)
    # Last: what no router above serves of envd's filesystem service is unimplemented.
    app.include_router(filesystem.fallback)
    return app


def install_signed_files(parent: FastAPI) -> None:
    """Serve ``/files`` at ``parent``'s root too, for signed URLs: the SDKs build them on
    the origin, without the mount's prefix (docs/research/e2b-protocol.md §5.7). The
    parent's state must hold ``sandboxes`` and ``files``."""
    parent.add_api_route(files.ROUTE, files.download, methods=["GET"],
                         include_in_schema=False)
    parent.add_api_route(files.ROUTE, files.upload, methods=["POST"],
                         include_in_schema=False)


def templates() -> list[str]:
    """The path templates of the sub-app's routes as the parent sees them, mounted (for
    route labels in metrics and the audit trail)."""
    return list(dict.fromkeys(PREFIX + r.path
                              for r in [*routes.router.routes, *envd.router.routes,
                                        *filesystem.router.routes, *files.router.routes,
                                        *watch.router.routes, *interpreter.router.routes,
                                        *filesystem.fallback.routes]
                              if isinstance(r, APIRoute))) + [files.ROUTE]
