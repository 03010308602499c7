"""The receiving side of a transfer, for any Source: free space first, a temp file in the destination folder, one
pass that writes and hashes, resume from what is on disk, fsync, and a rename into place only when the SHA256 is the
expected one, never over another file."""
from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

from ..hashing import hash_file
from ..records import SAFETENSORS_EXTENSIONS, FileHashes
from .destination import place, safe_relative_name
from .failures import TransferFailed
from .partfiles import part_name
from .source import Source
from .stream_hash import StreamHasher

DEFAULT_FLOOR_BYTES = 2 * 1024**3
REHASH_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    size: int
    speed_bps: float  # this run's fetched bytes over its time (resumed bytes are not counted as speed)
    eta_seconds: float | None


@dataclass(frozen=True)
class ReceiveOptions:
    floor_bytes: int = DEFAULT_FLOOR_BYTES  # free space kept on the destination's disk
    bandwidth_bps: int | None = None
    max_attempts: int = 5  # opens in a row that bring no new byte, then `source_gone` (the temp file stays)
    retry_delay_seconds: float = 1.0  # times the attempt number
    progress_interval_seconds: float = 0.5


@dataclass(frozen=True)
class Received:
    path: str
    rel_name: str  # relative to the root, '/'-separated: the name the file got
    wanted_name: str  # the safe form of the name asked for; differs when that name held another file
    hashes: FileHashes
    size: int
    mtime_ns: int  # with path and size, what a catalog row needs so the next scan reuses these hashes
    resumed_from: int  # bytes of an earlier attempt's temp file that were kept
    bytes_fetched: int  # bytes this call took from the source
    already_present: bool = False  # the file was there already, same SHA256: nothing fetched

    @property
    def renamed(self) -> bool:
        return self.rel_name != self.wanted_name


