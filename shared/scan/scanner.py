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

from ..inventory import Inventory, InventoryFile
from ..inventory_apply import apply_inventory
from ..records import (
    DEFAULT_MAX_HASH_SIZE,
    DiscoveredModel,
    Discovery,
    FileHashes,
    MetadataContribution,
    Root,
    ScanProblem,
    ScanStats,
)
from .discovery import discover
from .hashing import hash_files
from .metadata_merge import merge
from .metadata_sources import (
    from_a1111,
    from_civitai_model,
    from_civitai_version,
    from_embedded,
)
from .model_header import HeaderError, read_header
from .sidecars import Sidecar, SidecarError, SidecarIndex, read_sidecar

log = logging.getLogger(__name__)

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
class UnavailableFolder:
    """A folder whose files could not be seen: what the catalog held under it is kept, flagged unreachable."""

    path: str
    reason: str
    files_kept: int


@dataclass
class ScanReport:
    stats: ScanStats
    problems: list[ScanProblem] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    inventory: Inventory | None = None
    unavailable: list[UnavailableFolder] = field(default_factory=list)

    @property
    def message(self) -> str:
        s = self.stats
        lines = [
            f"Scan complete! Found {s.total} model files",
            f"- Added: {s.added} new models to database",
            f"- Updated: {s.updated} models with new metadata",
            f"- Calculated: {s.hashesCalculated} hashes",
        ]
        unhashed = s.hashesSkipped
        if unhashed:
            lines.append(f"- Not hashed yet: {unhashed} files (listed, not models until hashed: scan with hashing on)")
        if s.removed:
            lines.append(f"- Removed: {s.removed} models no longer on disk")
        for folder in self.unavailable:
            lines.append(f"- Unavailable: {folder.path}: {folder.reason}; {folder.files_kept} files kept from the catalog, "
                         "not offered to jobs until the folder is back")
        if s.broken:
            lines.append(f"- Broken: {s.broken} files are not whole models (never offered to jobs)")
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
            "unavailable": [{"path": u.path, "reason": u.reason, "files_kept": u.files_kept} for u in self.unavailable],
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
    broken: bool = False  # the bytes are not a whole model: listed as a problem, never hashed nor offered


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
    """Every file the catalog holds for this node, usable or not, with what is known of its bytes."""
    columns = "a.path, a.rel_name, a.role, a.size, a.mtime_ns, a.has_preview, a.content_type, a.content_base, a.embedded"
    hashes = "m.hash_sha256, m.hash_autov1, m.hash_autov3"
    sql = f"""
        SELECT {columns}, a.problem, 'ok' AS state, {hashes}
        FROM model_server_availability a LEFT JOIN models m ON m.id = a.model_id WHERE a.server_id = ?
        UNION ALL
        SELECT {columns}, a.reason AS problem, a.state, {hashes}
        FROM unusable_files a LEFT JOIN models m ON m.id = a.model_id WHERE a.server_id = ?"""
    return {row["path"]: row for row in db.query(sql, [server_id, server_id])}


def _reuse_cached(state: _FileState, cached: dict[str, Any] | None) -> tuple[bool, bool]:
    """Take what the catalog knows of an unchanged file; returns (header known, hashes known). A broken file's
    header is read again (cheap, and a fixed permission does not change the mtime)."""
    m = state.model
    if cached is None or cached["size"] != m.size or cached["mtime_ns"] != m.mtime_ns or cached["state"] == "broken":
        return False, False
    header_known = cached["embedded"] is not None or (cached["problem"] is not None and cached["state"] == "ok")
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
    except HeaderError as exc:
        state.problem, state.broken = str(exc), True
        log.debug("%s: not a whole model: %s", state.model.path, exc)
        return
    except OSError as exc:
        state.problem, state.broken = f"cannot read: {exc.strerror or exc}", True
        log.debug("%s: unreadable: %s", state.model.path, exc)
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


