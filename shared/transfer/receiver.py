"""The receiving side of a transfer, for any Source: free space first, a temp file in the destination folder, one
pass that writes and hashes, resume from what is on disk, fsync, and a rename into place only when the SHA256 is the
expected one, never over another file.

The free-disk floor holds for every source: checked before the first request against the most bytes the file may
have; when the source knows no exact size, again once its answer declares the length (the rest of it plus the floor
must be free), and every `space_check_bytes` written while no length is declared (a chunked stream). A download
(Civitai, URL) that hits the floor drops its temp file; a peer transfer keeps it for the resume."""
from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

from ..records import SAFETENSORS_EXTENSIONS, FileHashes
from ..scan.hashing import hash_file
from .destination import place, safe_relative_name
from .failures import TERMINAL_DOWNLOAD_REASONS, TransferFailed
from .partfiles import part_name
from .source import Source
from .stream_hash import StreamHasher

DEFAULT_FLOOR_BYTES = 2 * 1024**3
SPACE_CHECK_BYTES = 64 * 1024 * 1024
REHASH_CHUNK = 4 * 1024 * 1024
DISCARD_TEMP = frozenset({"too_long", "hash_mismatch"}) | TERMINAL_DOWNLOAD_REASONS


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    size: int | None  # None: the source has not said yet
    speed_bps: float  # this run's fetched bytes over its time (resumed bytes are not counted as speed)
    eta_seconds: float | None


@dataclass(frozen=True)
class ReceiveOptions:
    floor_bytes: int = DEFAULT_FLOOR_BYTES  # free space kept on the destination's disk
    bandwidth_bps: int | None = None
    max_attempts: int = 5  # opens in a row that bring no new byte, then `source_gone` (the temp file stays)
    retry_delay_seconds: float = 1.0  # times the failed attempts before this one: a drop after progress resumes at once
    progress_interval_seconds: float = 0.5
    space_check_bytes: int = SPACE_CHECK_BYTES  # free space is checked this often while the length is unknown


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
    bound = _bound(source)
    present = _same_file_present(target, source.sha256, source.size, bound)
    if present is not None:
        stat = os.stat(target)
        return Received(target, wanted, wanted, present, stat.st_size, stat.st_mtime_ns, 0, 0, already_present=True)
    temp = os.path.join(os.path.dirname(target), part_name(source.sha256))
    kept = _usable_part(temp, bound)
    _check_space(os.path.dirname(target), max(0, (bound or 0) - kept), options.floor_bytes)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    run = _Run(source, addnet, options, progress, cancel or threading.Event())
    try:
        hashes = run.fetch(temp, kept)
    except TransferFailed as failed:
        if (failed.reason in DISCARD_TEMP or os.path.getsize(temp) == 0
                or (failed.reason == "disk_full" and getattr(source, "download", False))):
            os.remove(temp)  # wrong bytes, a download that can never go on or fills the disk, or nothing to resume from
        raise
    placed = place(temp, root, wanted)
    path = os.path.join(root, placed)
    return Received(path, placed, wanted, hashes, run.received_size, os.stat(path).st_mtime_ns, kept, run.fetched)


def _bound(source: Source) -> int | None:
    """The most bytes the file may have: its exact size, else the source's limit (None: unbounded)."""
    return source.size if source.size is not None else getattr(source, "limit", None)


def _same_file_present(target: str, sha256: str, size: int | None, bound: int | None) -> FileHashes | None:
    """The hashes of a file already at the target with the expected SHA256 (read only when the size fits)."""
    try:
        if not os.path.isfile(target):
            return None
        have = os.path.getsize(target)
        if (size is not None and have != size) or (bound is not None and have > bound):
            return None
        hashes = hash_file(target)
    except OSError:
        return None
    return hashes if hashes.sha256 == sha256 else None


def _usable_part(temp: str, bound: int | None) -> int:
    try:
        have = os.path.getsize(temp)
    except FileNotFoundError:
        return 0
    if bound is not None and have > bound:
        os.remove(temp)
        return 0
    return have


