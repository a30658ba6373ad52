"""envd's ``/files`` and filesystem service under ``/e2b`` over HTTP, the edges the SDKs
do not reach (docs/research/e2b-protocol.md §5.4 – §5.7): refusals and their statuses,
uploads past the server's body bound, gzip both ways, signatures, and the watch methods
left unimplemented.

The real SDKs drive the same paths in test_e2b_sdk.py.
"""

from __future__ import annotations

import base64
import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from corral import Sandbox
from corral.server.e2b import signing

from .conftest import Server
from .test_e2b_control import assert_e2b_error, e2b_client
from .test_e2b_envd import envd

RPC = {"Connect-Protocol-Version": "1"}


@contextmanager
def e2b_sandboxes(server: Server, count: int) -> Iterator[list[dict[str, Any]]]:
    """``count`` sandboxes of tenant alpha's made through E2B's create (id, token...)."""
    with e2b_client(server, server.key) as control:
        made: list[dict[str, Any]] = []
        try:
            for _ in range(count):
                created = control.post("/v2/sandboxes", json={"templateID": "base"})
                assert created.status_code == 201, created.text
                made.append(created.json())
            yield made
        finally:
            for body in made:
                control.delete(f"/sandboxes/{body['sandboxID']}")


@pytest.fixture
def box(server: Server) -> Iterator[dict[str, Any]]:
    with e2b_sandboxes(server, 1) as made:
        yield made[0]


def rpc(client: httpx.Client, method: str, message: dict[str, Any],
        user: str | None = None) -> httpx.Response:
    headers = dict(RPC)
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
    return client.post(f"/filesystem.Filesystem/{method}", json=message, headers=headers)


def test_uploads_answer_what_they_wrote(server: Server, box: dict[str, Any]) -> None:
    big = os.urandom(5 * 1024 * 1024 + 11)  # past the 1 MiB body bound
    with envd(server, box) as client:
        answer = client.post("/files", files=[("file", ("/tmp/x/1.bin", big)),
                                              ("note", (None, b"skipped")),
                                              ("file", ("rel.txt", b"r"))])
        assert answer.status_code == 200, answer.text
        assert answer.json() == [{"name": "1.bin", "type": "file", "path": "/tmp/x/1.bin"},
                                 {"name": "rel.txt", "type": "file",
                                  "path": "/home/user/rel.txt"}]
        assert client.get("/files", params={"path": "/tmp/x/1.bin"}).content == big

        packed = gzip.compress(b"z" * 300_000)
        answer = client.post("/files", params={"path": "g.txt", "username": "root"},
                             content=packed, headers={
                                 "Content-Type": "application/octet-stream",
                                 "Content-Encoding": "gzip"})
        assert answer.json() == [{"name": "g.txt", "type": "file", "path": "/root/g.txt"}]
        down = client.get("/files", params={"path": "/root/g.txt"},
                          headers={"Accept-Encoding": "gzip"})
        assert down.headers["content-encoding"] == "gzip"
        assert down.content == b"z" * 300_000  # httpx undid the gzip
        stat = rpc(client, "Stat", {"path": "/root/g.txt"}).json()["entry"]
        assert (stat["owner"], stat["size"]) == ("root", "300000")


@pytest.mark.parametrize(("method", "kwargs", "status", "words"), [
    ("get", {"params": {"path": "/nope"}}, 404, "nope"),
    ("get", {"params": {"path": "/tmp"}}, 400, "directory"),
    ("get", {"params": {}}, 400, "path"),
    ("get", {"params": {"path": "a", "username": "nobody2"}}, 401, "nobody2"),
    ("post", {"params": {"path": "/tmp"}, "content": b"x",
              "headers": {"Content-Type": "application/octet-stream"}}, 400, "directory"),
    ("post", {"params": {"path": "/a"}, "content": b"x",
              "headers": {"Content-Type": "text/plain"}}, 400, "octet-stream"),
    ("post", {"params": {"path": "/a"}, "content": b"x", "headers": {
        "Content-Type": "application/octet-stream", "Content-Encoding": "br"}}, 400, "br"),
    ("post", {"files": [("file", ("/a", b"1")), ("file", ("/a", b"2"))]}, 400, "two parts"),
    ("post", {"params": {"path": "/a"}, "files": [("file", ("/a", b"1")),
                                                  ("file", ("/b", b"2"))]}, 400, "one file"),
    ("post", {"files": [("other", ("/a", b"1"))]}, 400, "no part named"),
    ("post", {"params": {"path": "/a"}, "content": b"x", "headers": {
        "Content-Type": "application/octet-stream", "X-Metadata-k": "v"}}, 400, "metadata"),
])
def test_refusals_have_envd_statuses(server: Server, box: dict[str, Any], method: str,
                                     kwargs: dict[str, Any], status: int, words: str) -> None:
    with envd(server, box) as client:
        answer = getattr(client, method)("/files", **kwargs)
    assert words in assert_e2b_error(answer, status)


def test_a_full_disk_is_507(server: Server) -> None:
    with Sandbox.create("python", timeout=300, resources={"disk": "16M"},
                        **server.sdk()) as sb, e2b_client(server, server.key) as control:
        token = control.post(f"/sandboxes/{sb.id}/connect", json={"timeout": 300}).json()
        with envd(server, token) as client:
            answer = client.post("/files", params={"path": "/home/user/fill.bin"},
                                 content=b"\0" * (64 * 1024 * 1024),
                                 headers={"Content-Type": "application/octet-stream"})
        assert_e2b_error(answer, 507)
        assert not sb.files.exists("/home/user/fill.bin")  # nothing half-written


