"""Our temp files: `.modelsync-<sha256>.part` in the destination folder, hidden from scans (a leading dot, `.part`),
kept across restarts for a resume, and recognisable as ours when a crash orphaned them."""
from __future__ import annotations

import logging
import os
import re
from typing import Iterable

log = logging.getLogger(__name__)

_PART_NAME = re.compile(r"\.modelsync-([0-9a-f]{64})\.part")


def part_name(sha256: str) -> str:
    return f".modelsync-{sha256}.part"


def remove_orphaned_parts(folders: Iterable[str], keep: Iterable[str] = ()) -> list[str]:
    """At start-up: remove our temp files under `folders` except those of the SHA256s in `keep` (transfers still
    ordered, which resume from them). Returns the paths removed; other programs' partial files are left alone."""
    keep = set(keep)
    removed = []
    for folder in folders:
        for directory, _dirs, files in os.walk(folder):
            for name in files:
                match = _PART_NAME.fullmatch(name)
                if match is None or match.group(1) in keep:
                    continue
                path = os.path.join(directory, name)
                try:
                    os.remove(path)
                except OSError as exc:
                    log.warning("could not remove the orphaned temp file %s: %s", path, exc.strerror or exc)
                    continue
                removed.append(path)
    if removed:
        log.info("removed %d orphaned transfer temp files", len(removed))
    return removed
