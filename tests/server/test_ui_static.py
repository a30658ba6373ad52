"""The console's page and assets against a real server: served without a key, with a strict
CSP, nosniff, no-referrer and no framing; immutable caching for hashed names only; nothing
outside ``dist/assets`` reachable, however the path is spelled."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.routes.console import CSP
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._serving import serving
from ._spec import SpecCheck
from .conftest import Server, assert_error

HASHED = "index-3f9A1c2b.js"
SECRET = "not-an-asset-7c1e"
EXPECTED_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                "img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'; "
                "base-uri 'none'; form-action 'self'")


@pytest.fixture(scope="module")
def console(python_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose console files are the test's own (a hashed and a plain asset, and
    files beside and above ``assets`` that must stay out of reach)."""
    root = tmp_path_factory.mktemp("console")
    dist = root / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>Corral console (test)</title>")
    (dist / "assets" / HASHED).write_text("export const a = 1;\n")
    (dist / "assets" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (dist / "assets" / "notes.unknown").write_text(SECRET)
    (dist / "secret.js").write_text(SECRET)
    (root / "secret.js").write_text(SECRET)
    (dist / "assets" / "link.js").symlink_to(dist / "secret.js")
    with sandbox_data_dir("corral-ui-test-") as data_dir:
        settings = ServerSettings(node=NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR),
                                  port=0)
        with serving(SpecCheck(create_app(settings, ui_dist=dist))) as url:
            yield url


def _raw(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _assert_protected(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == EXPECTED_CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def test_the_packaged_page_needs_no_key(server: Server) -> None:
    assert CSP == EXPECTED_CSP
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        for path in ("/ui", "/ui/"):
            page = client.get(path)
            assert page.status_code == 200, page.text
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert "<title>Corral console" in page.text
            _assert_protected(page)
            assert page.headers["cache-control"] == "no-cache"
        assert client.head("/ui").status_code == 200
        # Only the page, its assets and the login are open: the rest of /ui needs a key.
        for method, path in (("GET", "/ui/api/session"), ("POST", "/ui"),
                             ("GET", "/ui/api/elsewhere"), ("GET", "/uix")):
            assert_error(client.request(method, path), 401, "unauthenticated")


def test_assets_and_their_caching(console: str) -> None:
    with httpx.Client(base_url=console, timeout=60.0) as client:
        hashed = client.get(f"/ui/assets/{HASHED}")
        assert hashed.status_code == 200 and hashed.text == "export const a = 1;\n"
        assert hashed.headers["content-type"] == "text/javascript; charset=utf-8"
        assert hashed.headers["cache-control"] == "public, max-age=31536000, immutable"
        _assert_protected(hashed)
        plain = client.get("/ui/assets/logo.svg")
        assert plain.status_code == 200
        assert plain.headers["content-type"] == "image/svg+xml"
        assert plain.headers["cache-control"] == "no-cache"
        _assert_protected(plain)
        page = client.get("/ui/")
        assert page.status_code == 200 and "Corral console (test)" in page.text
        missing = client.get("/ui/assets/nothing-here.js")
        assert_error(missing, 404, "not_found")
        _assert_protected(missing)


@pytest.mark.parametrize("path", [
    "/ui/assets/../secret.js",
    "/ui/assets/../../secret.js",
    "/ui/assets/..%2fsecret.js",
    "/ui/assets/..%2F..%2Fsecret.js",
    "/ui/assets/%2e%2e/secret.js",
    "/ui/assets/%2e%2e%2fsecret.js",
    "/ui/assets/..%5csecret.js",
    "/ui/assets/..",
    "/ui/assets/.",
    "/ui/assets/%2e%2e",
    "/ui/assets/link.js",
    "/ui/assets/notes.unknown",
    "/ui/assets/secret.js%00.js",
    "/ui/assets//secret.js",
    "/ui/assets/" + "a" * 200 + ".js",
    "/ui/../ui/assets/../secret.js",
])
def test_nothing_outside_the_assets_is_served(console: str, path: str) -> None:
    status, body = _raw(console, path)
    assert status in (401, 404), (status, body)
    assert SECRET.encode() not in body
