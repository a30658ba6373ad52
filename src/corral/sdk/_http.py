"""The SDK's HTTP client: configuration, requests, and error bodies back into exceptions.

Every error the server answers is ``{"error": {"code", "message"}}``; :func:`error_of`
turns it into the same class the server raised (:func:`corral.api.errors.error_from_code`).
A response without that body (a proxy's 502, say) maps by status through the shared
table; a connection failure is a :class:`corral.SandboxError` naming the URL. An answer
that says nothing was done (``429 rate_limited``, ``503 unavailable``) is sent again after
its ``Retry-After``, a bounded number of times (:mod:`corral.sdk._retry`).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import anyio
import httpx
from pydantic import BaseModel, ValidationError

from corral import __version__
from corral.api.errors import (
    AuthenticationError,
    InvalidArgumentError,
    SandboxError,
    code_for_status,
    error_from_code,
)
from corral.api.models import ErrorBody

from ._retry import Retries, check_max_retries, parse_retry_after, retryable

DEFAULT_URL = "http://127.0.0.1:8470"
#: Seconds to wait for an ordinary answer; command and file calls set their own.
DEFAULT_TIMEOUT = 60.0
#: How long a create may take (the first start of an image can be slow).
CREATE_TIMEOUT = 180.0

Params = Mapping[str, str | int | float | bool]
#: Servers in this process, by URL: filled only by :mod:`corral.sdk.testing`, under
#: ``.invalid`` URLs (RFC 2606: no real host has one), so it is empty in production.
IN_PROCESS: dict[str, httpx.AsyncBaseTransport] = {}


def segment(value: object, what: str = "id") -> str:
    """``value`` as one segment of a request's path: percent-encoded, and never empty,
    ``.`` or ``..``, which a URL resolves into another route (``connect("../keys")`` would
    otherwise ask for ``/v1/keys``)."""
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise InvalidArgumentError(f"{str(value)[:80]!r} is not a valid {what}")
    return quote(value, safe="")


def error_of(response: httpx.Response) -> SandboxError:
    """The exception an error response stands for (with the server's ``Retry-After``)."""
    body = _error_body(response)
    if body is None:
        text = response.text[:300].strip() or response.reason_phrase
        error = error_from_code(code_for_status(response.status_code),
                                f"HTTP {response.status_code} from {response.url}: {text}")
    else:
        error = error_from_code(body.error.code, body.error.message)
    error.retry_after = parse_retry_after(response.headers.get("retry-after"))
    return error


def _error_body(response: httpx.Response) -> ErrorBody | None:
    try:
        return ErrorBody.model_validate_json(response.content)
    except ValidationError:
        return None


def _replayable(content: Any) -> bool:
    """Whether a request body can be sent again: none, or bytes (not a one-shot iterator)."""
    return content is None or isinstance(content, (bytes, bytearray, memoryview, str))


@contextlib.contextmanager
def transport_errors(url: str) -> Iterator[None]:
    """Turn httpx's connection and protocol errors into :class:`SandboxError`."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise SandboxError(f"talking to the Corral server at {url} failed: "
                           f"{type(exc).__name__}: {exc}") from exc


def tls_context(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext | bool:
    """What verifies the server: an SSL context trusting ``ca_file`` (or
    ``CORRAL_CA_FILE``) when one is given, else httpx's default (verification on)."""
    path = ca_file or os.environ.get("CORRAL_CA_FILE") or None
    if path is None:
        return True
    try:
        return ssl.create_default_context(cafile=os.fspath(path))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgumentError(f"loading the CA file {os.fspath(path)}: {exc}") from exc


def checked(model: type[BaseModel], **fields: Any) -> Any:
    """Build a request model, reporting a bad argument as :class:`InvalidArgumentError`."""
    try:
        return model(**fields)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                           for e in exc.errors()[:5])
        raise InvalidArgumentError(detail) from None


