"""What the receiver needs of any source (a peer node, Civitai, a URL): the expected content, and a byte stream
from an offset. A source resumes with Range + If-Range against its own validator (a peer's is the SHA256 ETag; a
URL source keeps the one of its first answer) and says where its stream really starts.

A peer knows the exact size. Civitai lists a rounded one (`sizeKB`) and a URL may list none: such a source has
`size = None` and an upper bound `limit` (None: only the answer's own length bounds it); the stream's declared length
(`Opened.total`) then says when the file is whole, and the SHA256 whether it is the right one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import requests

from .failures import TransferFailed


@dataclass
class Opened:
    start: int  # the offset of the first byte: the one asked for, or 0 when the source restarts the file
    chunks: Iterator[bytes]  # raises TransferFailed(retryable=True) when the stream drops
    close: Callable[[], None]
    total: int | None = None  # the whole file's size as this answer declares it (Content-Range / Content-Length)


class Source(Protocol):
    sha256: str  # the expected SHA256 (lowercase hex): nothing else is ever renamed into place
    size: int | None  # the exact expected size in bytes (a longer stream is cut and fails), or None: see `limit`
    # limit: int | None, read only when size is None: the most bytes accepted (a longer stream is cut and fails)
    # download: bool (absent: False), a download (Civitai, URL): its temp file is dropped when the disk fills up

    def open(self, offset: int) -> Opened:
        """The stream from `offset` (0: the whole file); raises TransferFailed when it cannot be opened."""
        ...


def response_chunks(response: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """A streamed HTTP answer's body (a cancel is seen between chunks); a drop is a retryable `source_gone`. The
    answer is closed at the end, however it ends."""
    try:
        yield from response.iter_content(chunk_size)
    except requests.RequestException as exc:
        raise TransferFailed("source_gone", f"the stream dropped: {type(exc).__name__}", retryable=True) from None
    finally:
        response.close()
