"""The node's scan/push engine: scans in a background thread with progress, pushes to the central server."""
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

RETRY_DELAYS_SECONDS = (5.0, 15.0, 60.0, 300.0)


@dataclass
class ScanState:
    running: bool = False
    calculate_hashes: bool = False
    progress: ScanProgress | None = None
    report: ScanReport | None = None
    error: str | None = None


@dataclass
class PushStatus:
    reachable: bool | None = None  # None: never tried / no server configured
    last_push: float | None = None
    answer: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0


class NodeService:
    def __init__(
        self,
        data_path: Path,
        settings: Callable[[], NodeSettings],
        roots: Callable[[list[str]], list[Root]],
        retry_delays: tuple[float, ...] = RETRY_DELAYS_SECONDS,
    ):
        self.data_path = Path(data_path)
        self.catalog_path = self.data_path / "catalog.db"
        self._settings = settings
        self._roots = roots
        self._retry_delays = retry_delays
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._client: ServerClient | None = None
        self._client_key: tuple[str, str, str] | None = None
        self.scan_state = ScanState()
        self.push_status = PushStatus()

    def settings(self) -> NodeSettings:
        return self._settings()

    # scanning

    def start_scan(self, calculate_hashes: bool) -> bool:
        """Start a scan in the background; False when one is already running."""
        if self.scan_state.running:
            return False
        self.scan_state = ScanState(running=True, calculate_hashes=calculate_hashes)
        threading.Thread(target=self._scan_and_push, args=(calculate_hashes,), name="modelsync-scan", daemon=True).start()
        return True

    def _scan_and_push(self, calculate_hashes: bool) -> None:
        try:
            report = self.run_scan(calculate_hashes)
        except Exception as exc:  # a scan thread must report, never die silently
            log.exception("modelsync scan failed")
            self.scan_state = ScanState(error=f"{type(exc).__name__}: {exc}")
            return
        if report.inventory is not None and self._settings().server_url.strip():
            self.push(report.inventory)

    def run_scan(self, calculate_hashes: bool) -> ScanReport:
        """Scan the host's roots now, in this thread; the state shows progress and, at the end, the report."""
        settings = self._settings()
        with self._scan_lock:
            self.scan_state = ScanState(running=True, calculate_hashes=calculate_hashes)
            self.data_path.mkdir(parents=True, exist_ok=True)
            db = open_catalog(self.catalog_path)
            try:
                migrate(db)
                report = scan(
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
            self.scan_state = ScanState(calculate_hashes=calculate_hashes, progress=self.scan_state.progress, report=report)
            return report

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

    def push(self, inventory: Inventory) -> bool:
        """One push (no retry); True when the server took it. Writes the previews the server offers."""
        settings = self._settings()
        if not settings.server_url.strip():
            return False
        client = self._client_for(settings)
        self.push_status.attempts += 1
        try:
            answer = client.push_inventory(inventory)
        except (PushError, OSError) as exc:
            self.push_status.reachable = not _is_connection_error(exc)
            self.push_status.error = str(exc)
            log.warning("modelsync push to %s failed: %s", settings.server_url, exc)
            return False
        self.push_status = PushStatus(reachable=True, last_push=time.time(), answer=answer, attempts=self.push_status.attempts)
        client.save_previews(inventory, answer)
        return True

    def start_startup_sync(self, initial_sync: bool = True) -> threading.Thread:
        """In a daemon thread: scan (hashing new files if set) and push with back-off, then re-scan and push
        every `rescan_minutes` while that setting is above 0."""
        thread = threading.Thread(target=self._background_sync, args=(initial_sync,), name="modelsync-startup", daemon=True)
        thread.start()
        return thread

    def _background_sync(self, initial_sync: bool) -> None:
        if initial_sync:
            self._sync_with_retries()
        while (minutes := self._settings().rescan_minutes) > 0 and not self._stop.wait(minutes * 60):
            self._sync_with_retries()

    def _sync_with_retries(self) -> None:
        settings = self._settings()
        try:
            report = self.run_scan(settings.hash_new_files)
        except Exception as exc:  # a background scan must report, never die silently
            log.exception("modelsync background scan failed")
            self.scan_state = ScanState(error=f"{type(exc).__name__}: {exc}")
            return
        if report.inventory is None or not settings.server_url.strip():
            return
        for delay in (*self._retry_delays, None):
            if self.push(report.inventory) or delay is None or self._stop.wait(delay):
                return

    def stop(self) -> None:
        self._stop.set()

    def status_line(self) -> str:
        settings = self._settings()
        if not settings.server_url.strip():
            return "No central server configured: local scan only."
        status = self.push_status
        if status.reachable is None:
            return f"Central server {settings.server_url}: not contacted yet."
        if status.error:
            state = "refused the push" if status.reachable else "unreachable"
            return f"Central server {settings.server_url}: {state} ({status.error}); attempts: {status.attempts}."
        answer = status.answer
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.last_push))
        return (
            f"Central server {settings.server_url}: reachable. Last push {when}: added {answer.get('added', 0)}, "
            f"updated {answer.get('updated', 0)}, removed {answer.get('removed', 0)}, unchanged {answer.get('unchanged', 0)}."
        )


def _is_connection_error(exc: Exception) -> bool:
    return isinstance(exc, OSError) or (isinstance(exc, PushError) and exc.status is None)