class ApiClient:
    """One connection pool to one server with one key.

    Args:
        url: the server (default ``CORRAL_URL``, else ``http://127.0.0.1:8470``).
        api_key: the key (default ``CORRAL_API_KEY``); ``corral keys create`` makes one.
        ca_file: PEM certificates to verify an ``https://`` server against instead of the
            usual trust store (default ``CORRAL_CA_FILE``): the ``ca.pem`` that
            ``corral serve --tls`` prints. Verification is never turned off.
        transport: what carries the requests instead of a connection to ``url`` (an
            in-process server, :mod:`corral.sdk.testing`); default: the network, unless
            ``url`` names a server registered in this process.
        max_retries: times a request refused before the server did anything (``429`` or
            ``503`` with ``Retry-After``) is sent again, from 0 (never) to 10; default 3.
            The waits follow ``Retry-After``, back off exponentially with jitter, and add
            up to at most 30 s a call (:mod:`corral.sdk._retry` says which answers).
    """

    def __init__(self, url: str | None = None, api_key: str | None = None,
                 ca_file: str | os.PathLike[str] | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 max_retries: int | None = None) -> None:
        self.retries = Retries(check_max_retries(max_retries))
        self.url = (url or os.environ.get("CORRAL_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("CORRAL_API_KEY")
        if not key:
            raise AuthenticationError("no API key: pass api_key= or set CORRAL_API_KEY "
                                      "(`corral keys create` makes one)")
        self._client = httpx.AsyncClient(
            base_url=self.url, verify=tls_context(ca_file),
            transport=transport or IN_PROCESS.get(self.url),
            timeout=httpx.Timeout(DEFAULT_TIMEOUT, connect=10.0),
            headers={"Authorization": f"Bearer {key}",
                     "User-Agent": f"corral-python/{__version__}"})

    def __repr__(self) -> str:  # never the key
        return f"ApiClient(url={self.url!r})"

    async def call(self, method: str, path: str, *, body: BaseModel | None = None,
                   params: Params | None = None, content: Any = None,
                   read_timeout: float | None = DEFAULT_TIMEOUT) -> httpx.Response:
        """Send a request and return its (successful) response, read in full."""
        request = self._build(method, path, body, params, content, read_timeout)
        return await self._send(request, stream=False, replayable=_replayable(content))

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        return json.loads(response.content)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, *, body: BaseModel | None = None,
                     params: Params | None = None) -> AsyncIterator[httpx.Response]:
        """A response whose body is read as it arrives (no read timeout)."""
        request = self._build(method, path, body, params, None, None)
        response = await self._send(request, stream=True, replayable=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(self, request: httpx.Request, *, stream: bool,
                    replayable: bool) -> httpx.Response:
        """Send ``request`` until it succeeds or its error is not to be retried
        (:mod:`corral.sdk._retry`); a successful streamed response is returned unread."""
        attempt, waited = 0, 0.0
        while True:
            with transport_errors(self.url):
                response = await self._client.send(request, stream=stream)
                if not response.is_error:
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            error = error_of(response)
            wait = None
            if replayable and retryable(error, response.status_code, request.method,
                                        _error_body(response) is not None):
                wait = self.retries.wait(attempt, waited, error)
            if wait is None:
                raise error
            await anyio.sleep(wait)
            attempt, waited = attempt + 1, waited + wait

    def _build(self, method: str, path: str, body: BaseModel | None, params: Params | None,
               content: Any, read_timeout: float | None) -> httpx.Request:
        headers = {}
        if body is not None:
            content = body.model_dump_json(exclude_none=True).encode()
            headers["Content-Type"] = "application/json"
        return self._client.build_request(
            method, path, params=dict(params) if params else None, content=content,
            headers=headers, timeout=httpx.Timeout(DEFAULT_TIMEOUT, connect=10.0,
                                                   read=read_timeout))

    async def aclose(self) -> None:
        await self._client.aclose()
