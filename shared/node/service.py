"""The node engine, shared by the Forge/A1111 extension and `modelsync node` (no Forge or gradio in it): scans with
progress, pushes to the central server with back-off (pushing.py), heartbeats with the node's state and reports a
changed state in a thread of its own (state_reporter.py), re-scans on a timer and soon after a change in the model
folders (watching.py), runs the transfers the server orders (transfers.py), reads the fleet counts
(fleet_counts.py), and keeps the status a face shows (status_line.py). The first heartbeat follows the start-up
push, so the central server knows the state from the start.

A scan and a push hold different locks: the tab's scan reports as soon as the files are read, its push goes on
in the background (a central server that takes the connection and never answers holds only the push), and a
newer scan meanwhile replaces the inventory that waits to be pushed. A re-scan of the timer or the watcher whose
inventory is the one the server took last pushes nothing."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import migrate, open_catalog
from ..records import Root
from ..scan.scanner import ScanProgress, ScanReport, scan
from ..transfer.receiver import Received
from .client import NodeClient
from .config import NodeConfig
from .contact import NodeClients, PushStatus, Timeouts
from .fleet_counts import FleetCounts
from .pushing import RETRY_DELAYS_SECONDS, InventoryPusher, Schedule
from .received import record_received
from .rounds import run_rounds
from .state import HostActivity
from .state_reporter import StateReporter
from .status_line import status_line
from .transfers import TransferRunner
from .watching import RescanRequests

log = logging.getLogger("modelsync.node")

IDLE_SECONDS = 60.0  # with nothing due, the background thread reads the settings again after this long


@dataclass
class ScanState:
    running: bool = False  # reading the files; the push that follows is in PushStatus.pushing
    calculate_hashes: bool = False
    progress: ScanProgress | None = None
    report: ScanReport | None = None
    error: str | None = None


class NodeService:
    """`config` and `roots` are read again each round, so a face's changed settings and folders apply at once."""

    def __init__(
        self,
        data_path: Path,
        config: Callable[[], NodeConfig],
        roots: Callable[[], list[Root]],
        retry_delays: tuple[float, ...] = RETRY_DELAYS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        timeouts: Timeouts = Timeouts(),
        activity: Callable[[], HostActivity] = HostActivity,
    ):
        self.data_path = Path(data_path)
        self.catalog_path = self.data_path / "catalog.db"
        self._config = config
        self._roots = roots
        self._clock = clock
        self._scan_lock = threading.Lock()  # one scan at a time
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # the background thread looks at what is due now
        self._thread: threading.Thread | None = None
        self._tab_scan: threading.Thread | None = None  # the tab's scan, then its push
        self._tab_scanned = threading.Event()  # set once the tab's scan has read the files
        self._tab_scanned.set()
        self._clients = NodeClients(self.data_path, timeouts)
        self.schedule = Schedule()
        self.scan_state = ScanState()
        self.push_status = PushStatus()
        self._pusher = InventoryPusher(config, self._client_for, self.push_status, self.schedule, retry_delays, clock)
        self._fleet = FleetCounts(config, self._client_for, timeouts.counts, self.push_status,
                                  lambda: self._pusher.waiting, lambda: self._pusher.pushes_taken)
        self._reporter = StateReporter(config, roots, activity, self._client_for, self.push_status, self._pusher.lock,
                                       lambda: self._pusher.waiting, clock, self._stop)
        self._rescans = RescanRequests(config, roots, self._wake)
        self.transfers = TransferRunner(config, roots, self._client_for, self._add_received)

    def config(self) -> NodeConfig:
        return self._config()

    def _client_for(self, config: NodeConfig, purpose: str = "push") -> NodeClient:
        return self._clients.client_for(config, purpose)

    # scanning: the tab's button

    def start_scan(self, calculate_hashes: bool) -> bool:
        """Scan, then push, in a thread of its own (the scan after any other scan; the push after any push under
        way); False when the tab's last scan has not read the files yet (the tab follows that one)."""
        with self._state_lock:
            if self.tab_scan_running():
                return False
            self.scan_state = ScanState(running=True, calculate_hashes=calculate_hashes)
            self._tab_scanned = threading.Event()
            self._tab_scan = threading.Thread(target=self.scan_and_push, args=(calculate_hashes, self._tab_scanned.set),
                                              name="modelsync-scan", daemon=True)
            self._tab_scan.start()
        return True

    def tab_scan_running(self) -> bool:
        """Whether the scan the tab started is still to read the files, even while it waits for another scan."""
        return not self._tab_scanned.is_set()

    def tab_push_running(self) -> bool:
        """Whether the push that follows the tab's last scan is still to end."""
        return self._tab_scan is not None and self._tab_scan.is_alive()

    def scan_and_push(self, calculate_hashes: bool, scanned: Callable[[], None] | None = None, *,
                      push_unchanged: bool = True, prepare: Callable[[Any], None] | None = None) -> ScanReport | None:
        """Scan the roots now, then push the inventory when a server is set (unless `push_unchanged` is False and
        the server took this very inventory last). The scan state shows progress meanwhile and the report as soon
        as the files are read (`scanned` is called then), before the push. `prepare(catalog)` runs first, under the
        scan lock. None when the scan failed (its error is in the state)."""
        try:
            with self._scan_lock:
                report = self._scan(calculate_hashes, prepare)
                if report is not None:
                    self._pusher.offer(report.inventory, self._clock(), push_unchanged)
                self.scan_state = ScanState(calculate_hashes=calculate_hashes, progress=self.scan_state.progress,
                                            report=report, error=self.scan_state.error)
        finally:
            if scanned is not None:
                scanned()
        if report is not None:
            self._pusher.push_pending()
        return report

    def _scan(self, calculate_hashes: bool, prepare: Callable[[Any], None] | None = None) -> ScanReport | None:
        config = self._config()
        self.scan_state = ScanState(running=True, calculate_hashes=calculate_hashes)
        try:
            self.data_path.mkdir(parents=True, exist_ok=True)
            db = open_catalog(self.catalog_path)
            try:
                migrate(db)
                if prepare is not None:
                    prepare(db)
                return scan(
                    self._roots(),
                    db,
                    config.node_id,
                    calculate_hashes=calculate_hashes,
                    max_hash_size=config.max_hash_size,
                    progress=self._on_progress,
                    display_name=config.display_name,
                    api_url=config.api_url,
                )
            finally:
                db.close()
        except Exception as exc:  # a scan must report, never kill its thread silently
            log.exception("modelsync scan failed")
            self.scan_state.error = f"{type(exc).__name__}: {exc}"
            return None

    def _on_progress(self, progress: ScanProgress) -> None:
        self.scan_state.progress = progress

    @property
    def push_waiting(self) -> bool:
        """Whether an inventory waits to be pushed (a push failed and is tried again, or one is under way)."""
        return self._pusher.waiting

    # the node's state

    def state_changed(self) -> None:
        """The face saw the host's state change (a model loaded): look at it now. Returns at once."""
        self._reporter.wake()

    @property
    def state_heartbeats(self) -> int:
        return self._reporter.state_heartbeats

    # the fleet counts

    @property
    def fleet(self) -> dict[str, int] | None:
        return self._fleet.counts

    def fleet_counts(self) -> dict[str, int] | None:
        return self._fleet.read()

    def read_fleet_counts(self) -> None:
        self._fleet.read_in_background()

    def reading_fleet_counts(self) -> bool:
        return self._fleet.reading()

    def fleet_counts_stale(self) -> bool:
        return self._fleet.stale()

    # the background thread: start-up sync, push retries, heartbeats, re-scans

    def start_background(self, initial_sync: bool = True) -> threading.Thread:
        """A daemon thread that scans and pushes once (when `initial_sync`), then runs `tick` until `stop()`; the
        transfer loop beside it. Started once; later calls return the running thread."""
        with self._state_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._background, args=(initial_sync,), name="modelsync-background", daemon=True)
                self._thread.start()
            return self._thread

    def _background(self, initial_sync: bool) -> None:
        if initial_sync:  # the start-up sync always runs: stop() waits for it
            self.scan_and_push(self._config().hash_new_files)
        if not self._stop.is_set():
            self.transfers.start()
            self._reporter.start()
        run_rounds(self._round, self._stop, failed_delay=IDLE_SECONDS, failure="modelsync background round failed",
                   wake=self._wake)
        self._rescans.stop_watching()

    def _round(self) -> float:
        self._rescans.follow_watch_settings()
        return self.tick()

    def request_rescan(self, paths: Iterable[str] = ()) -> None:
        self._rescans.request_rescan(paths)

    # a received file

    def _add_received(self, root: Root, received: Received) -> None:
        """Into the catalog with the receiver's hashes (nothing is read again but the header), then pushed."""
        config = self._config()
        self.scan_and_push(config.hash_new_files, push_unchanged=False,
                           prepare=lambda db: record_received(db, config.node_id, root, received))

    def tick(self) -> float:
        """Do what is due now (service clock): a re-scan, a push retry, a heartbeat; return the seconds until the
        next thing is due. Settings are read each time, so changes apply without a restart."""
        now = self._clock()
        config = self._config()
        plan = self.schedule
        rescan = config.rescan_seconds
        if rescan <= 0:
            plan.scan_at = None
        elif plan.scan_at is None or plan.scan_at > now + rescan:
            plan.scan_at = now + rescan
        server = bool(config.server_url)
        if not server or config.heartbeat_seconds <= 0 or self.push_waiting:
            plan.heartbeat_at = None  # while a push waits, its retries tell whether the server is back
        elif plan.heartbeat_at is None:
            plan.heartbeat_at = now + config.heartbeat_seconds

        changed = self._rescans.changed
        if changed.is_set() or (plan.scan_at is not None and now >= plan.scan_at):
            changed.clear()
            plan.scan_at = now + rescan if rescan > 0 else None
            self.scan_and_push(config.hash_new_files, push_unchanged=False)
        elif self.push_waiting and plan.push_at is not None and now >= plan.push_at:
            self._pusher.push_pending(now)
        elif plan.heartbeat_at is not None and now >= plan.heartbeat_at:
            plan.heartbeat_at = now + config.heartbeat_seconds
            with self._pusher.lock:
                self._reporter.heartbeat()
        due = [t for t in (plan.scan_at, plan.push_at if self.push_waiting else None, plan.heartbeat_at) if t is not None]
        return max(0.0, min([*due, now + IDLE_SECONDS]) - now)

    def stop(self, timeout: float | None = None) -> None:
        """End the background thread (at once if it is waiting; after the current round otherwise) and the
        transfers under way (left resumable)."""
        self._stop.set()
        self._wake.set()
        self._reporter.wake()
        self.transfers.stop(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._reporter.join(timeout)

    def status_line(self, now: float | None = None) -> str:
        return status_line(self._config(), self.push_status, self.push_waiting, self.schedule.failures, now)
