"""What the receiver needs of any source (a peer node, Civitai, a URL): the expected content, and a byte stream
from an offset. A source resumes with Range + If-Range against its own validator (a peer's is the SHA256 ETag; a
URL source keeps the one of its first answer) and says where its stream really starts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol


@dataclass
class Opened:
    start: int  # the offset of the first byte: the one asked for, or 0 when the source restarts the file
    chunks: Iterator[bytes]  # raises TransferFailed(retryable=True) when the stream drops
    close: Callable[[], None]


class Source(Protocol):
    sha256: str  # the expected SHA256 (lowercase hex): nothing else is ever renamed into place
    size: int  # the expected size in bytes: a longer stream is cut and fails

    def open(self, offset: int) -> Opened:
        """The stream from `offset` (0: the whole file); raises TransferFailed when it cannot be opened."""
        ...
