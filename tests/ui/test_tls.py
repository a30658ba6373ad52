"""The console over HTTPS (``corral serve --tls``), in chromium: the cookie is ``Secure``
and the terminal's WebSocket is ``wss://`` to the same origin.

The browser is told to accept the server's certificate (``ignore_https_errors``): it is
signed by the server's own CA, which this chromium's trust store does not hold; the SDK,
which the test also uses, trusts that CA by its file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral import Sandbox
from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from corral.server.tls import ensure_tls
from tests.conftest import IMAGE_DIR, sandbox_data_dir
from tests.server._serving import serving

from .conftest import Console

expect = pytest.importorskip("playwright.sync_api").expect


@dataclass(frozen=True)
class HttpsServer:
    url: str
    key: str
    ca_file: str


@pytest.fixture(scope="module")
def https_server(python_image: str) -> Iterator[HttpsServer]:
    with sandbox_data_dir("corral-ui-tls-test-") as data_dir:
        settings = ServerSettings(node=NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR),
                                  port=0, tls=True)
        files = ensure_tls(settings.tls_dir, settings.tls_names)
        key = KeyStore(open_engine(database_url(data_dir, None))).create("alpha").key
        with serving(create_app(settings), scheme="https", ssl_keyfile=str(files.key),
                     ssl_certfile=str(files.cert)) as url:
            yield HttpsServer(url=url, key=key, ca_file=str(files.ca_cert))


def test_the_console_over_https(browser: Any, https_server: HttpsServer, screenshots: Path,
                                request: pytest.FixtureRequest) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  ignore_https_errors=True)
    console = Console(context, https_server, screenshots, request.node.name)  # type: ignore[arg-type]
    try:
        with Sandbox.create("python", timeout=600, url=https_server.url,
                            api_key=https_server.key, ca_file=https_server.ca_file) as sb:
            console.log_in(https_server.key)
            [cookie] = [c for c in context.cookies() if c["name"] == "corral_session"]
            assert cookie["secure"] and cookie["httpOnly"], cookie
            console.open(f"/sandboxes/{sb.id}/terminal")
            page = console.page
            expect(page.locator(".term-status")).to_have_attribute("data-state", "connected")
            page.locator(".term-box").click()
            page.keyboard.type("echo over-$((40 + 2))-tls\n")
            expect(page.locator(".xterm-rows")).to_contain_text(re.compile(r"over-42-tls"))
            console.shot("terminal")
    finally:
        context.close()
    refused = [p for p in console.problems if "Content Security Policy" in p or "uncaught" in p]
    assert not refused, refused
