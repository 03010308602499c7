"""The re-scans asked for between the timed ones: a watcher on the roots' folders while the watch setting is on (a
changed set of folders gets a new watcher), and the re-scan it or a served file that changed asks for, which wakes
the background thread."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from ..records import Root
from .config import NodeConfig
from .watcher import FolderWatcher

log = logging.getLogger("modelsync.node")


class RescanRequests:
    def __init__(self, config: Callable[[], NodeConfig], roots: Callable[[], list[Root]], wake: threading.Event):
        self._config = config
        self._roots = roots
        self._wake = wake  # the background thread looks at what is due now
        self.changed = threading.Event()  # the watcher saw a change: re-scan
        self._watcher: FolderWatcher | None = None
        self._watched: tuple[str, ...] = ()

    def follow_watch_settings(self) -> None:
        """Watch the roots' folders while watching is on; a changed set of folders gets a new watcher."""
        folders = tuple(sorted({root.path for root in self._roots()})) if self._config().watch else ()
        if folders == self._watched:
            return
        self.stop_watching()
        self._watched = folders
        if folders:
            self._watcher = FolderWatcher(folders, self.request_rescan)
            self._watcher.start()

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._watched = ()

    def request_rescan(self, paths: Iterable[str] = ()) -> None:
        """A re-scan soon (the background thread's next round): the watcher saw changes, or a file served changed."""
        log.debug("modelsync: re-scanning (%s)", ", ".join(sorted(paths)[:3]) or "asked")
        self.changed.set()
        self._wake.set()
