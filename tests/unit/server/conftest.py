"""The server app on the fake runtime, served to the SDK in this process (no socket).

Every response is checked against the app's OpenAPI document (:class:`SpecCheck`), as
the socket-served server tests do. Tenants: ``alpha`` (the tests' own) and ``beta``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from corral.node import NodeSettings
from corral.sdk.testing import in_process
from corral.server import ServerSettings, create_app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from tests.fakes.runtime import FakeRuntime
from tests.server._spec import SpecCheck


@dataclass(frozen=True)
class Server:
    url: str
    key: str  # tenant alpha
    other_key: str  # tenant beta
    spec_check: SpecCheck

    def sdk(self, key: str | None = None) -> dict[str, Any]:
        """The SDK's connection arguments (tenant alpha's unless another key is given)."""
        return {"url": self.url, "api_key": key or self.key}


@pytest.fixture
async def server(node_settings: NodeSettings, fake_runtime: FakeRuntime
                 ) -> AsyncIterator[Server]:
    settings = ServerSettings(node=node_settings, port=0)
    engine = open_engine(database_url(node_settings.data_dir, None))
    keys = KeyStore(engine)
    alpha, beta = keys.create("alpha"), keys.create("beta")
    spec_check = SpecCheck(create_app(settings, runtimes={"fake": fake_runtime}))
    async with in_process(spec_check) as url:
        yield Server(url=url, key=alpha.key, other_key=beta.key, spec_check=spec_check)
    engine.dispose()
    spec_check.fail_if_off_spec()
