"""Walking model roots: model files, candidate sidecars and previews, with every problem reported.

Symlinked folders are followed once (a folder reached again by another link is skipped, so loops end);
hidden entries and partial downloads are skipped; a root nested in another root is walked only as itself,
so each file gets the role of the most specific root that holds it.
"""
from __future__ import annotations

import logging
import os
import stat as stat_module
from pathlib import Path

from ..records import MODEL_EXTENSIONS, DiscoveredModel, Discovery, Root, ScanProblem

log = logging.getLogger(__name__)

SIDECAR_SUFFIXES = (".json", ".civitai.info")
PREVIEW_SUFFIX = ".preview.jpeg"
# A download still in progress: the model file exists beside a marker of the downloader.
PARTIAL_MARKERS = (".aria2", ".part", ".crdownload", ".download", ".tmp")
PARTIAL_SUFFIXES = (".part", ".crdownload", ".download", ".tmp", ".partial")


def _printable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _model_stem(name: str) -> str:
    return os.path.splitext(name)[0]


def discover(roots: list[Root]) -> Discovery:
    found = Discovery()
    by_real: dict[str, Root] = {}
    for root in roots:  # the same folder given twice is walked once, with its role if either has one
        real = os.path.realpath(root.path)
        if real not in by_real or (by_real[real].role is None and root.role is not None):
            by_real[real] = root
    resolved = [(root, real) for real, root in by_real.items()]
    root_dirs = set(by_real)
    seen_files: set[str] = set()
    for root, real_root in resolved:
        if not os.path.isdir(real_root):
            reason = "root folder is not a folder" if os.path.exists(real_root) else "root folder does not exist"
            found.problems.append(ScanProblem(root.path, reason))
            found.unavailable[root.path] = reason
            continue
        found.attachments.add(root.path)
        _walk_root(root, real_root, root_dirs - {real_root}, seen_files, found)
    return found


def _folder_unavailable(found: Discovery, directory: str, reason: str) -> None:
    found.problems.append(ScanProblem(_printable(directory), reason))
    found.unavailable[directory] = reason


def _walk_root(root: Root, real_root: str, other_roots: set[str], seen_files: set[str], found: Discovery) -> None:
    visited_dirs: set[tuple[int, int]] = set()
    stack = [root.path]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError as exc:
            _folder_unavailable(found, directory, f"cannot open folder: {exc.strerror or exc}")
            continue
        key = (st.st_dev, st.st_ino)
        if key in visited_dirs:
            log.debug("skip %s: folder already visited (symlink loop or second link)", _printable(directory))
            continue
        visited_dirs.add(key)
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            _folder_unavailable(found, directory, f"cannot list folder: {exc.strerror or exc}")
            continue
        if directory != root.path and (os.path.islink(directory) or os.path.ismount(directory)):
            found.attachments.add(directory)
        names = {e.name for e in entries}
        sidecars: list[str] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                found.skipped += 1
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if (not is_dir and os.path.splitext(name.lower())[1] not in MODEL_EXTENSIONS and entry.is_symlink()
                    and not os.path.exists(entry.path)):
                # a link whose target is gone (an unmounted share, a moved folder): only the catalog can say what
                # was under it, so the scanner decides whether this matters
                found.unavailable[entry.path] = "link target does not exist"
                continue
            if is_dir:
                if os.path.realpath(entry.path) in other_roots:
                    continue
                stack.append(entry.path)
                continue
            lower = name.lower()
            if lower.endswith(SIDECAR_SUFFIXES):
                sidecars.append(entry.path)
                continue
            ext = os.path.splitext(lower)[1]
            if lower.endswith(PARTIAL_SUFFIXES):
                found.skipped += 1
                continue
            if ext not in MODEL_EXTENSIONS:
                continue
            if not _is_utf8(name):
                found.problems.append(ScanProblem(_printable(entry.path), "file name is not valid UTF-8; rename the file"))
                continue
            if any(name + marker in names for marker in PARTIAL_MARKERS):
                log.debug("skip %s: partial download", entry.path)
                found.skipped += 1
                continue
            model = _discovered(entry, root, found)
            if model is None:
                continue
            real = os.path.realpath(entry.path)
            if real in seen_files and os.path.islink(entry.path):
                log.debug("skip %s: link to a file already listed", entry.path)
                continue
            seen_files.add(real)
            preview = _model_stem(name) + PREVIEW_SUFFIX
            if preview in names:
                model.preview = os.path.join(directory, preview)
            found.models.append(model)
        if sidecars:
            found.sidecars_by_dir[directory] = sidecars


def _discovered(entry: os.DirEntry, root: Root, found: Discovery) -> DiscoveredModel | None:
    try:
        st = entry.stat()  # follows symlinks
    except FileNotFoundError:
        found.problems.append(ScanProblem(entry.path, "file vanished or is a broken link"))
        return None
    except OSError as exc:
        found.problems.append(ScanProblem(entry.path, f"cannot read file: {exc.strerror or exc}"))
        return None
    if not stat_module.S_ISREG(st.st_mode):
        return None
    rel_name = Path(os.path.relpath(entry.path, root.path)).as_posix()
    return DiscoveredModel(path=entry.path, root=root, rel_name=rel_name, size=st.st_size, mtime_ns=st.st_mtime_ns)
