"""The E2B watch module's pure parts: request checks, the event mapping, keepalive pacing."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import Headers

from corral.api.limits import MAX_PATH
from corral.api.models import WatchEvent
from corral.server.e2b import envd, watch
from corral.server.e2b.connect import ConnectError


def test_requests_are_read_and_checked() -> None:
    assert watch._request({"path": "/w"}) == ("/w", False)
    assert watch._request({"path": "w", "recursive": True, "includeEntry": False,
                           "allowNetworkMounts": False}) == ("w", True)
    assert watch._request({"path": "/" + "a" * (MAX_PATH - 1)})[0].startswith("/a")
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, "invalid_argument"), ({"path": ""}, "invalid_argument"),
        ({"path": 3}, "invalid_argument"), ({"path": "/" + "a" * MAX_PATH}, "invalid_argument"),
        ({"path": "/w", "recursive": 1}, "invalid_argument"),
        ({"path": "/w", "includeEntry": True}, "unimplemented"),
        ({"path": "/w", "allowNetworkMounts": True}, "unimplemented")]
    for message, code in bad:
        with pytest.raises(ConnectError) as caught:
            watch._request(message)
        assert caught.value.code == code, message


def test_events_map_to_envds_and_overflow_has_none() -> None:
    assert watch._event(WatchEvent(type="rename", name="d/a", is_dir=False)) == {
        "name": "d/a", "type": "EVENT_TYPE_RENAME"}
    assert {watch._event(WatchEvent(type=t, name="x"))["type"]  # type: ignore[index]
            for t in ("create", "write", "remove", "rename", "chmod")} == {
        "EVENT_TYPE_CREATE", "EVENT_TYPE_WRITE", "EVENT_TYPE_REMOVE", "EVENT_TYPE_RENAME",
        "EVENT_TYPE_CHMOD"}
    assert watch._event(WatchEvent(type="overflow", name="")) is None


@pytest.mark.parametrize(("raw", "seconds"), [
    (None, envd._KEEPALIVE), ("50", 50.0), ("0", envd._KEEPALIVE_RANGE[0]),
    ("1e9", envd._KEEPALIVE_RANGE[1]), ("soon", envd._KEEPALIVE), ("nan", envd._KEEPALIVE),
    ("inf", envd._KEEPALIVE)])
def test_keepalive_intervals_are_bounded(raw: str | None, seconds: float) -> None:
    headers = Headers({} if raw is None else {"Keepalive-Ping-Interval": raw})
    assert envd.keepalive_interval(headers) == seconds  # the process service's too
