"""envd's ``/files`` under the mount (docs/research/e2b-protocol.md §5.6, §5.7): download
(GET) and upload (POST) over Corral's :class:`FileService`, streamed both ways.

* GET ``?path=&username=``: the file's bytes; gzip-compressed as they stream when the
  request's ``Accept-Encoding`` names gzip.
* POST ``multipart/form-data``: each part named ``file`` is a file whose ``filename`` is
  its path (``write_files``), or, with ``?path=``, the one part goes there (``write``);
  at most :data:`MAX_PARTS` files a request, no path twice. POST
  ``application/octet-stream``: the body is the file at ``?path=``, gunzipped as it
  arrives under ``Content-Encoding: gzip``. Either answers the JSON array of what was
  written, ``[{"name", "type": "file", "path"}]``, in order.
* Users: ``?username=`` (default E2B's ``user``, :mod:`.users`): relative paths start at
  its home, and the file and the parent directories created are its own.
* Bounds: uploads are exempt from the 1 MiB body bound and its 30 s whole-body deadline
  (:func:`is_upload`); the sandbox's disk bounds them (507 when it is full) and a body
  that pauses longer than the server's body idle timeout (60 s) is cut off. A gzip body is
  decompressed a chunk at a time (:data:`CHUNK` out at most per step), so a bomb costs the
  sandbox's disk, not the server's memory.
* Errors: E2B's ``{"code": <status>, "message"}``: 400 (bad request, a directory as the
  target), 401 (no valid token or signature, unknown user), 404 (no such file), 502 (the
  sandbox is gone), 507 (no space left).
* ``X-Metadata-*`` headers (file metadata kept in ``user.e2b.*`` extended attributes)
  are refused with 400: Corral's agent does not set extended attributes.

Signed URLs (§5.7) stand in for ``X-Access-Token``: ``signature`` is ``v1_`` and the
unpadded base64 SHA-256 of ``path:operation:username:token[:expiration]`` over the
sandbox's envd token, checked by :class:`.envd.TokenAuth` (:mod:`.signing`). The SDKs
build them on the server's root, dropping the ``/e2b`` prefix and naming no sandbox, so
the same routes also answer ``/files`` at the root (signed requests only); a signature
that names no sandbox is tried against each live sandbox's token, at most
:data:`.signing.MAX_SIGNED_SCAN` of them (two SHA-256s each).
"""

from __future__ import annotations

import posixpath
import zlib
from collections.abc import AsyncIterator
from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Scope

from corral.api.errors import (ErrorCode, InvalidArgumentError, SandboxError, http_status)
from corral.api.limits import MAX_PATH

from ..services import FileService
from ..services._multipart import file_parts
from . import users
from .filesystem import sandbox_of
from .mapping import SIGNED_FILES
from .signing import SIGNED_SCOPE

router = APIRouter()
ROUTE: Final = SIGNED_FILES
#: Most files one multipart upload may carry.
MAX_PARTS: Final = 256
#: Bytes a gzip body's decompression yields per step.
CHUNK: Final = 256 * 1024
MODE: Final = 0o644


def is_upload(scope: Scope, prefix: str) -> bool:
    """Whether a request is an E2B upload (under ``prefix`` or, signed, at the root),
    whose body the sandbox's disk bounds rather than the server's body bound."""
    path = scope.get("path", "")
    return scope.get("method") == "POST" and path in (prefix + ROUTE, ROUTE)


# -- the routes --------------------------------------------------------------------------

def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def _refusal(exc: SandboxError) -> JSONResponse:
    """Corral's error as envd's: a full disk is 507."""
    code = ErrorCode(exc.code)
    if code == ErrorCode.RESOURCE_EXHAUSTED and "disk" in exc.message:
        return error(507, exc.message)
    return error(http_status(code), exc.message)


def _gone(request: Request) -> JSONResponse:
    sandbox_id = request.headers.get("e2b-sandbox-id", "")[:64]
    return error(502, f"The sandbox {sandbox_id} was not found")


def _path(request: Request) -> str | None:
    """The ``path`` query parameter, if given."""
    path = request.query_params.get("path")
    if not path:
        return None
    if len(path) > MAX_PATH or "\0" in path:
        raise InvalidArgumentError(f"path must be at most {MAX_PATH} characters, no NUL")
    return path


def _required(path: str | None) -> str:
    if path is None:
        raise InvalidArgumentError("the path query parameter is required")
    return path


async def _account(request: Request, files: FileService, tenant: str,
                   sandbox_id: str) -> users.Account:
    username = request.query_params.get("username") or None
    if username is not None and len(username) > 64:
        raise InvalidArgumentError("username must be at most 64 characters")
    return (await users.load(files, tenant, sandbox_id)).named(username)


