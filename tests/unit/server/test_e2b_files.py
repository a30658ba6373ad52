"""envd's file shapes without a server: EntryInfo, request fields, users, URL signatures,
many-part uploads and gzip bodies."""

from __future__ import annotations

import gzip
from typing import Any

import anyio
import pytest
from starlette.datastructures import QueryParams

from corral.api.errors import InvalidArgumentError
from corral.api.models import EntryInfo
from corral.server.e2b import files, filesystem, signing, users
from corral.server.e2b.connect import ConnectError
from corral.server.services._multipart import file_parts

PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "user:x:1000:1000::/home/user:/bin/bash\n"
          "broken line\n"
          "bad:x:notanumber:1::/x:/bin/sh\n"
          "user:x:2000:2000::/elsewhere:/bin/sh\n")  # a second 'user': the first wins
GROUP = "root:x:0:\nuser:x:1000:\nstaff:x:50:user\n"
ACCOUNTS = users.parse(PASSWD, GROUP)


def _entry(**fields: Any) -> EntryInfo:
    base: dict[str, Any] = {"name": "a.txt", "path": "/home/user/a.txt", "type": "file",
                            "size": 5, "mode": 0o644, "mtime": 1767225600.5, "uid": 1000,
                            "gid": 50}
    return EntryInfo.model_validate({**base, **fields})


def test_an_entry_reads_as_envd_writes_it() -> None:
    assert filesystem.entry_info(_entry(), ACCOUNTS) == {
        "name": "a.txt", "type": "FILE_TYPE_FILE", "path": "/home/user/a.txt", "size": "5",
        "mode": 0o644, "permissions": "-rw-r--r--", "owner": "user", "group": "staff",
        "modifiedTime": "2026-01-01T00:00:00.500000Z"}


def test_a_link_is_itself_with_its_target_and_unknown_ids_are_numbers() -> None:
    info = filesystem.entry_info(_entry(type="symlink", mode=0o777, target="/etc", uid=7,
                                        gid=8), ACCOUNTS)
    assert (info["type"], info["isSymlink"], info["symlinkTarget"]) == (
        "FILE_TYPE_SYMLINK", True, "/etc")
    assert (info["permissions"], info["owner"], info["group"]) == ("Lrwxrwxrwx", "7", "8")


@pytest.mark.parametrize(("kind", "mode", "text"), [
    ("dir", 0o755, "drwxr-xr-x"), ("file", 0o4755, "urwxr-xr-x"),
    ("dir", 0o1777, "dtrwxrwxrwx"), ("other", 0o600, "?rw-------"), ("file", 0, "----------")])
def test_permissions_are_go_file_mode_strings(kind: str, mode: int, text: str) -> None:
    assert filesystem.permissions(kind, mode) == text


def test_a_time_out_of_range_is_the_epoch() -> None:
    assert filesystem.timestamp(1e20) == "1970-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(("given", "depth"), [({}, 1), ({"depth": 0}, 1), ({"depth": 3}, 3),
                                               ({"depth": "2"}, 2)])
def test_depth_defaults_to_one(given: dict[str, Any], depth: int) -> None:
    assert filesystem.depth_field(given) == depth


@pytest.mark.parametrize("given", [{"depth": -1}, {"depth": True}, {"depth": 17},
                                   {"depth": "x"}, {"depth": 1.5}])
def test_a_bad_depth_is_invalid(given: dict[str, Any]) -> None:
    with pytest.raises(ConnectError) as caught:
        filesystem.depth_field(given)
    assert caught.value.code == "invalid_argument"


@pytest.mark.parametrize("given", [{}, {"path": ""}, {"path": 3}, {"path": "a\0b"},
                                   {"path": "x" * 5000}])
def test_a_bad_path_is_invalid(given: dict[str, Any]) -> None:
    with pytest.raises(ConnectError) as caught:
        filesystem.text_field(given, "path")
    assert caught.value.code == "invalid_argument"


def test_register_takes_only_the_services_methods() -> None:
    with pytest.raises(ValueError, match="no method"):
        filesystem.register("Nope", filesystem.call)  # type: ignore[arg-type]


def test_users_come_from_the_tables_and_relative_paths_from_home() -> None:
    assert ACCOUNTS.named(None) == users.Account("user", 1000, 1000, "/home/user")
    assert ACCOUNTS.named("root").resolve("a/b") == "/root/a/b"
    assert ACCOUNTS.named(None).resolve(".") == "/home/user"
    assert ACCOUNTS.named(None).resolve("/abs//x/../y") == "/abs/y"
    assert ACCOUNTS.named(None).resolve("../../..") == "/"
    with pytest.raises(InvalidArgumentError):
        ACCOUNTS.named(None).resolve("a\0b")
    with pytest.raises(users.UnknownUser):
        ACCOUNTS.named("nobody")


def test_an_image_without_the_default_user_falls_back_to_root() -> None:
    assert users.parse("", "").named(None) == users.Account("root", 0, 0, "/root")
    assert users.parse("", "").named("root").home == "/root"


# -- signatures --------------------------------------------------------------------------

