"""Re-scan soon after model files appear, change or disappear (watchfiles), with the timed re-scan as the source of
truth: a watcher only makes it sooner.

Folders on network file systems are never watched (inotify does not see what other machines write there), only
re-scanned on the timer; the log says so once per folder. A partial download (`*.part`, `*.tmp`, `*.downloading`,
`*.aria2`, our own `.modelsync-*.part`) is not a change. A folder that appears or goes is one: the files of a folder
copied or moved in may be written before its own watch is in place, and those of a folder moved out get no events of
their own. A batch whose files are as they were when last acted on (the writes made while a copy settled come as a
batch of their own) is not a change. When the system's watch limit is reached, watching stops with one log line and
the timer carries on."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..records import MODEL_EXTENSIONS
from ..scan.discovery import PREVIEW_SUFFIX, SIDECAR_SUFFIXES

log = logging.getLogger(__name__)

QUIET_MS = 1500  # changes are acted on once the folders have been quiet this long (a copy in progress is not)
MAX_GROUP_MS = 30_000  # however busy the folders, a re-scan starts after this long
NETWORK_FILE_SYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "afs",
                                  "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "ceph", "glusterfs", "fuse.glusterfs"})
ADDED, DELETED = 1, 3  # watchfiles.Change values (watchfiles is imported only in the watcher's thread)
PARTIAL_SUFFIXES = (".part", ".tmp", ".downloading", ".aria2", ".crdownload", ".partial")
RELEVANT_SUFFIXES = tuple(MODEL_EXTENSIONS) + SIDECAR_SUFFIXES + (PREVIEW_SUFFIX,)


def _ignored(name: str) -> bool:
    """`name`: a file name in lower case. Hidden, or a download in progress."""
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIXES)


def is_relevant(path: str) -> bool:
    """A model file, a sidecar or a preview, not hidden, not a download in progress."""
    name = os.path.basename(path).lower()
    return not _ignored(name) and name.endswith(RELEVANT_SUFFIXES)


def is_relevant_change(change: int, path: str) -> bool:
    """`change`: watchfiles' Change (1 added, 2 modified, 3 deleted). A relevant file, or a folder added (the path is a
    folder now) or deleted (gone: any path not hidden and not a partial download may have been one)."""
    name = os.path.basename(path).lower()
    if _ignored(name):
        return False
    if name.endswith(RELEVANT_SUFFIXES):
        return True
    return os.path.isdir(path) if change == ADDED else change == DELETED


FileStates = dict[str, tuple[int, int, int] | None]  # path -> (size, mtime_ns, ctime_ns), None when it is not there
UNSEEN = ()  # the state of a path not acted on before: unequal to every state, None too


def file_states(paths: Iterable[str]) -> FileStates:
    found: FileStates = {}
    for path in paths:
        try:
            st = os.stat(path)
            found[path] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # ctime: a chmod or touch is a change too
        except OSError:
            found[path] = None
    return found


def file_system_of(path: str, mounts: Iterable[tuple[str, str]]) -> str | None:
    """The type of the file system holding `path`: the longest mount point that contains it."""
    real = os.path.realpath(path)
    best: tuple[int, str | None] = (-1, None)
    for mount_point, fs_type in mounts:
        base = mount_point.rstrip("/") or "/"
        if (real == base or real.startswith(base.rstrip("/") + "/")) and len(base) > best[0]:
            best = (len(base), fs_type)
    return best[1]


def read_mounts(mounts_file: str = "/proc/mounts") -> list[tuple[str, str]]:
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as f:
            rows = [line.split() for line in f]
    except OSError:
        return []  # not Linux: nothing is known to be a network share
    return [(row[1].replace("\\040", " "), row[2]) for row in rows if len(row) >= 3]


@dataclass
class WatchPlan:
    watched: list[str] = field(default_factory=list)
    timer_only: dict[str, str] = field(default_factory=dict)  # folder -> why it is only re-scanned on the timer


def plan(folders: Iterable[str], mounts: list[tuple[str, str]]) -> WatchPlan:
    result = WatchPlan()
    for folder in folders:
        if not os.path.isdir(folder):
            result.timer_only[folder] = "not a folder now"
            continue
        fs_type = file_system_of(folder, mounts)
        if fs_type in NETWORK_FILE_SYSTEMS:
            result.timer_only[folder] = f"on a network file system ({fs_type}): changes made elsewhere are not seen"
        else:
            result.watched.append(folder)
    return result


class FolderWatcher:
    """Calls `on_change(paths)` from its own thread for relevant changes, once the folders have been quiet for
    `quiet_ms` (at least 1.5 s), or after `MAX_GROUP_MS` of continuous changes."""

    def __init__(self, folders: Iterable[str], on_change: Callable[[set[str]], None], *,
                 quiet_ms: int = QUIET_MS, mounts_file: str = "/proc/mounts"):
        self.plan = plan(folders, read_mounts(mounts_file))
        self.on_change = on_change
        self.quiet_ms = max(quiet_ms, QUIET_MS)
        self.stopped = threading.Event()
        self.failure: str | None = None  # why watching stopped early (the timer goes on)
        self._acted: FileStates = {}  # each file acted on, as it was then
        self._thread: threading.Thread | None = None
        for folder, why in self.plan.timer_only.items():
            log.info("not watching %s (%s); it is re-scanned on the timer", folder, why)

    def start(self) -> None:
        if self.plan.watched and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="modelsync-watcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _settled(self, paths: set[str]) -> FileStates | None:
        """The changed files' states once they have kept them for `quiet_ms` (a copy in progress goes on
        changing them; watchfiles reports each path once per batch however often it is written), at most
        MAX_GROUP_MS. None when the watcher is stopped meanwhile."""
        deadline = time.monotonic() + MAX_GROUP_MS / 1000
        last = file_states(paths)
        while not self.stopped.wait(self.quiet_ms / 1000):
            now = file_states(paths)
            if now == last or time.monotonic() > deadline:
                return now
            last = now
        return None

    def _run(self) -> None:
        try:
            import watchfiles
        except ImportError:  # a WebUI started with --skip-install: the timer carries on
            self.failure = "the watchfiles package is not installed"
            log.warning("file watching is off (%s); model folders are re-scanned on the timer only", self.failure)
            return
        try:
            for changes in watchfiles.watch(*self.plan.watched, watch_filter=is_relevant_change,
                                            debounce=self.quiet_ms, stop_event=self.stopped, raise_interrupt=False,
                                            rust_timeout=1000, yield_on_timeout=False):
                settled = self._settled({path for _change, path in changes})
                # the writes made while the last batch settled come again as a batch of their own: not a change now
                changed = {path for path, state in (settled or {}).items() if self._acted.get(path, UNSEEN) != state}
                if changed:
                    self.on_change(changed)
                    # kept for the files there are (a bounded memory)
                    self._acted = {p: st for p, st in {**self._acted, **settled}.items() if st is not None}
        except (OSError, RuntimeError) as exc:  # e.g. the inotify watch limit: the timed re-scan carries on
            self.failure = str(exc)
            log.warning("file watching stopped (%s); model folders are re-scanned on the timer only", exc)
