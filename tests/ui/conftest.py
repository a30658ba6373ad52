"""The console in a real browser: Debian's chromium (``/usr/bin/chromium``, headless),
driven by Playwright's Python package (its own browser downloads are never used), against
a real ``corral serve`` in-process (:mod:`tests.server.conftest`) and real sandboxes.

Each test saves screenshots in ``$CORRAL_SCREENSHOTS`` (default: ``screenshots/`` under
pytest's base temporary folder, which pytest keeps for the last three runs); the folder is
printed at the end of the run. The tests skip where chromium or Playwright is missing
(``scripts/install --test`` installs both)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import Sandbox
from tests.server import conftest as served
from tests.server.conftest import Server

# The server's fixtures, shared with tests/server (pytest finds fixtures by these names).
server_dir = served.server_dir
server = served.server
responses_match_spec = served.responses_match_spec

CHROMIUM = Path(os.environ.get("CORRAL_CHROMIUM", "/usr/bin/chromium"))
#: How long a condition may take to come true in the page (a sandbox start, a sample).
WAIT_MS = 90_000
_SAVED: list[Path] = []


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("CORRAL_SCREENSHOTS")
                  or tmp_path_factory.getbasetemp() / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    _SAVED.append(folder)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module's tests. Not for the whole session: Playwright's sync API
    keeps an asyncio loop running in the main thread while it is open, and later tests
    that run a loop of their own (asyncio.run, anyio) could not."""
    if not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"no chromium at {CHROMIUM} (scripts/install --test installs Debian's)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing (scripts/install --test installs it)")
    from playwright.sync_api import expect
    expect.set_options(timeout=WAIT_MS)  # conditions in the page, waited for up to this
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


class Console:
    """One browser context (its own cookies) on the console, and what its page reported."""

    def __init__(self, context: Any, server: Server, folder: Path, test: str) -> None:
        self.context = context
        self.server = server
        self.page = context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.folder = folder
        self.test = re.sub(r"[^A-Za-z0-9_.-]+", "-", test)
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))

    def open(self, route: str = "") -> None:
        self.page.goto(f"{self.server.url}/ui{'#' + route if route else ''}")

    def log_in(self, key: str) -> None:
        from playwright.sync_api import expect
        self.open()
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.get_by_role("button", name="Log out")).to_be_visible()

    def shot(self, name: str, *, full_page: bool = True) -> Path:
        path = self.folder / f"{self.test}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def console(browser: Any, server: Server, screenshots: Path,
            request: pytest.FixtureRequest) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  accept_downloads=True)
    opened = Console(context, server, screenshots, request.node.name)
    yield opened
    context.close()
    # The page ran under the server's strict CSP: nothing of it may have been refused.
    refused = [p for p in opened.problems if "Content Security Policy" in p or "uncaught" in p]
    assert not refused, refused


@pytest.fixture
def sandbox(server: Server) -> Iterator[Sandbox]:
    """A sandbox of tenant alpha on the server's default runtime, killed after the test."""
    with Sandbox.create("python", timeout=600, metadata={"suite": "ui"}, **server.sdk()) as sb:
        yield sb


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _SAVED:
        terminalreporter.write_line(f"console screenshots: {folder}")
