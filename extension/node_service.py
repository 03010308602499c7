"""The node's scan/push engine: scans with progress, pushes to the central server with back-off, heartbeats,
re-scans on a timer, and keeps the status the tab shows."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..shared.catalog import migrate, open_catalog
from ..shared.inventory import Inventory
from ..shared.push_client import NodeCredentials, PushError, ServerClient
from ..shared.records import Root
from ..shared.scanner import DEFAULT_MAX_HASH_SIZE, ScanProgress, ScanReport, scan
from .settings import MB, NodeSettings

log = logging.getLogger("modelsync.extension")

RETRY_DELAYS_SECONDS = (5.0, 15.0, 60.0, 300.0)  # after the 1st, 2nd, 3rd, further failed pushes
IDLE_SECONDS = 60.0  # with nothing due, the background thread reads the settings again after this long


@dataclass
class ScanState:
    running: bool = False
    calculate_hashes: bool = False
    pushing: bool = False
    progress: ScanProgress | None = None
    report: ScanReport | None = None
    error: str | None = None


@dataclass
class PushStatus:
    reachable: bool | None = None  # None: never contacted (or no server configured)
    last_push: float | None = None  # wall-clock time of the last push the server took
    answer: dict[str, Any] = field(default_factory=dict)  # the server's answer to it
    previews_written: list[str] = field(default_factory=list)
    last_heartbeat: float | None = None
    error: str | None = None  # the last failure (push or heartbeat); a success clears it
    attempts: int = 0  # pushes tried
    next_retry: float | None = None  # wall-clock time of the next try of a failed push


@dataclass
class Schedule:
    """When the background thread next re-scans, retries the push and heartbeats (service clock; None: not planned)."""

    scan_at: float | None = None
    push_at: float | None = None
    heartbeat_at: float | None = None
    failures: int = 0


class NodeService:
    def __init__(
        self,
        data_path: Path,
        settings: Callable[[], NodeSettings],
        roots: Callable[[list[str]], list[Root]],
        retry_delays: tuple[float, ...] = RETRY_DELAYS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.data_path = Path(data_path)
        self.catalog_path = self.data_path / "catalog.db"
        self._settings = settings
        self._roots = roots
        self._retry_delays = retry_delays
        self._clock = clock
        self._busy = threading.Lock()  # one scan, push or heartbeat at a time
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tab_scan: threading.Thread | None = None
        self._client: ServerClient | None = None
        self._client_key: tuple[str, str, str] | None = None
        self._pending: Inventory | None = None  # the inventory still to be pushed
        self.schedule = Schedule()
        self.scan_state = ScanState()
        self.push_status = PushStatus()

    def settings(self) -> NodeSettings:
        return self._settings()

    # scanning: the tab's button

    def start_scan(self, calculate_hashes: bool) -> bool:
        """Scan and push in a thread of its own (after any scan or push under way); False when the tab's last
        scan has not ended yet (the tab follows that one)."""
        with self._state_lock:
            if self.tab_scan_running():
                return False
            self.scan_state = ScanState(running=True, calculate_hashes=calculate_hashes)
            self._tab_scan = threading.Thread(target=self.scan_and_push, args=(calculate_hashes,), name="modelsync-scan",
                                              daemon=True)
            self._tab_scan.start()
        return True

    def tab_scan_running(self) -> bool:
        """Whether the scan the tab started (and its push) is still to end, even while it waits for another."""
        return self._tab_scan is not None and self._tab_scan.is_alive()

    def scan_and_push(self, calculate_hashes: bool) -> ScanReport | None:
        """Scan the host's roots now, then push the inventory at once when a server is set; the scan state
        shows progress meanwhile and the report at the end. None when the scan failed (its error is in the state)."""
        with self._busy:
            report = self._scan(calculate_hashes)
            if report is not None:
                self._offer(report.inventory, self._clock())
                if self._pending is not None:
                    self.scan_state.pushing = True
                    self._push_pending(self._clock())
            self.scan_state = ScanState(
                calculate_hashes=calculate_hashes, progress=self.scan_state.progress, report=report, error=self.scan_state.error
            )
        return report

    def _scan(self, calculate_hashes: bool) -> ScanReport | None:
        settings = self._settings()
        self.scan_state = ScanState(running=True, calculate_hashes=calculate_hashes)
        try:
            self.data_path.mkdir(parents=True, exist_ok=True)
            db = open_catalog(self.catalog_path)
            try:
                migrate(db)
                return scan(
                    self._roots(settings.extra_root_list),
                    db,
                    settings.effective_node_id,
                    calculate_hashes=calculate_hashes,
                    max_hash_size=settings.max_hash_size_mb * MB or DEFAULT_MAX_HASH_SIZE,
                    progress=self._on_progress,
                    display_name=settings.display_name or None,
                    api_url=settings.api_url or None,
                )
            finally:
                db.close()
        except Exception as exc:  # a scan must report, never kill its thread silently
            log.exception("modelsync scan failed")
            self.scan_state.error = f"{type(exc).__name__}: {exc}"
            return None

    def _on_progress(self, progress: ScanProgress) -> None:
        self.scan_state.progress = progress

    # pushing

    def _client_for(self, settings: NodeSettings) -> ServerClient:
        key = (settings.server_url.strip(), settings.effective_node_id, settings.token.strip())
        if self._client is None or self._client_key != key:
            credentials = NodeCredentials.load(self.data_path, key[1], key[2] or None)
            self._client = ServerClient(key[0], credentials, retries=0, timeout=60)
            self._client_key = key
        return self._client

    def _offer(self, inventory: Inventory | None, now: float) -> None:
        """A fresh inventory replaces any older one waiting, and is pushed at once."""
        if inventory is not None and self._settings().server_url.strip():
            self._pending = inventory
            self.schedule.push_at = now

    def _push_pending(self, now: float) -> None:
        """Push the waiting inventory; on failure plan the next try by the back-off delays."""
        assert self._pending is not None
        if self.push(self._pending):
            self._pending = None
            self.schedule.push_at = None
            self.schedule.failures = 0
            self.push_status.next_retry = None
            heartbeat = self._settings().heartbeat_seconds
            self.schedule.heartbeat_at = now + heartbeat if heartbeat > 0 else None
            return
        self.schedule.failures += 1
        delay = self._retry_delays[min(self.schedule.failures, len(self._retry_delays)) - 1]
        self.schedule.push_at = now + delay
        self.push_status.next_retry = time.time() + delay

    def push(self, inventory: Inventory) -> bool:
        """One push (no retry); True when the server took it. Then writes the previews the server offers for
        models that have none here."""
        settings = self._settings()
        if not settings.server_url.strip():
            return False
        client = self._client_for(settings)
        self.push_status.attempts += 1
        try:
            answer = client.push_inventory(inventory)
        except PushError as exc:
            self._failed(exc)
            log.warning("modelsync push to %s failed: %s", settings.server_url, exc)
            return False
        status = self.push_status
        status.reachable, status.last_push, status.answer, status.error = True, time.time(), answer, None
        status.previews_written = client.save_previews(inventory, answer)
        return True

    def heartbeat(self) -> bool:
        """Tell the central server this node is alive; True when it answered."""
        settings = self._settings()
        try:
            self._client_for(settings).heartbeat(settings.display_name or None, settings.api_url or None)
        except PushError as exc:
            self._failed(exc)
            return False
        self.push_status.reachable, self.push_status.last_heartbeat = True, time.time()
        if self._pending is None:
            self.push_status.error = None
        return True

    def _failed(self, exc: PushError) -> None:
        self.push_status.reachable = exc.status is not None  # an HTTP answer: reachable, but refused
        self.push_status.error = str(exc)

    def fleet_counts(self) -> dict[str, int] | None:
        """SHA256 -> how many fleet nodes hold it, for this node's models; None without a reachable server."""
        settings = self._settings()
        if not settings.server_url.strip():
            return None
        try:
            return self._client_for(settings).node_counts(settings.effective_node_id)
        except PushError as exc:
            log.warning("modelsync could not read the fleet counts: %s", exc)
            return None

    # the background thread: start-up sync, push retries, heartbeats, re-scans

    def start_background(self, initial_sync: bool = True) -> threading.Thread:
        """A daemon thread that scans and pushes once (when `initial_sync`), then runs `tick` until `stop()`.
        Started once; later calls return the running thread."""
        with self._state_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._background, args=(initial_sync,), name="modelsync-background", daemon=True)
                self._thread.start()
            return self._thread

    def _background(self, initial_sync: bool) -> None:
        if initial_sync:  # the start-up sync always runs: stop() waits for it
            self.scan_and_push(self._settings().hash_new_files)
        while not self._stop.is_set():
            try:
                delay = self.tick()
            except Exception:  # the thread must outlive one bad round
                log.exception("modelsync background round failed")
                delay = IDLE_SECONDS
            if self._stop.wait(delay):
                return

    def tick(self) -> float:
        """Do what is due now (service clock): a re-scan, a push retry, a heartbeat; return the seconds until the
        next thing is due. Settings are read each time, so changes apply without a restart."""
        now = self._clock()
        settings = self._settings()
        plan = self.schedule
        rescan = settings.rescan_minutes * 60
        if rescan <= 0:
            plan.scan_at = None
        elif plan.scan_at is None or plan.scan_at > now + rescan:
            plan.scan_at = now + rescan
        server = bool(settings.server_url.strip())
        if not server or settings.heartbeat_seconds <= 0 or self._pending is not None:
            plan.heartbeat_at = None  # while a push waits, its retries tell whether the server is back
        elif plan.heartbeat_at is None:
            plan.heartbeat_at = now + settings.heartbeat_seconds

        if plan.scan_at is not None and now >= plan.scan_at:
            plan.scan_at = now + rescan
            self.scan_and_push(settings.hash_new_files)
        elif self._pending is not None and plan.push_at is not None and now >= plan.push_at:
            with self._busy:
                if self._pending is not None:
                    self._push_pending(now)
        elif plan.heartbeat_at is not None and now >= plan.heartbeat_at:
            plan.heartbeat_at = now + settings.heartbeat_seconds
            with self._busy:
                self.heartbeat()
        due = [t for t in (plan.scan_at, plan.push_at if self._pending is not None else None, plan.heartbeat_at) if t is not None]
        return max(0.0, min([*due, now + IDLE_SECONDS]) - now)

    def stop(self, timeout: float | None = None) -> None:
        """End the background thread (at once if it is waiting; after the current round otherwise)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # the status line

    def status_line(self) -> str:
        settings = self._settings()
        url = settings.server_url.strip()
        if not url:
            return "No central server configured: local scan only."
        status = self.push_status
        if status.reachable is None:
            return f"Central server {url}: not contacted yet."
        parts = [f"Central server {url}: " + ("reachable" if status.reachable else "unreachable")]
        if status.error:
            parts.append(f"last error: {status.error}")
        if status.last_push is not None:
            answer = status.answer
            parts.append(
                f"last push {_clock_time(status.last_push)} answered: added {answer.get('added', 0)}, updated "
                f"{answer.get('updated', 0)}, removed {answer.get('removed', 0)}, unchanged {answer.get('unchanged', 0)}"
                + (f", {len(status.previews_written)} previews written" if status.previews_written else "")
            )
        else:
            parts.append("no push accepted yet")
        if status.last_heartbeat is not None:
            parts.append(f"last heartbeat {_clock_time(status.last_heartbeat)}")
        if self._pending is not None and status.next_retry is not None:
            failures = self.schedule.failures
            parts.append(f"push failed {failures} time{'s' if failures != 1 else ''} in a row, next try at "
                         f"{_clock_time(status.next_retry)}")
        return "; ".join(parts) + "."


def _clock_time(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
