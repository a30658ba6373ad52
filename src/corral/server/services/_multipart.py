"""The file part of a ``multipart/form-data`` upload, streamed (RFC 7578).

Written for the dynamic-sessions clients as they are: Semantic Kernel's Python tool sends
its uploads with a ``Content-Type: application/json`` header left over from an earlier call,
so the boundary is read from the body's first line when the header does not give one. A
boundary the header does give must be the one the body uses.

Bounds: part headers 16 KiB, at most 16 parts (or the caller's bound); the files' bytes
stream out as they arrive (the sandbox's disk bounds them). Nothing is interpreted but the
``Content-Disposition`` header's ``name``, ``filename`` and ``filename*``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from corral.api.errors import InvalidArgumentError

MAX_HEAD: Final = 16 * 1024
MAX_PARTS: Final = 16
#: Most bytes of a part before the file's (form fields), which is held whole to skip it.
MAX_SKIPPED: Final = 1024 * 1024
_BOUNDARY: Final = re.compile(rb"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_HEADER_BOUNDARY: Final = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_PARAM: Final = re.compile(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_CONTROL_ESCAPE: Final = re.compile(r"%(22|[01][0-9A-Fa-f])")


def _bad(why: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"the upload is not a readable multipart/form-data body: {why}")


@dataclass(frozen=True)
class FilePart:
    """The part's ``filename`` as sent (unchecked: a caller confines it) and its bytes."""

    filename: str
    content: AsyncIterator[bytes]


class _Reader:
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.buffer = bytearray()
        self.ended = False

    async def fill(self) -> bool:
        """Read one more chunk; False at the end of the body."""
        if self.ended:
            return False
        chunk = await anext(self._chunks, None)
        if chunk is None:
            self.ended = True
            return False
        self.buffer += chunk
        return True

    async def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """Everything before ``marker`` (consumed with it), at most ``limit`` bytes."""
        start = 0
        while True:
            found = self.buffer.find(marker, start)
            if found >= 0:
                head = bytes(self.buffer[:found])
                del self.buffer[:found + len(marker)]
                return head
            if len(self.buffer) > limit:
                raise _bad(f"{what} is longer than {limit} bytes")
            start = max(0, len(self.buffer) - len(marker) + 1)
            if not await self.fill():
                raise _bad(f"the body ended inside {what}")


async def file_part(chunks: AsyncIterator[bytes], content_type: str,
                    field: str = "file") -> FilePart:
    """The first part named ``field`` that carries a filename."""
    async for part in file_parts(chunks, content_type, field, max_parts=MAX_PARTS):
        return part
    raise _bad(f"no part named {field!r} with a filename")


async def file_parts(chunks: AsyncIterator[bytes], content_type: str, field: str = "file",
                     max_parts: int = MAX_PARTS) -> AsyncIterator[FilePart]:
    """Each part named ``field`` that carries a filename, in order, among at most
    ``max_parts`` parts; other parts are skipped. A part's content is read by the caller
    before it asks for the next (what it left unread is skipped then)."""
    reader = _Reader(chunks)
    declared = _HEADER_BOUNDARY.search(content_type or "")
    first = await reader.until(b"\r\n", MAX_HEAD, "the first line")
    if declared:
        boundary = (declared.group(1) or declared.group(2)).encode("latin-1")
        if first.rstrip(b" \t") != b"--" + boundary:
            # A preamble may come first: find the boundary's first line after it.
            reader.buffer[:0] = first + b"\r\n"
            await reader.until(b"\r\n--" + boundary + b"\r\n", MAX_HEAD, "the preamble")
    else:
        if not first.startswith(b"--"):
            raise _bad("it does not start with a boundary line")
        boundary = first[2:].rstrip(b" \t")
    if not _BOUNDARY.match(boundary):
        raise _bad("the boundary is not a valid one")
    delimiter = b"\r\n--" + boundary
    for _ in range(max_parts):
        head = await reader.until(b"\r\n\r\n", MAX_HEAD, "a part's headers")
        name, filename = _disposition(head)
        if name == field and filename is not None:
            content = _content(reader, delimiter)
            yield FilePart(filename, content)
            async for _unread in content:
                pass
        else:
            await reader.until(delimiter, MAX_SKIPPED, "a part before the file")
        while len(reader.buffer) < 2 and await reader.fill():
            pass
        if reader.buffer.startswith(b"--"):
            return  # the closing boundary
        await reader.until(b"\r\n", MAX_HEAD, "a boundary line")
    raise _bad(f"it has more than {max_parts} parts")


async def _content(reader: _Reader, delimiter: bytes) -> AsyncIterator[bytes]:
    keep = len(delimiter) - 1
    while True:
        found = reader.buffer.find(delimiter)
        if found >= 0:
            if found:
                yield bytes(reader.buffer[:found])
            del reader.buffer[:found + len(delimiter)]
            return
        if len(reader.buffer) > keep:
            cut = len(reader.buffer) - keep
            yield bytes(reader.buffer[:cut])
            del reader.buffer[:cut]
        if not await reader.fill():
            raise _bad("the body ended inside the file")


def _disposition(head: bytes) -> tuple[str | None, str | None]:
    """``name`` and ``filename`` of a part's ``Content-Disposition`` (``filename*`` wins)."""
    for line in head.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == b"content-disposition":
            text = value.decode("utf-8", "replace")
            params: dict[str, str] = {}
            for match in _PARAM.finditer(text):
                raw = match.group(2).strip()
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                params.setdefault(match.group(1).lower(), raw)
            filename = params.get("filename")
            extended = params.get("filename*")
            if extended is not None:
                charset, _, rest = extended.partition("'")
                _, _, encoded = rest.partition("'")
                filename = unquote(encoded, encoding=charset or "utf-8", errors="replace")
            elif filename is not None:
                # HTML5 form encoding (httpx, browsers): '"' and control characters as %XX.
                filename = _CONTROL_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), filename)
            return params.get("name"), filename
    return None, None
