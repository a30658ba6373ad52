"""The dynamic-sessions upload parser and path confinement, without a server."""

from __future__ import annotations

import anyio
import pytest

from corral.api.errors import InvalidArgumentError
from corral.server.services._multipart import file_part
from corral.server.services.aca import confine

BODY = (b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; "
        b"filename=\"/mnt/data/a %22q%22.csv\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        b"a,b\r\n--Xy\r\n1,2\r\n--XyZ--\r\n")


def _parse(body: bytes, content_type: str, size: int) -> tuple[str, bytes]:
    async def run() -> tuple[str, bytes]:
        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(body), size):
                yield body[i:i + size]
        part = await file_part(chunks(), content_type)
        return part.filename, b"".join([c async for c in part.content])
    return anyio.run(run)


@pytest.mark.parametrize("size", [1, 3, 7, 64, 4096])
@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=XyZ"])
def test_file_part_in_any_chunking(size: int, content_type: str) -> None:
    assert _parse(BODY, content_type, size) == ('/mnt/data/a "q".csv', b"a,b\r\n--Xy\r\n1,2")


def test_refusals() -> None:
    with pytest.raises(InvalidArgumentError):
        _parse(BODY, "multipart/form-data; boundary=Other", 64)
    with pytest.raises(InvalidArgumentError):
        _parse(b"no boundary\r\n", "", 64)
    with pytest.raises(InvalidArgumentError):
        _parse(BODY[:-12], "", 64)  # ends inside the file


def test_confine() -> None:
    assert confine("/mnt/data/x/./y") == "/mnt/data/x/y"
    assert confine("y", "/mnt/data/x") == "/mnt/data/x/y"
    for bad in ("../x", "/etc/passwd", "/mnt/database", "a\\b", "a/../../b", "", "\x00"):
        with pytest.raises(InvalidArgumentError):
            confine(bad)
