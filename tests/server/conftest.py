"""A real ``corral serve`` for the session: uvicorn on 127.0.0.1 and a free port, in a thread,
on a data dir of its own (mode 0711: namespaces sandboxes' uids traverse it) and the shared
image dir, so the built ``python`` image is reused. Tests drive it over HTTP with the SDK.

Every response the server sends is checked against its own OpenAPI document
(:class:`tests.server._spec.SpecCheck`); a test whose calls got an undocumented status or a
body off its schema fails in teardown.

Keys: tenant ``alpha`` (the tests' own), tenant ``beta`` (the other tenant, who must see
nothing of alpha's), and a revoked key of alpha's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import Sandbox
from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._db import BACKENDS, fresh_database
from ._serving import serving
from ._spec import SpecCheck

#: Seconds between two metrics samples: short, so tests see samples soon.
METRICS_INTERVAL = 0.5


@dataclass(frozen=True)
class Server:
    url: str
    keys: KeyStore
    key: str  # tenant alpha
    other_key: str  # tenant beta
    revoked_key: str  # alpha's, revoked
    spec_check: SpecCheck  # what the server answered that its OpenAPI document does not say

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def sdk(self) -> dict[str, Any]:
        """The SDK's connection arguments for tenant alpha."""
        return {"url": self.url, "api_key": self.key}


@pytest.fixture(scope="session")
def server_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-server-test-") as path:
        yield path


@pytest.fixture(scope="session")
def server(server_dir: Path, python_image: str) -> Iterator[Server]:
    settings = ServerSettings(node=NodeSettings(data_dir=server_dir, image_dir=IMAGE_DIR),
                              port=0, metrics_interval=METRICS_INTERVAL)
    keys = KeyStore(open_engine(database_url(server_dir, None)))
    alpha, beta, revoked = keys.create("alpha"), keys.create("beta"), keys.create("alpha")
    keys.revoke(revoked.id)
    spec_check = SpecCheck(create_app(settings))
    with serving(spec_check) as url:
        yield Server(url=url, keys=keys, key=alpha.key,
                     other_key=beta.key, revoked_key=revoked.key, spec_check=spec_check)
        spec_check.fail_if_off_spec()


@pytest.fixture(autouse=True)
def responses_match_spec(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose server responses stray from the published OpenAPI document."""
    yield
    if "server" not in request.fixturenames:
        return
    server: Server = request.getfixturevalue("server")
    server.spec_check.fail_if_off_spec()


@pytest.fixture
def sandbox(server: Server, runtime: str) -> Iterator[Sandbox]:
    """A fresh sandbox of tenant alpha on each runtime, killed after the test."""
    with Sandbox.create("python", runtime=runtime, timeout=600, **server.sdk()) as sb:
        yield sb


@pytest.fixture
def default_sandbox(server: Server) -> Iterator[Sandbox]:
    """A sandbox on the server's default runtime (for tests about the API, not runtimes)."""
    with Sandbox.create("python", timeout=600, metadata={"suite": "server"},
                        **server.sdk()) as sb:
        yield sb


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is exactly ``{"error": {"code", "message"}}`` with this status and code;
    returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each store backend (SQLite; PostgreSQL when one is given)."""
    with fresh_database(str(request.param), tmp_path) as url:
        yield url
