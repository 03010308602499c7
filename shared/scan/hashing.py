"""Every hash of a file from one read pass; several files in parallel.

SHA256 (the identity), AutoV1 (SHA256 of the 0x10000 bytes at 0x100000, first 8 hex; None under 2 MiB as
Civitai does) and, for safetensors, AutoV3 (the kohya/A1111 "addnet" hash: SHA256 of everything after the
8-byte header length and the header). The addnet stream is fed on a second thread so that one safetensors
file hashes in about the time of a single SHA256 (hashlib releases the GIL on large buffers).
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from ..records import SAFETENSORS_EXTENSIONS, FileHashes

CHUNK_SIZE = 4 * 1024 * 1024
AUTOV1_OFFSET = 0x100000
AUTOV1_LENGTH = 0x10000
AUTOV1_MIN_SIZE = 0x200000


class HashError(OSError):
    """A file that could not be hashed; str() is the reason."""


class _AddnetFeeder:
    """SHA256 of the bytes after the safetensors header, computed on its own thread."""

    def __init__(self, skip: int):
        self.skip = skip
        self.position = 0
        self.digest = hashlib.sha256()
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (block := self.queue.get()) is not None:
            self.digest.update(block)

    def feed(self, block: bytes) -> None:
        start, end = self.position, self.position + len(block)
        self.position = end
        if end <= self.skip:
            return
        self.queue.put(block[max(0, self.skip - start) :] if start < self.skip else block)

    def finish(self) -> str:
        self.queue.put(None)
        self.thread.join()
        return self.digest.hexdigest()


def _addnet_skip(f, size: int) -> int | None:
    head = f.read(8)
    f.seek(0)
    if len(head) < 8:
        return None
    header_len = int.from_bytes(head, "little")
    return 8 + header_len if 8 + header_len <= size else None


def hash_file(
    path: str,
    *,
    addnet: bool | None = None,
    chunk_size: int = CHUNK_SIZE,
    on_bytes: Callable[[int], None] | None = None,
) -> FileHashes:
    if addnet is None:
        addnet = os.path.splitext(path)[1].lower() in SAFETENSORS_EXTENSIONS
    try:
        before = os.stat(path)
        with open(path, "rb", buffering=0) as f:
            skip = _addnet_skip(f, before.st_size) if addnet else None
            feeder = _AddnetFeeder(skip) if skip is not None else None
            sha = hashlib.sha256()
            autov1 = hashlib.sha256()
            position = 0
            try:  # read no further than the size at the start: a growing file must not keep the loop going
                while position < before.st_size and (block := f.read(min(chunk_size, before.st_size - position))):
                    sha.update(block)
                    end = position + len(block)
                    if end > AUTOV1_OFFSET and position < AUTOV1_OFFSET + AUTOV1_LENGTH:
                        lo = max(AUTOV1_OFFSET, position) - position
                        hi = min(AUTOV1_OFFSET + AUTOV1_LENGTH, end) - position
                        autov1.update(block[lo:hi])
                    if feeder is not None:
                        feeder.feed(block)
                    position = end
                    if on_bytes is not None:
                        on_bytes(len(block))
            finally:
                autov3 = feeder.finish() if feeder is not None else None
        after = os.stat(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno, "file vanished", path) from None
    except PermissionError as exc:
        raise HashError(exc.errno, "permission denied", path) from None
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or position != before.st_size:
        raise HashError(f"file changed while hashing ({before.st_size} -> {after.st_size} bytes)")
    return FileHashes(
        sha256=sha.hexdigest(),
        autov1=autov1.hexdigest()[:8] if position >= AUTOV1_MIN_SIZE else None,
        autov3=autov3,
    )


def hash_files(
    paths: Sequence[str],
    *,
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_result: Callable[[str, FileHashes | None, BaseException | None], None] | None = None,
) -> dict[str, FileHashes | BaseException]:
    """Hash files in parallel; every outcome is returned. Callbacks run on worker threads."""
    results: dict[str, FileHashes | BaseException] = {}

    def one(path: str) -> None:
        try:
            hashes = hash_file(path, on_bytes=on_bytes)
        except OSError as exc:
            results[path] = exc
            if on_result:
                on_result(path, None, exc)
            return
        results[path] = hashes
        if on_result:
            on_result(path, hashes, None)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(one, paths))
    return results