def _unavailable_folders(found: Discovery, roots: list[Root], cached: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Folders whose content cannot be seen now: unreadable or missing ones, links to nowhere, and roots or mounted
    folders found empty while the catalog holds files under them (an unmounted share looks like an empty folder)."""
    def under(folder: str, path: str) -> bool:
        return path.startswith(folder.rstrip(os.sep) + os.sep)

    seen = [m.path for m in found.models]
    folders = {path: reason for path, reason in found.unavailable.items()
               if any(path == r.path for r in roots) or any(under(path, p) for p in cached)}
    for folder in found.attachments:
        if folder in folders or any(under(f, folder) for f in folders):
            continue
        if not any(under(folder, p) for p in seen):
            held = sum(1 for p in cached if under(folder, p))
            if held:
                folders[folder] = f"folder is empty while the catalog holds {held} files under it (an unmounted share?)"
    return folders


def _kept_files(folders: dict[str, str], roots: list[Root], cached: dict[str, dict[str, Any]],
                seen: set[str]) -> dict[str, list[InventoryFile]]:
    """Per unavailable folder: the catalog's files under it, listed as unreachable with their cached hashes. While a
    root is unavailable, files under none of the available roots are kept too (a mistyped root must not wipe the
    files of the root it was meant to be); once every root is there, such files are gone for good."""
    def under(folder: str, path: str) -> bool:
        return path.startswith(folder.rstrip(os.sep) + os.sep)

    kept: dict[str, list[InventoryFile]] = {folder: [] for folder in folders}
    missing_root = next((r.path for r in roots if r.path in folders), None)
    available_roots = [r.path for r in roots if r.path not in folders]
    for path, row in cached.items():
        if path in seen:
            continue
        folder = next((f for f in folders if under(f, path)), None)
        if folder is None and missing_root is not None and not any(under(r, path) for r in available_roots):
            folder = missing_root
        if folder is None:
            continue
        kept[folder].append(InventoryFile(
            path=path, rel_name=row["rel_name"], role=row["role"], size=row["size"], mtime_ns=row["mtime_ns"],
            sha256=row["hash_sha256"], autov1=row["hash_autov1"], autov3=row["hash_autov3"],
            type=row["content_type"], base=row["content_base"], has_preview=bool(row["has_preview"]),
            problem=folders[folder], state="unreachable",
            embedded=json.loads(row["embedded"]) if row["embedded"] is not None else None,
        ))
    return kept


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
        state="broken" if state.broken else "ok",
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
    forget_unreachable: bool = False,
) -> ScanReport:
    """forget_unreachable: drop from the catalog the files of folders that cannot be read now (by default they are
    kept, flagged unreachable, with their hashes)."""
    stats = ScanStats()
    _emit(progress, "discovering")
    found = discover(roots)
    problems = list(found.problems)
    stats.total = len(found.models)
    log.info("found %d model files under %d roots", stats.total, len(roots))

    cached = _cached_files(db, server_id)
    states = [_FileState(m) for m in found.models]
    to_read: list[_FileState] = []
    hashes_known: set[str] = set()
    for state in states:
        header_known, cached_hashes = _reuse_cached(state, cached.get(state.model.path))
        if not header_known:
            to_read.append(state)
        if cached_hashes:
            hashes_known.add(state.model.path)

    meter = _ProgressMeter(progress, "reading", len(to_read), 0)
    for state in to_read:
        _read_header(state)
        meter.add(files=1)

    to_hash: list[_FileState] = []
    for state in states:
        if state.broken or state.vanished:
            state.hashes = None
        elif state.model.path in hashes_known:
            stats.hashesCached += 1
            log.debug("%s: hashes from catalog", state.model.path)
        elif calculate_hashes and state.model.size <= max_hash_size:
            to_hash.append(state)
        else:
            stats.hashesSkipped += 1
            if state.model.size > max_hash_size:
                log.debug("%s: not hashed, %d bytes is over the limit of %d", state.model.path, state.model.size, max_hash_size)

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

    unavailable = _unavailable_folders(found, roots, cached)
    kept = {} if forget_unreachable else _kept_files(unavailable, roots, cached, {m.path for m in found.models})
    for folder, reason in unavailable.items():
        if not any(p.path == folder for p in problems):
            problems.append(ScanProblem(folder, reason))
        files.extend(kept.get(folder, []))
    stats.broken = sum(1 for f in files if f.state == "broken")
    stats.unreachable = sum(len(k) for k in kept.values())

    inventory = Inventory(server_id=server_id, display_name=display_name, api_url=api_url, roots=list(roots), files=files,
                          unavailable=unavailable)
    applied = apply_inventory(db, inventory)
    stats.added, stats.updated, stats.removed = applied.added, applied.updated, applied.removed

    by_sha: dict[str, list[str]] = {}
    for f in inventory.usable_files():
        if f.sha256:
            by_sha.setdefault(f.sha256, []).append(f.path)
    duplicates = [Duplicate(sha, sorted(paths)) for sha, paths in sorted(by_sha.items()) if len(paths) > 1]
    stats.duplicates = len(duplicates)
    stats.errors = len(problems)
    _emit(progress, "done", len(states))
    report = ScanReport(stats=stats, problems=problems, duplicates=duplicates, inventory=inventory,
                        unavailable=[UnavailableFolder(path, reason, len(kept.get(path, []))) for path, reason in unavailable.items()])
    log.info(report.message.replace("\n", " "))
    return report
