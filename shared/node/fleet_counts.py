"""The fleet counts of this node's models (SHA256 -> how many fleet nodes hold it), read from the central server in
a thread of their own so a face never waits for them, and whether the server took a push since they were read."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..push_client import PushError
from .client import NodeClient
from .config import NodeConfig
from .contact import PushStatus

log = logging.getLogger("modelsync.node")


class FleetCounts:
    def __init__(self, config: Callable[[], NodeConfig], client_for: Callable[[NodeConfig, str], NodeClient],
                 timeout: float, status: PushStatus, push_waiting: Callable[[], bool], pushes_taken: Callable[[], int]):
        self._config = config
        self._client_for = client_for
        self._timeout = timeout
        self._status = status
        self._push_waiting = push_waiting
        self._pushes_taken = pushes_taken
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.counts: dict[str, int] | None = None  # the last fleet counts read (None: none, or no server)
        self.read_at = -1  # pushes_taken when that read started

    def read(self) -> dict[str, int] | None:
        """SHA256 -> how many fleet nodes hold it, for this node's models; None without a reachable server."""
        config = self._config()
        if not config.server_url:
            return None
        try:
            counts = self._client_for(config, "counts").node_counts(config.node_id, timeout=self._timeout)
        except PushError as exc:
            self._status.failed(exc)
            log.warning("modelsync could not read the fleet counts: %s", exc)
            return None
        self._status.answered(self._push_waiting())
        return counts

    def read_in_background(self) -> None:
        """Read the fleet counts into `counts` in a thread of its own, unless a read is under way."""
        with self._lock:
            if self.reading():
                return
            self._thread = threading.Thread(target=self._read_into_counts, name="modelsync-fleet-counts", daemon=True)
            self._thread.start()

    def _read_into_counts(self) -> None:
        started_after = self._pushes_taken()
        try:
            self.counts = self.read()
        finally:  # even a failed read counts as read: follow_background does not ask again for it
            self.read_at = started_after

    def reading(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stale(self) -> bool:
        """Whether the server took a push since the last read of the fleet counts started (or none was ever read)."""
        return self.read_at < self._pushes_taken()
