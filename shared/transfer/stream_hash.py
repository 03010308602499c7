"""The scanner's hashes (shared/scan/hashing.py) of bytes that arrive in order, so a receiver hashes while it writes.

Same definitions as `hashing.hash_file`, built on its pieces: SHA256; AutoV1 (the 0x10000 bytes at 0x100000, first
8 hex, None under 2 MiB); for safetensors AutoV3 (everything after the 8-byte header length and the header, on
the addnet feeder's thread; None when the header runs past the end).
"""
from __future__ import annotations

import hashlib

from ..records import FileHashes
from ..scan.hashing import AUTOV1_LENGTH, AUTOV1_MIN_SIZE, AUTOV1_OFFSET, _AddnetFeeder


class StreamHasher:
    def __init__(self, addnet: bool):
        self.position = 0
        self._sha = hashlib.sha256()
        self._autov1 = hashlib.sha256()
        self._addnet = addnet
        self._head: list[bytes] = []  # the first blocks, until the 8-byte header length is known
        self._feeder: _AddnetFeeder | None = None

    def update(self, block: bytes) -> None:
        start, end = self.position, self.position + len(block)
        self._sha.update(block)
        if end > AUTOV1_OFFSET and start < AUTOV1_OFFSET + AUTOV1_LENGTH:
            self._autov1.update(block[max(AUTOV1_OFFSET, start) - start : min(AUTOV1_OFFSET + AUTOV1_LENGTH, end) - start])
        self.position = end
        if self._feeder is not None:
            self._feeder.feed(block)
        elif self._addnet:
            self._head.append(block)
            if end >= 8:
                head = b"".join(self._head)
                self._head = []
                self._feeder = _AddnetFeeder(8 + int.from_bytes(head[:8], "little"))
                self._feeder.feed(head)

    def finish(self) -> FileHashes:
        """The hashes of everything fed; the hasher is spent."""
        autov3 = None
        if self._feeder is not None:
            digest = self._feeder.finish()
            autov3 = digest if self.position >= self._feeder.skip else None
            self._feeder = None
        return FileHashes(
            sha256=self._sha.hexdigest(),
            autov1=self._autov1.hexdigest()[:8] if self.position >= AUTOV1_MIN_SIZE else None,
            autov3=autov3,
        )

    def close(self) -> None:
        """Stop the addnet thread without a result (a cancelled or failed transfer)."""
        if self._feeder is not None:
            self._feeder.finish()
            self._feeder = None