def test_tokens_and_signatures(server: Server, box: dict[str, Any]) -> None:
    sid, token = box["sandboxID"], box["envdAccessToken"]
    with envd(server, box) as client:
        client.post("/files", files=[("file", ("/tmp/s.txt", b"signed"))])
    query = {"path": "/tmp/s.txt", "signature": signing.signature(
        "/tmp/s.txt", "read", "", token, None)}
    with httpx.Client(base_url=server.url, timeout=60) as plain:
        assert plain.get("/e2b/files", params=query,
                         headers={"E2b-Sandbox-Id": sid}).content == b"signed"
        assert plain.get("/files", params=query).content == b"signed"  # the SDKs' form
        # a signature is for one operation, path and user; the token is not one
        for bad in ({**query, "path": "/tmp/other"}, {**query, "username": "root"},
                    {"path": "/tmp/s.txt", "signature": signing.signature(
                        "/tmp/s.txt", "read", "", "not-the-token", None)}):
            assert_e2b_error(plain.get("/e2b/files", params=bad,
                                       headers={"E2b-Sandbox-Id": sid}), 401)
            assert_e2b_error(plain.get("/files", params=bad), 401)
        assert_e2b_error(plain.post("/files", params=query, content=b"x", headers={
            "Content-Type": "application/octet-stream"}), 401)
        assert_e2b_error(plain.get("/files", params={"path": "/tmp/s.txt"}), 401)
        # at the root, a token alone is not enough: the mount serves those
        assert "signed URLs only" in assert_e2b_error(plain.get(
            "/files", params={"path": "/tmp/s.txt"},
            headers={"E2b-Sandbox-Id": sid, "X-Access-Token": token}), 401)
    with envd(server, box, token="0" * 64) as wrong:
        assert_e2b_error(wrong.get("/files", params={"path": "/tmp/s.txt"}), 401)
        assert rpc(wrong, "Stat", {"path": "/tmp"}).status_code == 401


def test_the_filesystem_service(server: Server, box: dict[str, Any]) -> None:
    with envd(server, box) as client:
        made = rpc(client, "MakeDir", {"path": "a/b"}).json()["entry"]
        assert (made["path"], made["type"], made["owner"]) == (
            "/home/user/a/b", "FILE_TYPE_DIRECTORY", "user")
        assert made["permissions"].startswith("d")
        again = rpc(client, "MakeDir", {"path": "a/b"})
        assert again.status_code == 409 and again.json()["code"] == "already_exists"
        as_root = rpc(client, "MakeDir", {"path": "/srv/r"}, user="root").json()["entry"]
        assert as_root["owner"] == "root"
        moved = rpc(client, "Move", {"source": "a", "destination": "new/a"}).json()
        assert moved["entry"]["path"] == "/home/user/new/a"  # its parent made on the way
        listed = rpc(client, "ListDir", {"path": "new", "depth": 2}).json()["entries"]
        assert [e["path"] for e in listed] == ["/home/user/new/a", "/home/user/new/a/b"]
        assert rpc(client, "Remove", {"path": "new"}).json() == {}
        assert rpc(client, "Remove", {"path": "new"}).json() == {}  # gone: no error
        missing = rpc(client, "Stat", {"path": "new"})
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        for bad in ({"path": ""}, {"path": "/tmp", "depth": 99}):
            answer = rpc(client, "ListDir", bad)
            assert answer.json()["code"] == "invalid_argument", answer.text
        unknown = rpc(client, "Stat", {"path": "/tmp"}, user="nobody2")
        assert unknown.json()["code"] == "unauthenticated"
        # the watch methods reach their own module, ahead of the service's fallback; a
        # relative path starts at the user's home there too
        rpc(client, "MakeDir", {"path": "/root/watched"}, user="root")
        created = rpc(client, "CreateWatcher", {"path": "watched"}, user="root")
        assert created.status_code == 200, created.text
        assert rpc(client, "RemoveWatcher", created.json()).json() == {}
        answer = rpc(client, "Nope", {"path": "/tmp"})
        assert answer.status_code == 501 and answer.json()["code"] == "unimplemented"
        assert "no such method" in answer.json()["message"]


@pytest.fixture
def two_boxes(server: Server) -> Iterator[list[dict[str, Any]]]:
    with e2b_sandboxes(server, 2) as made:
        yield made


def test_a_root_signature_finds_its_own_sandbox_among_several(
        server: Server, two_boxes: list[dict[str, Any]]) -> None:
    for n, body in enumerate(two_boxes):
        with envd(server, body) as client:
            client.post("/files", files=[("file", ("/tmp/w.txt", f"box{n}".encode()))])
    with httpx.Client(base_url=server.url, timeout=60) as plain:
        for n, body in enumerate(two_boxes):
            query = {"path": "/tmp/w.txt", "signature": signing.signature(
                "/tmp/w.txt", "read", "", body["envdAccessToken"], None)}
            assert plain.get("/files", params=query).content == f"box{n}".encode()