TOKENS = {"sbx-a": "tok-a", "sbx-b": "tok-b"}


def _query(path: str, op: str, user: str, token: str, expiration: int | None
           ) -> QueryParams:
    fields = {"path": path, "signature": signing.signature(path, op, user, token, expiration)}
    if user:
        fields["username"] = user
    if expiration is not None:
        fields["signature_expiration"] = str(expiration)
    return QueryParams(fields)


def test_a_signature_finds_its_sandbox_among_the_live_ones() -> None:
    query = _query("/a", "read", "", "tok-b", 2000)
    assert signing.signed_by(query, "GET", TOKENS, TOKENS.__getitem__, now=1000) == "sbx-b"
    query = _query("a", "write", "root", "tok-a", None)
    assert signing.signed_by(query, "POST", TOKENS, TOKENS.__getitem__) == "sbx-a"


def test_the_sdks_signature_form() -> None:
    # sha256("/a:read::t") in unpadded standard base64 after "v1_", as the SDKs write it
    import base64
    import hashlib
    expected = "v1_" + base64.b64encode(hashlib.sha256(b"/a:read::t").digest()).decode()
    assert signing.signature("/a", "read", "", "t", None) == expected.rstrip("=")


@pytest.mark.parametrize(("query", "method", "why"), [
    (_query("/a", "read", "", "tok-a", 999), "GET", "expired"),
    (_query("/a", "read", "", "tok-a", None), "POST", "does not match"),
    (_query("/a", "read", "", "tok-c", None), "GET", "does not match"),
    (QueryParams({"path": "/a", "signature": "v1_short"}), "GET", "not a v1"),
    (QueryParams({**_query("/a", "read", "", "tok-a", None), "path": "/b"}), "GET",
     "does not match"),
    (QueryParams({**_query("/a", "read", "", "tok-a", 5), "signature_expiration": "-1"}),
     "GET", "unix seconds"),
])
def test_a_bad_signature_is_refused(query: QueryParams, method: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError, match=why):
        signing.signed_by(query, method, TOKENS, TOKENS.__getitem__, now=1000)


# -- bodies ------------------------------------------------------------------------------

def _chunks(body: bytes, size: int) -> Any:
    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), size):
            yield body[i:i + size]
    return chunks()


def _part(name: str, filename: str | None, content: bytes) -> bytes:
    disposition = f'form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else "")
    return (f"--B\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content
            + b"\r\n")


@pytest.mark.parametrize("size", [1, 5, 4096])
def test_every_file_part_in_order_other_parts_skipped(size: int) -> None:
    body = (_part("file", "/a", b"one\r\n--") + _part("note", None, b"x")
            + _part("file", "b/c", b"") + _part("file", "/d", b"three") + b"--B--\r\n")

    async def run() -> list[tuple[str, bytes]]:
        found = []
        async for part in file_parts(_chunks(body, size), "multipart/form-data; boundary=B"):
            if part.filename == "b/c":
                found.append((part.filename, b"(unread)"))
                continue  # left unread: skipped for the next
            found.append((part.filename, b"".join([c async for c in part.content])))
        return found
    assert anyio.run(run) == [("/a", b"one\r\n--"), ("b/c", b"(unread)"), ("/d", b"three")]


def test_parts_are_bounded() -> None:
    body = b"".join(_part("file", f"/{i}", b"x") for i in range(4)) + b"--B--\r\n"

    async def run() -> None:
        async for part in file_parts(_chunks(body, 64), "multipart/form-data; boundary=B",
                                     max_parts=3):
            async for _ in part.content:
                pass
    with pytest.raises(InvalidArgumentError, match="more than 3 parts"):
        anyio.run(run)


def _decoded(body: bytes, encoding: str) -> list[bytes]:
    async def run() -> list[bytes]:
        return [c async for c in files._decoded(_chunks(body, 1 << 20), encoding)]
    return anyio.run(run)


def test_a_gzip_body_inflates_a_bounded_step_at_a_time() -> None:
    bomb = gzip.compress(b"\0" * (8 * files.CHUNK + 3))
    pieces = _decoded(bomb, "gzip")
    assert b"".join(pieces) == b"\0" * (8 * files.CHUNK + 3)
    assert max(len(p) for p in pieces) <= files.CHUNK


@pytest.mark.parametrize(("body", "encoding", "why"), [
    (b"plain", "br", "not accepted"), (b"not gzip", "gzip", "not valid gzip"),
    (gzip.compress(b"abc")[:-9], "gzip", "ended early")])
def test_a_bad_encoding_is_refused(body: bytes, encoding: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError, match=why):
        _decoded(body, encoding)


@pytest.mark.parametrize(("header", "takes"), [
    ("gzip", True), ("gzip, deflate, br", True), ("deflate, GZIP;q=0.5", True),
    ("gzip;q=0", False), ("identity", False), ("", False), ("x-gzip", False),
    ("gzip;q=abc", False)])
def test_gzip_is_sent_only_to_who_takes_it(header: str, takes: bool) -> None:
    assert files.accepts_gzip(header) is takes
