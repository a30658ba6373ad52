"""The Connect envelope codec and error mapping that envd's process service is built on
(src/corral/server/e2b/connect.py), and the error-shape middleware leaving Connect errors
as they are."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator

import pytest

from corral.api.errors import (ErrorCode, NotFoundError, SandboxError,
                               SandboxNotRunningError)
from corral.server.e2b import connect, envd
from corral.server.e2b.connect import ConnectError
from corral.server.e2b.mapping import e2b_error_body


def test_envelope_is_flags_length_and_compact_json() -> None:
    framed = connect.envelope({"event": {"start": {"pid": 42}}})
    payload = b'{"event":{"start":{"pid":42}}}'
    assert framed == struct.pack(">BI", 0, len(payload)) + payload
    assert connect.end_of_stream() == b"\x02\x00\x00\x00\x02{}"


def test_end_of_stream_carries_the_error() -> None:
    framed = connect.end_of_stream(ConnectError("deadline_exceeded", "too slow"))
    [(flags, message)] = connect.read_envelopes(framed)
    assert flags == connect.END_STREAM
    assert message == {"error": {"code": "deadline_exceeded", "message": "too slow"}}


def test_read_envelopes_round_trips_several() -> None:
    data = (connect.envelope({"a": 1}) + connect.envelope({"b": [2]})
            + connect.end_of_stream())
    assert connect.read_envelopes(data) == [(0, {"a": 1}), (0, {"b": [2]}),
                                            (connect.END_STREAM, {})]


@pytest.mark.parametrize("data, says", [
    (b"\x00\x00\x00", "inside an envelope header"),
    (b"\x00\x00\x00\x00\x09{}", "only 2 follow"),
    (b"\x01\x00\x00\x00\x02{}", "compressed"),
    (b"\x00\x00\x00\x00\x03abc", "not JSON"),
    (b"\x00\x00\x00\x00\x02[]", "JSON object"),
])
def test_bad_envelopes_are_invalid_arguments(data: bytes, says: str) -> None:
    with pytest.raises(ConnectError) as caught:
        connect.read_envelopes(data)
    assert caught.value.code == "invalid_argument" and says in caught.value.message
    assert caught.value.status == 400


def test_a_stream_request_has_exactly_one_message() -> None:
    assert connect.read_single(connect.envelope({"x": 1}) + connect.end_of_stream()) == {
        "x": 1}
    for data in (b"", connect.envelope({}) + connect.envelope({})):
        with pytest.raises(ConnectError, match="expected one request message"):
            connect.read_single(data)


def test_unary_bodies() -> None:
    assert connect.read_unary(b"") == {}
    assert connect.read_unary(b' {"process": {"pid": 3}} ') == {"process": {"pid": 3}}
    with pytest.raises(ConnectError):
        connect.read_unary(b"[1]")


def test_timeout_header() -> None:
    assert connect.timeout_ms(None) is None
    assert connect.timeout_ms("60000") == 60.0
    for bad in ("-1", "1.5", "12345678901", "soon"):
        with pytest.raises(ConnectError, match="Connect-Timeout-Ms"):
            connect.timeout_ms(bad)


def test_codes_have_connects_statuses() -> None:
    assert ConnectError("unimplemented", "no").status == 501
    assert ConnectError("unauthenticated", "no").status == 401
    assert ConnectError("not_found", "no").response().status_code == 404
    assert json.loads(ConnectError("not_found", "gone").response().body) == {
        "code": "not_found", "message": "gone"}
    with pytest.raises(ValueError):
        ConnectError("nope", "not a code")


def test_corral_errors_map_to_the_codes_the_sdks_read() -> None:
    assert ConnectError.of(NotFoundError("no such")).body() == {
        "code": "not_found", "message": "no such"}
    assert ConnectError.of(SandboxNotRunningError("stopped")).code == "unavailable"
    # every Corral code has a mapping other than "unknown"
    assert all(connect.from_corral_code(code.value, "m").code != "unknown"
               for code in ErrorCode)
    assert connect.from_corral_code("from_the_future", "m").code == "unknown"
    assert isinstance(NotFoundError("x"), SandboxError)


def test_error_shape_keeps_connect_errors_and_reshapes_the_rest() -> None:
    rpc = ConnectError("unimplemented", "no PTY").response().body
    assert json.loads(e2b_error_body(501, rpc)) == {"code": "unimplemented",
                                                    "message": "no PTY"}
    corral = json.dumps({"error": {"code": "unauthenticated", "message": "bad"}}).encode()
    assert json.loads(e2b_error_body(401, corral)) == {"code": 401, "message": "bad"}
    assert connect.is_connect_error({"code": "not_found", "message": "m"})
    assert not connect.is_connect_error({"code": 404, "message": "m"})
    assert not connect.is_connect_error({"code": "teapot", "message": "m"})


def test_data_plane_paths() -> None:
    assert envd.is_data_plane("/e2b/health", "/e2b")
    assert envd.is_data_plane("/e2b/process.Process/Start", "/e2b")
    assert not envd.is_data_plane("/e2b/sandboxes", "/e2b")
    assert not envd.is_data_plane("/health", "/e2b")
    assert not envd.is_data_plane("/e2bx/health", "/e2b")


async def _slow(items: list[tuple[float, str]]) -> AsyncIterator[str]:
    for delay, item in items:
        await asyncio.sleep(delay)
        yield item


def test_silence_brings_keepalives_and_a_deadline_ends_the_stream() -> None:
    async def collect() -> tuple[list[object], list[object]]:
        paced = [e async for e in envd._paced(_slow([(0.3, "a"), (0, "b")]), 0.05, None,
                                              None)]
        bounded = [e async for e in envd._paced(_slow([(5, "never")]), 60, 0.05, None)]
        return paced, bounded

    paced, bounded = asyncio.run(collect())
    # keepalives come only in the silence before "a"; the order of the items is kept
    assert [e for e in paced if isinstance(e, str)] == ["a", "b"]
    assert envd._KEEPALIVE_MARK in paced[:paced.index("a")]
    assert envd._KEEPALIVE_MARK not in paced[paced.index("a"):]
    assert bounded == [envd._DEADLINE_MARK]