@router.get(ROUTE)
async def download(request: Request) -> Response:
    """The file at ``path`` (``username``'s home for a relative one), streamed."""
    found = sandbox_of(request)
    if found is None:
        return _gone(request)
    files: FileService = request.app.state.files
    try:
        path = _required(_path(request))
        account = await _account(request, files, *found)
        chunks = await files.read_stream(*found, account.resolve(path))
    except SandboxError as exc:
        return _refusal(exc)
    if accepts_gzip(request.headers.get("accept-encoding", "")):
        return StreamingResponse(_gzipped(chunks), media_type="application/octet-stream",
                                 headers={"Content-Encoding": "gzip"})
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.post(ROUTE)
async def upload(request: Request) -> Response:
    """Write the files of the body; answers what was written, in order."""
    found = sandbox_of(request)
    if found is None:
        return _gone(request)
    files: FileService = request.app.state.files
    try:
        if any(name.lower().startswith("x-metadata-") for name in request.headers):
            raise InvalidArgumentError(
                "file metadata (X-Metadata-* headers, kept by envd in user.e2b.* extended "
                "attributes) is not supported by Corral; write without metadata")
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        signed = bool(request.scope.get(SIGNED_SCOPE))
        path = _path(request)
        if signed or kind != "multipart/form-data":
            path = _required(path)  # a signature covers the path
        account = await _account(request, files, *found)
        if kind == "multipart/form-data":
            written = await _multipart(request, files, found, account, path)
        elif kind == "application/octet-stream":
            body = _decoded(request.stream(), request.headers.get("content-encoding", ""))
            target = account.resolve(_required(path))
            await files.write(*found, target, body, MODE, account.name)
            written = [target]
        else:
            raise InvalidArgumentError("uploads are multipart/form-data or "
                                       "application/octet-stream")
    except SandboxError as exc:
        return _refusal(exc)
    return JSONResponse([{"name": posixpath.basename(p) or "/", "type": "file", "path": p}
                         for p in written])


async def _multipart(request: Request, files: FileService, found: tuple[str, str],
                     account: users.Account, path: str | None) -> list[str]:
    """Each ``file`` part to its filename (or, with ``path``, the one part to ``path``)."""
    written: list[str] = []
    parts = file_parts(request.stream(), request.headers.get("content-type", ""),
                       max_parts=MAX_PARTS)
    async for part in parts:
        if path is not None and written:
            raise InvalidArgumentError("with a path query parameter, send one file part")
        name = path if path is not None else part.filename
        if not name or len(name) > MAX_PATH or "\0" in name:
            raise InvalidArgumentError(f"a part's filename must be a path of 1 to {MAX_PATH} "
                                       "characters, no NUL")
        target = account.resolve(name)
        if target in written:
            raise InvalidArgumentError(f"two parts write {target[:200]!r}")
        await files.write(*found, target, part.content, MODE, account.name)
        written.append(target)
    if not written:
        raise InvalidArgumentError("the upload has no part named 'file' with a filename")
    return written


async def _decoded(chunks: AsyncIterator[bytes], encoding: str) -> AsyncIterator[bytes]:
    """The body without its ``Content-Encoding`` (identity or gzip)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        async for chunk in chunks:
            yield chunk
        return
    if encoding != "gzip":
        raise InvalidArgumentError(f"Content-Encoding {encoding[:20]!r} is not accepted; "
                                   "send gzip or identity")
    inflate = zlib.decompressobj(wbits=31)
    try:
        async for chunk in chunks:
            pending = chunk
            while pending:
                yield inflate.decompress(pending, CHUNK)
                pending = inflate.unconsumed_tail
        rest = inflate.flush()
    except zlib.error:
        raise InvalidArgumentError("the gzip body is not valid gzip") from None
    if rest:
        yield rest
    if not inflate.eof:
        raise InvalidArgumentError("the gzip body ended early")


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value takes gzip (named, with a q-value above 0)."""
    for item in header.lower().split(",")[:32]:
        name, _, params = item.partition(";")
        if name.strip() != "gzip":
            continue
        quality = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        try:
            return float(quality) > 0
        except ValueError:
            return False
    return False


async def _gzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks gzip-compressed as they stream; level 1, since clients send
    ``Accept-Encoding: gzip`` by default and a download should not wait on the CPU."""
    deflate = zlib.compressobj(1, wbits=31)
    async for chunk in chunks:
        out = deflate.compress(chunk)
        if out:
            yield out
    yield deflate.flush()
