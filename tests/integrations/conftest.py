"""One real ``corral serve --tls`` for the integration tests: uvicorn on 127.0.0.1 over
HTTPS with a certificate from the server's own CA (Semantic Kernel's ``SessionsPythonTool``
accepts only ``https://`` endpoints), tenants ``alpha`` and ``beta``, a short dynamic-sessions
cooldown, and every response checked against the server's OpenAPI document.

The frameworks are the real published packages (``semantic-kernel``, ``agent-framework-core``,
``mcp``); no model is reachable, so agents are driven by scripted chat clients that emit
real function calls (:mod:`tests.integrations._scripted`).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.settings import AcaSettings
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from corral.server.tls import ensure_tls
from tests.conftest import IMAGE_DIR, sandbox_data_dir
from tests.server._serving import serving
from tests.server._spec import SpecCheck

#: Seconds a dynamic session may go unused here before its sandbox is stopped.
COOLDOWN = 120.0


@dataclass(frozen=True)
class Corral:
    url: str  # https://127.0.0.1:PORT
    ca: Path  # the CA certificate to trust
    key: str  # tenant alpha
    other_key: str  # tenant beta
    spec_check: SpecCheck

    def pool(self, name: str = "default") -> str:
        """The pool-management endpoint a dynamic-sessions client is given."""
        return f"{self.url}/aca/{name}/"

    def ssl(self) -> ssl.SSLContext:
        """A client context trusting Corral's CA (verification stays on)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def http(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}", **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, verify=self.ssl(),
                            timeout=120.0, **kwargs)

    def sdk(self, key: str | None = None) -> dict[str, Any]:
        return {"url": self.url, "api_key": key or self.key, "ca_file": str(self.ca)}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def corral(python_image: str) -> Iterator[Corral]:
    with sandbox_data_dir("corral-integrations-") as data_dir:
        settings = ServerSettings(
            node=NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR), port=0, tls=True,
            keep_sandboxes=False, aca=AcaSettings(pools={"default": python_image,
                                                         "second": python_image},
                                                  cooldown=COOLDOWN, lifetime=900))
        files = ensure_tls(settings.tls_dir, settings.tls_names)
        keys = KeyStore(open_engine(database_url(data_dir, None)))
        alpha, beta = keys.create("alpha"), keys.create("beta")
        spec_check = SpecCheck(create_app(settings))
        with serving(spec_check, scheme="https", ssl_keyfile=str(files.key),
                     ssl_certfile=str(files.cert)) as url:
            yield Corral(url=url, ca=files.ca_cert, key=alpha.key, other_key=beta.key,
                         spec_check=spec_check)
        spec_check.fail_if_off_spec()


@pytest.fixture(autouse=True)
def responses_match_spec(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose server responses stray from the published OpenAPI document."""
    yield
    if "corral" not in request.fixturenames:
        return
    corral: Corral = request.getfixturevalue("corral")
    corral.spec_check.fail_if_off_spec()
