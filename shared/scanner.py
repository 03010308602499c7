"""The scan pipeline: discover → reuse cached results → read headers → hash → sidecars → merge → catalog.

A file whose (path, size, mtime_ns) is unchanged since the last scan is never read again: its hashes, header
metadata and classification come from the catalog. One bad file becomes one problem entry; the scan goes on.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import sqlite_utils

from .discovery import discover
from .hashing import hash_files
from .inventory import Inventory, InventoryFile
from .inventory_apply import apply_inventory
from .metadata_merge import merge
from .metadata_sources import from_a1111, from_civitai_model, from_civitai_version, from_embedded
from .model_header import HeaderError, read_header
from .records import (
    DiscoveredModel,
    FileHashes,
    MetadataContribution,
    Root,
    ScanProblem,
    ScanStats,
)
from .sidecars import Sidecar, SidecarError, SidecarIndex, read_sidecar

log = logging.getLogger(__name__)

DEFAULT_MAX_HASH_SIZE = 15 * 10**9
STATUS_EVERY = 10


@dataclass
class ScanProgress:
    phase: str  # discovering | reading | hashing | saving | done
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    eta_seconds: float | None = None


@dataclass
class Duplicate:
    sha256: str
    paths: list[str]


@dataclass
class ScanReport:
    stats: ScanStats
    problems: list[ScanProblem] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    inventory: Inventory | None = None

    @property
    def message(self) -> str:
        s = self.stats
        lines = [
            f"Scan complete! Found {s.total} model files",
            f"- Added: {s.added} new models to database",
            f"- Updated: {s.updated} models with new metadata",
            f"- Calculated: {s.hashesCalculated} hashes",
        ]
        if s.removed:
            lines.append(f"- Removed: {s.removed} models no longer on disk")
        if s.duplicates:
            lines.append(f"- Duplicates: {s.duplicates} models stored at more than one path")
        if s.errors:
            lines.append(f"- Errors: {s.errors} files could not be fully read")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats.as_dict(),
            "message": self.message,
            "problems": [{"path": p.path, "reason": p.reason} for p in self.problems],
            "duplicate_models": [{"sha256": d.sha256, "paths": d.paths} for d in self.duplicates],
        }


@dataclass
class _FileState:
    model: DiscoveredModel
    hashes: FileHashes | None = None
    content_type: str | None = None
    content_base: str | None = None
    embedded: dict[str, Any] | None = None
    problem: str | None = None
    vanished: bool = False


class _ProgressMeter:
    """Counts files and bytes from worker threads; reports at most every 0.2 s and every STATUS_EVERY files."""

    def __init__(self, callback: Callable[[ScanProgress], None] | None, phase: str, files_total: int, bytes_total: int):
        self.callback = callback
        self.state = ScanProgress(phase, files_total=files_total, bytes_total=bytes_total)
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.last_emit = 0.0

    def add(self, nbytes: int = 0, files: int = 0) -> None:
        with self.lock:
            self.state.bytes_done += nbytes
            self.state.files_done += files
            if files and self.state.files_done % STATUS_EVERY == 0:
                log.info("%s: %d/%d models", self.state.phase, self.state.files_done, self.state.files_total)
            now = time.monotonic()
            if self.callback is None or (now - self.last_emit < 0.2 and not files):
                return
            self.last_emit = now
            elapsed = now - self.started
            done = self.state.bytes_done
            if done and self.state.bytes_total:
                self.state.eta_seconds = elapsed * (self.state.bytes_total - done) / done
            snapshot = ScanProgress(**self.state.__dict__)
        self.callback(snapshot)


def _emit(progress: Callable[[ScanProgress], None] | None, phase: str, total: int = 0) -> None:
    if progress is not None:
        progress(ScanProgress(phase, files_total=total, files_done=total if phase == "done" else 0))


def _cached_files(db: sqlite_utils.Database, server_id: str) -> dict[str, dict[str, Any]]:
    sql = """
        SELECT a.path, a.size, a.mtime_ns, a.content_type, a.content_base, a.embedded, a.problem,
               m.hash_sha256, m.hash_autov1, m.hash_autov3
        FROM model_server_availability a LEFT JOIN models m ON m.id = a.model_id
        WHERE a.server_id = ?"""
    return {row["path"]: row for row in db.query(sql, [server_id])}


def _reuse_cached(state: _FileState, cached: dict[str, Any] | None) -> tuple[bool, bool]:
    """Take what the catalog knows of an unchanged file; returns (header known, hashes known)."""
    m = state.model
    if cached is None or cached["size"] != m.size or cached["mtime_ns"] != m.mtime_ns:
        return False, False
    header_known = cached["embedded"] is not None or cached["problem"] is not None
    if header_known:
        state.content_type = cached["content_type"]
        state.content_base = cached["content_base"]
        state.embedded = json.loads(cached["embedded"]) if cached["embedded"] is not None else None
        state.problem = cached["problem"]
    if cached["hash_sha256"]:
        state.hashes = FileHashes(cached["hash_sha256"], cached["hash_autov1"], cached["hash_autov3"])
    return header_known, state.hashes is not None


def _read_header(state: _FileState) -> None:
    try:
        header = read_header(state.model.path)
    except FileNotFoundError:
        state.vanished = True
        state.problem = "file vanished during the scan"
        return
    except (HeaderError, OSError) as exc:
        state.problem = str(exc)
        state.embedded = {}
        log.debug("%s: header unreadable: %s", state.model.path, exc)
        return
    state.content_type, state.content_base = header.type, header.base
    state.embedded = header.embedded
    state.problem = header.problem
    log.debug("%s: header %s, type=%s base=%s", state.model.path, header.format, header.type, header.base)


def _read_sidecars(
    sidecars_by_dir: dict[str, list[str]], model_stems: dict[str, set[str]], problems: list[ScanProblem]
) -> dict[str, SidecarIndex]:
    indexes: dict[str, SidecarIndex] = {}
    for directory, paths in sidecars_by_dir.items():
        recognised: list[Sidecar] = []
        for path in paths:
            try:
                sidecar = read_sidecar(path)
            except SidecarError as exc:
                problems.append(ScanProblem(path, str(exc)))
                continue
            if sidecar is not None:
                recognised.append(sidecar)
        if recognised:
            indexes[directory] = SidecarIndex(recognised, model_stems.get(directory, set()))
    return indexes


def _contributions(state: _FileState, sidecars: list[Sidecar]) -> list[MetadataContribution]:
    sha256 = state.hashes.sha256 if state.hashes else None
    found: list[MetadataContribution] = []
    for sidecar in sidecars:
        if sidecar.kind == "a1111":
            found.append(MetadataContribution("a1111", from_a1111(sidecar.data), sidecar.path))
        elif sidecar.kind == "civitai_version":
            found.append(MetadataContribution("civitai_json", from_civitai_version(sidecar.data, sha256), sidecar.path))
        elif sidecar.kind == "civitai_model":
            found.append(MetadataContribution("civitai_json", from_civitai_model(sidecar.data, sha256), sidecar.path))
    found.append(
        MetadataContribution("embedded", from_embedded(state.embedded or {}, state.content_type, state.content_base), "header")
    )
    return [c for c in found if c.fields]


def _inventory_file(state: _FileState, sidecars: list[Sidecar]) -> InventoryFile:
    m = state.model
    merged = merge(_contributions(state, sidecars))
    for name, source in sorted(merged.field_sources.items()):
        log.debug("%s: %s from %s", m.path, name, source)
    h = state.hashes
    return InventoryFile(
        path=m.path,
        rel_name=m.rel_name,
        role=m.root.role,
        size=m.size,
        mtime_ns=m.mtime_ns,
        sha256=h.sha256 if h else None,
        autov1=h.autov1 if h else None,
        autov3=h.autov3 if h else None,
        type=state.content_type,
        base=state.content_base,
        metadata_source=merged.metadata_source,
        metadata=merged.fields,
        field_sources=merged.field_sources,
        has_embedded_metadata=bool(state.embedded),
        has_preview=m.preview is not None,
        problem=state.problem,
        embedded=state.embedded,
    )


def scan(
    roots: list[Root],
    db: sqlite_utils.Database,
    server_id: str,
    *,
    calculate_hashes: bool = False,
    workers: int | None = None,
    max_hash_size: int = DEFAULT_MAX_HASH_SIZE,
    progress: Callable[[ScanProgress], None] | None = None,
    display_name: str | None = None,
    api_url: str | None = None,
) -> ScanReport:
    stats = ScanStats()
    _emit(progress, "discovering")
    found = discover(roots)
    problems = list(found.problems)
    stats.total = len(found.models)
    log.info("found %d model files under %d roots", stats.total, len(roots))

    cached = _cached_files(db, server_id)
    states = [_FileState(m) for m in found.models]
    to_read: list[_FileState] = []
    to_hash: list[_FileState] = []
    for state in states:
        header_known, hashes_known = _reuse_cached(state, cached.get(state.model.path))
        if not header_known:
            to_read.append(state)
        if hashes_known:
            stats.hashesCached += 1
            log.debug("%s: hashes from catalog", state.model.path)
        elif calculate_hashes and state.model.size <= max_hash_size:
            to_hash.append(state)
        else:
            stats.hashesSkipped += 1
            if state.model.size > max_hash_size:
                log.debug("%s: not hashed, %d bytes is over the limit of %d", state.model.path, state.model.size, max_hash_size)

    meter = _ProgressMeter(progress, "reading", len(to_read), 0)
    for state in to_read:
        _read_header(state)
        meter.add(files=1)

    if to_hash:
        by_path = {s.model.path: s for s in to_hash}
        meter = _ProgressMeter(progress, "hashing", len(to_hash), sum(s.model.size for s in to_hash))

        def on_result(path: str, hashes: FileHashes | None, error: BaseException | None) -> None:
            state = by_path[path]
            if hashes is not None:
                state.hashes = hashes
                log.debug("%s: hashed, sha256 %s", path, hashes.sha256)
            elif isinstance(error, FileNotFoundError):
                state.vanished = True
                state.problem = "file vanished during the scan"
            else:
                state.problem = f"hashing failed: {error}"
            meter.add(files=1)

        hash_files([s.model.path for s in to_hash], workers=workers, on_bytes=lambda n: meter.add(nbytes=n), on_result=on_result)
        stats.hashesCalculated = sum(1 for s in to_hash if s.hashes is not None)

    _emit(progress, "saving", len(states))
    model_stems: dict[str, set[str]] = {}
    for m in found.models:
        model_stems.setdefault(os.path.dirname(m.path), set()).add(os.path.splitext(os.path.basename(m.path))[0])
    indexes = _read_sidecars(found.sidecars_by_dir, model_stems, problems)
    files: list[InventoryFile] = []
    for state in states:
        if state.problem:
            problems.append(ScanProblem(state.model.path, state.problem))
        if state.vanished:
            continue
        index = indexes.get(os.path.dirname(state.model.path))
        sidecars = index.for_model(state.model.path, state.hashes.sha256 if state.hashes else None) if index else []
        files.append(_inventory_file(state, sidecars))

    inventory = Inventory(server_id=server_id, display_name=display_name, api_url=api_url, roots=list(roots), files=files)
    applied = apply_inventory(db, inventory)
    stats.added, stats.updated, stats.removed = applied.added, applied.updated, applied.removed

    by_sha: dict[str, list[str]] = {}
    for f in files:
        if f.sha256:
            by_sha.setdefault(f.sha256, []).append(f.path)
    duplicates = [Duplicate(sha, sorted(paths)) for sha, paths in sorted(by_sha.items()) if len(paths) > 1]
    stats.duplicates = len(duplicates)
    stats.errors = len(problems)
    _emit(progress, "done", len(states))
    report = ScanReport(stats=stats, problems=problems, duplicates=duplicates, inventory=inventory)
    log.info(report.message.replace("\n", " "))
    return report
