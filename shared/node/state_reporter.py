"""The node's state on its way to the central server (shared/node/state.py holds what it is): every heartbeat carries
it, and a thread of its own looks at the host's activity every STATE_POLL_SECONDS, and at once when the face says it
changed (a model loaded); a change is sent in a heartbeat of its own, at most one such heartbeat per
EXTRA_HEARTBEAT_SECONDS however often the state flips (the last state is sent when that time is up)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..push_client import PushError
from ..records import Root
from .client import NodeClient
from .config import NodeConfig
from .contact import PushStatus
from .rounds import run_rounds
from .state import HostActivity, StateReport, disk_spaces, gpu_memory

log = logging.getLogger("modelsync.node")

STATE_POLL_SECONDS = 2.0  # the host's activity is looked at this often (and at once when the face says it changed)
EXTRA_HEARTBEAT_SECONDS = 5.0  # at most one heartbeat for a changed state per this long


class StateReporter:
    def __init__(self, config: Callable[[], NodeConfig], roots: Callable[[], list[Root]],
                 activity: Callable[[], HostActivity], client_for: Callable[[NodeConfig], NodeClient],
                 status: PushStatus, push_lock: threading.Lock, push_waiting: Callable[[], bool],
                 clock: Callable[[], float], stopped: threading.Event):
        self._config = config
        self._roots = roots
        self._activity = activity  # what the host is doing (`modelsync node`: nothing known)
        self._client_for = client_for
        self._status = status
        self._push_lock = push_lock
        self._push_waiting = push_waiting
        self._clock = clock
        self._stopped = stopped
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent_activity: HostActivity | None = None  # as the last heartbeat the server took reported it
        self._last_extra: float | None = None  # service clock of the last heartbeat sent for a changed state
        self.state_heartbeats = 0  # heartbeats sent for a changed state

    def heartbeat(self) -> bool:
        """Tell the central server this node is alive, with its state; True when it answered."""
        config = self._config()
        report = self.current_state()
        try:
            self._client_for(config).heartbeat(config.display_name, config.api_url, report.to_dict())
        except PushError as exc:
            self._status.failed(exc)
            return False
        self._sent_activity = report.activity
        self._status.last_heartbeat = time.time()
        self._status.answered(self._push_waiting())
        return True

    def current_state(self) -> StateReport:
        """What the node is doing now; a part that cannot be read is reported as not known."""
        return StateReport(self._host_activity(), disk_spaces(self._roots()), gpu_memory(), self._config().free_floor_bytes)

    def _host_activity(self) -> HostActivity:
        try:
            return self._activity()
        except Exception:  # a host that changed under us must not stop the heartbeats
            log.warning("modelsync: reading the host's state failed", exc_info=True)
            return HostActivity()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="modelsync-state", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        run_rounds(self._report_changed_state, self._stopped, failed_delay=STATE_POLL_SECONDS,
                   failure="modelsync state report failed", wake=self._wake)

    def _report_changed_state(self) -> float:
        """Send a heartbeat when the host's activity differs from the last one the server took, unless one was sent
        for a change less than EXTRA_HEARTBEAT_SECONDS ago; the seconds until the next look."""
        config = self._config()
        if not config.server_url or config.heartbeat_seconds <= 0 or self._push_waiting():
            # no heartbeats configured, or the push and its retries come first (their heartbeats carry the state).
            # How the last request went does not matter: a failed read of the fleet counts says nothing about the
            # next heartbeat.
            return STATE_POLL_SECONDS
        if self._host_activity() == self._sent_activity:
            return STATE_POLL_SECONDS
        now = self._clock()
        if self._last_extra is not None and now < self._last_extra + EXTRA_HEARTBEAT_SECONDS:
            return min(STATE_POLL_SECONDS, self._last_extra + EXTRA_HEARTBEAT_SECONDS - now)
        if not self._push_lock.acquire(timeout=STATE_POLL_SECONDS):
            return 0.0  # a push is under way: look again when it is over
        try:
            self._last_extra = now
            self.state_heartbeats += 1
            self.heartbeat()
        finally:
            self._push_lock.release()
        return STATE_POLL_SECONDS