def _check_space(folder: str, remaining: int, floor: int) -> None:
    existing = folder
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free < remaining + floor:
        needs = f"the file needs {remaining} more and " if remaining else ""
        raise TransferFailed("disk_full", f"{free} bytes free; {needs}the floor is {floor}")


class _Run:
    """One receive call's streaming: attempts, throttling, progress and cancellation."""

    def __init__(self, source: Source, addnet: bool, options: ReceiveOptions,
                 progress: Callable[[Progress], None] | None, cancel: threading.Event):
        self.source, self.addnet, self.options, self.progress, self.cancel = source, addnet, options, progress, cancel
        self.hasher = StreamHasher(addnet)
        self.total = source.size  # the file's size once known (a source without an exact size: its answer's)
        self.bound = _bound(source)
        self.fetched = 0
        self.folder = ""  # the temp file's, for the free-space checks
        self.next_space_check = 0  # the position at which free space is checked again while the length is unknown
        self.kept = 0  # bytes on disk from an earlier attempt: progress never reports less while they are re-hashed
        self.started = time.monotonic()
        self.reported = 0.0

    def fetch(self, temp: str, kept: int) -> FileHashes:
        self.kept = kept
        self.folder = os.path.dirname(temp)
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

    @property
    def received_size(self) -> int:
        return self.total if self.total is not None else self.hasher.position

    def _stream_with_retries(self, f: BinaryIO) -> None:
        failures = 0
        while self.total is None or self.hasher.position < self.total:
            self._check_cancel()
            before = self.hasher.position
            try:
                self._stream_once(f)
                if self.total is None:
                    self.total = self.hasher.position  # a stream of unsaid length that ended cleanly is whole
            except TransferFailed as failed:
                if not failed.retryable:
                    raise
                failures = 1 if self.hasher.position > before else failures + 1
                if failures >= self.options.max_attempts:
                    raise TransferFailed("source_gone", f"{failed.message} (gave up after {failures} attempts "
                                         "without progress)") from None
                self._wait(self.options.retry_delay_seconds * (failures - 1))

    def _stream_once(self, f: BinaryIO) -> None:
        opened = self.source.open(self.hasher.position)
        try:
            if opened.start != self.hasher.position:  # the source starts over: so do we
                self.hasher.close()
                self.hasher = StreamHasher(self.addnet)
                self.kept = 0
                f.seek(0)
                f.truncate()
            if self.source.size is None and opened.total is not None:
                self.total = opened.total
            size = self.total if self.total is not None else self.bound
            if size is not None and self.bound is not None and size > self.bound:
                raise TransferFailed("too_long", f"the source offers {size} bytes, more than the {self.bound} expected")
            if self.source.size is None and self.total is not None:
                _check_space(self.folder, max(0, self.total - self.hasher.position), self.options.floor_bytes)
            self.next_space_check = self.hasher.position + self.options.space_check_bytes
            for block in opened.chunks:
                if size is not None and self.hasher.position + len(block) > size:
                    raise TransferFailed("too_long", f"the source sent more than the expected {size} bytes")
                self._write(f, block)
                self.hasher.update(block)
                self.fetched += len(block)
                if self.total is None and self.hasher.position >= self.next_space_check:
                    _check_space(self.folder, 0, self.options.floor_bytes)
                    self.next_space_check = self.hasher.position + self.options.space_check_bytes
                self._report()
                self._check_cancel()
                self._throttle()
        finally:
            opened.close()
        if self.total is not None and self.hasher.position < self.total:
            raise TransferFailed("source_gone", f"the stream ended at byte {self.hasher.position} of {self.total}",
                                 retryable=True)
        self._report(force=True)

    @staticmethod
    def _write(f: BinaryIO, block: bytes) -> None:
        try:
            f.write(block)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise TransferFailed("disk_full", "the disk filled up during the transfer") from None
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
        left = None if self.total is None else self.total - done
        self.progress(Progress(done, self.total, speed, left / speed if speed > 0 and left is not None else None))