def receive(
    source: Source,
    root: str,
    rel_name: str,
    *,
    options: ReceiveOptions = ReceiveOptions(),
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> Received:
    """Fetch `source` to root/rel_name (made safe); raises TransferFailed with the reason. The root must exist
    (an unmounted share's folder is never filled); sub-folders are created."""
    wanted = safe_relative_name(rel_name)
    if not os.path.isdir(root):
        raise TransferFailed("root_unavailable", f"the destination root {root} is not an available folder")
    target = os.path.join(root, wanted)
    addnet = os.path.splitext(wanted)[1].lower() in SAFETENSORS_EXTENSIONS
    present = _same_file_present(target, source)
    if present is not None:
        return Received(target, wanted, wanted, present, source.size, os.stat(target).st_mtime_ns, 0, 0,
                        already_present=True)
    temp = os.path.join(os.path.dirname(target), part_name(source.sha256))
    kept = _usable_part(temp, source.size)
    _check_space(os.path.dirname(target), source.size - kept, options.floor_bytes)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    run = _Run(source, addnet, options, progress, cancel or threading.Event())
    try:
        hashes = run.fetch(temp, kept)
    except TransferFailed as failed:
        if failed.reason in ("too_long", "hash_mismatch") or os.path.getsize(temp) == 0:
            os.remove(temp)  # wrong bytes, or nothing to resume from
        raise
    placed = place(temp, root, wanted)
    path = os.path.join(root, placed)
    return Received(path, placed, wanted, hashes, source.size, os.stat(path).st_mtime_ns, kept, run.fetched)


def _same_file_present(target: str, source: Source) -> FileHashes | None:
    """The hashes of a file already at the target with the expected SHA256 (read only when the size agrees)."""
    try:
        if not os.path.isfile(target) or os.path.getsize(target) != source.size:
            return None
        hashes = hash_file(target)
    except OSError:
        return None
    return hashes if hashes.sha256 == source.sha256 else None


def _usable_part(temp: str, size: int) -> int:
    try:
        have = os.path.getsize(temp)
    except FileNotFoundError:
        return 0
    if have > size:
        os.remove(temp)
        return 0
    return have


def _check_space(folder: str, remaining: int, floor: int) -> None:
    existing = folder
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free < remaining + floor:
        raise TransferFailed("disk_full", f"{free} bytes free; the file needs {remaining} more and the floor is {floor}")


class _Run:
    """One receive call's streaming: attempts, throttling, progress and cancellation."""

    def __init__(self, source: Source, addnet: bool, options: ReceiveOptions,
                 progress: Callable[[Progress], None] | None, cancel: threading.Event):
        self.source, self.addnet, self.options, self.progress, self.cancel = source, addnet, options, progress, cancel
        self.hasher = StreamHasher(addnet)
        self.fetched = 0
        self.kept = 0  # bytes on disk from an earlier attempt: progress never reports less while they are re-hashed
        self.started = time.monotonic()
        self.reported = 0.0

    def fetch(self, temp: str, kept: int) -> FileHashes:
        self.kept = kept
        with open(temp, "r+b" if kept else "w+b") as f:
            try:
                self._rehash(f, kept)
                self._stream_with_retries(f)
                f.flush()
                os.fsync(f.fileno())
                hashes = self.hasher.finish()
            finally:
                self.hasher.close()
        if hashes.sha256 != self.source.sha256:
            raise TransferFailed("hash_mismatch", f"received SHA256 {hashes.sha256}, expected {self.source.sha256}")
        return hashes

    def _rehash(self, f: BinaryIO, kept: int) -> None:
        """The kept part of an earlier attempt, hashed once more (a hasher's state does not outlive a process)."""
        while self.hasher.position < kept and (block := f.read(min(REHASH_CHUNK, kept - self.hasher.position))):
            self._check_cancel()
            self.hasher.update(block)
            self._report()

    def _stream_with_retries(self, f: BinaryIO) -> None:
        failures = 0
        while self.hasher.position < self.source.size:
            self._check_cancel()
            before = self.hasher.position
            try:
                self._stream_once(f)
            except TransferFailed as failed:
                if not failed.retryable:
                    raise
                failures = 1 if self.hasher.position > before else failures + 1
                if failures >= self.options.max_attempts:
                    raise TransferFailed("source_gone", f"{failed.message} (gave up after {failures} attempts "
                                         "without progress)") from None
                self._wait(self.options.retry_delay_seconds * failures)

    def _stream_once(self, f: BinaryIO) -> None:
        size = self.source.size
        opened = self.source.open(self.hasher.position)
        try:
            if opened.start != self.hasher.position:  # the source starts over: so do we
                self.hasher.close()
                self.hasher = StreamHasher(self.addnet)
                self.kept = 0
                f.seek(0)
                f.truncate()
            for block in opened.chunks:
                if self.hasher.position + len(block) > size:
                    raise TransferFailed("too_long", f"the source sent more than the expected {size} bytes")
                self._write(f, block)
                self.hasher.update(block)
                self.fetched += len(block)
                self._report()
                self._check_cancel()
                self._throttle()
        finally:
            opened.close()
        if self.hasher.position < size:
            raise TransferFailed("source_gone", f"the stream ended at byte {self.hasher.position} of {size}",
                                 retryable=True)
        self._report(force=True)

    @staticmethod
    def _write(f: BinaryIO, block: bytes) -> None:
        try:
            f.write(block)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise TransferFailed("disk_full", "the disk filled up during the transfer; the temp file is kept") from None
            raise

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise TransferFailed("cancelled", "the transfer was cancelled; it resumes from its temp file")

    def _wait(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            self._check_cancel()

    def _throttle(self) -> None:
        if self.options.bandwidth_bps:
            ahead = self.fetched / self.options.bandwidth_bps - (time.monotonic() - self.started)
            if ahead > 0:
                self._wait(ahead)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or not (force or now - self.reported >= self.options.progress_interval_seconds):
            return
        self.reported = now
        elapsed = now - self.started
        speed = self.fetched / elapsed if elapsed > 0 else 0.0
        done = max(self.hasher.position, self.kept)
        left = self.source.size - done
        self.progress(Progress(done, self.source.size, speed, left / speed if speed > 0 else None))
