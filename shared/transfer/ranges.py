"""HTTP byte ranges: the single range with If-Range a face serves when its framework does not (FastAPI on an older
Starlette, as in Forge; anything but one satisfiable range is answered with the whole file, as RFC 9110 allows), and
the Content-Range a source's answer carries."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)")
CHUNK_SIZE = 1024 * 1024


class RangeNotSatisfiable(ValueError):
    """Answer 416 with `Content-Range: bytes */<size>`."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def requested_range(range_header: str | None, if_range: str | None, etag: str, size: int) -> ByteRange | None:
    """The range to answer with 206, or None for a 200 with the whole file."""
    if not range_header or (if_range is not None and if_range != etag):
        return None
    match = _SINGLE_RANGE.fullmatch(range_header.strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        if first != "" and last != "" and int(last) < int(first):
            return None  # an invalid range is ignored, not refused
        raise RangeNotSatisfiable(f"bytes */{size}")
    return ByteRange(start, end)


def read_range(path: str, byte_range: ByteRange, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(byte_range.start)
        left = byte_range.length
        while left > 0 and (block := f.read(min(chunk_size, left))):
            left -= len(block)
            yield block


@dataclass(frozen=True)
class ContentRange:
    start: int | None  # None: `bytes */<total>` (a 416's)
    total: int | None  # None: `/*`, the length is not said


def content_range(header: str | None) -> ContentRange | None:
    """A `Content-Range: bytes <first>-<last>/<total>` (or `bytes */<total>`) header; None when malformed."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    if match is None:
        return None
    first, _, total = match.groups()
    return ContentRange(None if first is None else int(first), int(total) if total.isdigit() else None)
