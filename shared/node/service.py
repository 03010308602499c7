"""The node engine, shared by the Forge/A1111 extension and `modelsync node` (no Forge or gradio in it): scans with
progress, pushes to the central server with back-off, heartbeats, re-scans on a timer and soon after a change in the
model folders, runs the transfers the server orders, reads the fleet counts, and keeps the status a face shows.

Every heartbeat carries the node's state (shared/node/state.py): what the host is doing, the free disk of each model
root, the GPU's memory. A thread of its own looks at the host's activity every few seconds, and at once when the
face says it changed (`state_changed`: a model loaded); a change is sent in a heartbeat of its own, at most one such
heartbeat per EXTRA_HEARTBEAT_SECONDS however often the state flips (the last state is sent when that time is up).
The first one follows the start-up push, so the central server knows the state from the start.

A scan and a push hold different locks: the tab's scan reports as soon as the files are read, its push goes on
in the background (a central server that takes the connection and never answers holds only the push), and a
newer scan meanwhile replaces the inventory that waits to be pushed. A re-scan of the timer or the watcher whose
inventory is the one the server took last pushes nothing."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalog import migrate, open_catalog
from ..inventory import Inventory
from ..push_client import NodeCredentials, PushError, send_previews
from ..records import Root
from ..scan.scanner import ScanProgress, ScanReport, scan
from ..transfer.receiver import Received
from .client import NodeClient
from .config import NodeConfig
from .received import record_received
from .state import HostActivity, StateReport, disk_spaces, gpu_memory
from .transfers import TransferRunner
from .watcher import FolderWatcher

log = logging.getLogger("modelsync.node")

RETRY_DELAYS_SECONDS = (5.0, 15.0, 60.0, 300.0)  # after the 1st, 2nd, 3rd, further failed pushes
IDLE_SECONDS = 60.0  # with nothing due, the background thread reads the settings again after this long
STATE_POLL_SECONDS = 2.0  # the host's activity is looked at this often (and at once when the face says it changed)
EXTRA_HEARTBEAT_SECONDS = 5.0  # at most one heartbeat for a changed state per this long


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Connecting never takes longer than `connect`; `push` is the wait for the answer to a sync (the
    server reads, merges and commits the whole inventory first), `counts` for one page of the fleet counts."""

    connect: float = 3.0
    push: float = 120.0
    counts: float = 10.0


@dataclass
class ScanState:
    running: bool = False  # reading the files; the push that follows is in PushStatus.pushing
    calculate_hashes: bool = False
    progress: ScanProgress | None = None
    report: ScanReport | None = None
    error: str | None = None


# PushStatus.contact: how the last request to the central server went
NOT_CONTACTED, ANSWERED, NO_ANSWER, REFUSED = "not contacted", "answered", "no answer", "refused"


@dataclass
class PushStatus:
    contact: str = NOT_CONTACTED  # NO_ANSWER: nothing answered; REFUSED: an HTTP answer that is an error
    pushing: bool = False  # a push is under way now
    last_push: float | None = None  # wall-clock time of the last push the server took
    answer: dict[str, Any] = field(default_factory=dict)  # the server's answer to it
    previews_written: list[str] = field(default_factory=list)
    previews_sent: list[str] = field(default_factory=list)  # local previews the central server took
    last_heartbeat: float | None = None
    error: str | None = None  # the last failure, in words (push, heartbeat or fleet counts); a success clears it
    attempts: int = 0  # pushes tried
    next_retry: float | None = None  # wall-clock time of the next try of a failed push

    @property
    def reachable(self) -> bool | None:
        """None: not contacted yet; True only when the server's last answer was a modelsync answer."""
        return None if self.contact == NOT_CONTACTED else self.contact == ANSWERED


@dataclass
class Schedule:
    """When the background thread next re-scans, retries the push and heartbeats (service clock; None: not planned)."""

    scan_at: float | None = None
    push_at: float | None = None
    heartbeat_at: float | None = None
    failures: int = 0


def inventory_digest(inventory: Inventory) -> str:
    return hashlib.sha256(inventory.to_json()).hexdigest()


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
        self._retry_delays = retry_delays
        self._clock = clock
        self.timeouts = timeouts
        self._scan_lock = threading.Lock()  # one scan at a time
        self._push_lock = threading.Lock()  # one push or heartbeat at a time
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # the background thread looks at what is due now
        self._changed = threading.Event()  # the watcher saw a change: re-scan
        self._watcher: FolderWatcher | None = None
        self._watched: tuple[str, ...] = ()
        self._clients_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._tab_scan: threading.Thread | None = None  # the tab's scan, then its push
        self._tab_scanned = threading.Event()  # set once the tab's scan has read the files
        self._tab_scanned.set()
        self._counts_thread: threading.Thread | None = None
        self._clients: dict[str, tuple[tuple[str, str, str], NodeClient]] = {}
        self._pending: Inventory | None = None  # the inventory still to be pushed
        self._taken_digest: str | None = None  # of the last inventory the server took
        self.schedule = Schedule()
        self.scan_state = ScanState()
        self.push_status = PushStatus()
        self.pushes_taken = 0  # pushes the server took so far
        self.fleet: dict[str, int] | None = None  # the last fleet counts read (None: none, or no server)
        self.fleet_read_at = -1  # pushes_taken when that read started
        self.transfers = TransferRunner(config, roots, self._client_for, self._add_received)
        self._activity = activity  # what the host is doing (`modelsync node`: nothing known)
        self._state_wake = threading.Event()
        self._state_thread: threading.Thread | None = None
        self._sent_activity: HostActivity | None = None  # as the last heartbeat the server took reported it
        self._last_extra: float | None = None  # service clock of the last heartbeat sent for a changed state
        self.state_heartbeats = 0  # heartbeats sent for a changed state

    def config(self) -> NodeConfig:
        return self._config()

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
                    self._offer(report.inventory, self._clock(), push_unchanged)
                self.scan_state = ScanState(calculate_hashes=calculate_hashes, progress=self.scan_state.progress,
                                            report=report, error=self.scan_state.error)
        finally:
            if scanned is not None:
                scanned()
        if report is not None:
            self.push_pending()
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

    # pushing

    def _client_for(self, config: NodeConfig, purpose: str = "push") -> NodeClient:
        """One client per purpose (the fleet counts are read beside a push, the orders beside both: each on a
        session of its own)."""
        key = (config.server_url, config.node_id, (config.token or "").strip())
        with self._clients_lock:
            known = self._clients.get(purpose)
            if known is None or known[0] != key:
                credentials = NodeCredentials.load(self.data_path, key[1], key[2] or None)
                client = NodeClient(key[0], credentials, timeout=self.timeouts.push, connect_timeout=self.timeouts.connect,
                                    retries=0)  # the service's own back-off retries
                known = self._clients[purpose] = (key, client)
        known[1].files_url = config.files_url
        return known[1]

    def _offer(self, inventory: Inventory | None, now: float, push_unchanged: bool = True) -> None:
        """A fresh inventory replaces any older one waiting, and is pushed at once (unless it is the one the server
        took last and nothing waits: then nothing is pushed, when `push_unchanged` is False)."""
        if inventory is None or not self._config().server_url:
            return
        with self._state_lock:
            if not push_unchanged and self._pending is None and inventory_digest(inventory) == self._taken_digest:
                log.info("modelsync re-scan: nothing changed since the last push, nothing to push")
                return
            self._pending = inventory
            self.schedule.push_at = now

    @property
    def push_waiting(self) -> bool:
        """Whether an inventory waits to be pushed (a push failed and is tried again, or one is under way)."""
        return self._pending is not None

    def push_pending(self) -> bool | None:
        """Push the waiting inventory now, after any push under way; None when nothing waits (any more)."""
        with self._push_lock:
            if self._pending is None:
                return None
            return self._push_pending(self._clock())

    def _push_pending(self, now: float) -> bool:
        """Push the waiting inventory (the push lock held); on failure plan the next try by the back-off delays."""
        inventory = self._pending
        assert inventory is not None
        if self.push(inventory):
            with self._state_lock:
                if self._pending is inventory:  # else a newer scan's inventory waits: its own push follows
                    self._pending = None
                    self.schedule.push_at = None
            self.schedule.failures = 0
            self.push_status.next_retry = None
            heartbeat = self._config().heartbeat_seconds
            self.schedule.heartbeat_at = now + heartbeat if heartbeat > 0 else None
            return True
        self.schedule.failures += 1
        delay = self._retry_delays[min(self.schedule.failures, len(self._retry_delays)) - 1]
        self.schedule.push_at = now + delay
        self.push_status.next_retry = time.time() + delay
        return False

    def push(self, inventory: Inventory) -> bool:
        """One push (no retry); True when the server took it. Then writes the previews the server offers for
        models that have none here, and sends the local previews the server asks for."""
        config = self._config()
        if not config.server_url:
            return False
        client = self._client_for(config)
        status = self.push_status
        status.attempts += 1
        status.pushing = True
        try:
            answer = client.push_inventory(inventory)
            status.contact, status.last_push, status.answer, status.error = ANSWERED, time.time(), answer, None
            status.previews_written = client.save_previews(inventory, answer)
            status.previews_sent = send_previews(client, inventory, answer)
            self._taken_digest = inventory_digest(inventory)
            self.pushes_taken += 1
            return True
        except PushError as exc:
            self._failed(exc)
            log.warning("modelsync push to %s failed: %s", config.server_url, exc)
            return False
        finally:
            status.pushing = False

    def heartbeat(self) -> bool:
        """Tell the central server this node is alive; True when it answered."""
        config = self._config()
        report = self.current_state()
        try:
            self._client_for(config).heartbeat(config.display_name, config.api_url, report.to_dict())
        except PushError as exc:
            self._failed(exc)
            return False
        self._sent_activity = report.activity
        self.push_status.last_heartbeat = time.time()
        self._answered()
        return True

    # the node's state

    def current_state(self) -> StateReport:
        """What the node is doing now; a part that cannot be read is reported as not known."""
        return StateReport(self._host_activity(), disk_spaces(self._roots()), gpu_memory(), self._config().free_floor_bytes)

    def _host_activity(self) -> HostActivity:
        try:
            return self._activity()
        except Exception:  # a host that changed under us must not stop the heartbeats
            log.warning("modelsync: reading the host's state failed", exc_info=True)
            return HostActivity()

    def state_changed(self) -> None:
        """The face saw the host's state change (a model loaded): look at it now. Returns at once."""
        self._state_wake.set()

    def _state_loop(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self._report_changed_state()
            except Exception:  # the thread must outlive one bad round
                log.exception("modelsync state report failed")
                delay = STATE_POLL_SECONDS
            self._state_wake.wait(delay)
            self._state_wake.clear()

    def _report_changed_state(self) -> float:
        """Send a heartbeat when the host's activity differs from the last one the server took, unless one was sent
        for a change less than EXTRA_HEARTBEAT_SECONDS ago; the seconds until the next look."""
        config = self._config()
        if not config.server_url or config.heartbeat_seconds <= 0 or self._pending is not None:
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

    def _answered(self) -> None:
        """The server answered a heartbeat or the fleet counts: reachable; a failed push still waiting keeps its error."""
        self.push_status.contact = ANSWERED
        if self._pending is None:
            self.push_status.error = None

    def _failed(self, exc: PushError) -> None:
        self.push_status.contact = REFUSED if exc.status is not None else NO_ANSWER
        self.push_status.error = str(exc)

    def fleet_counts(self) -> dict[str, int] | None:
        """SHA256 -> how many fleet nodes hold it, for this node's models; None without a reachable server."""
        config = self._config()
        if not config.server_url:
            return None
        try:
            counts = self._client_for(config, "counts").node_counts(config.node_id, timeout=self.timeouts.counts)
        except PushError as exc:
            self._failed(exc)
            log.warning("modelsync could not read the fleet counts: %s", exc)
            return None
        self._answered()
        return counts

    def read_fleet_counts(self) -> None:
        """Read the fleet counts into `fleet` in a thread of its own, unless a read is under way."""
        with self._state_lock:
            if self.reading_fleet_counts():
                return
            self._counts_thread = threading.Thread(target=self._read_fleet_counts, name="modelsync-fleet-counts", daemon=True)
            self._counts_thread.start()

    def _read_fleet_counts(self) -> None:
        started_after = self.pushes_taken
        try:
            self.fleet = self.fleet_counts()
        finally:  # even a failed read counts as read: follow_background does not ask again for it
            self.fleet_read_at = started_after

    def reading_fleet_counts(self) -> bool:
        return self._counts_thread is not None and self._counts_thread.is_alive()

    def fleet_counts_stale(self) -> bool:
        """Whether the server took a push since the last read of the fleet counts started (or none was ever read)."""
        return self.fleet_read_at < self.pushes_taken

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
            self._state_thread = threading.Thread(target=self._state_loop, name="modelsync-state", daemon=True)
            self._state_thread.start()
        while not self._stop.is_set():
            try:
                self._follow_watch_settings()
                delay = self.tick()
            except Exception:  # the thread must outlive one bad round
                log.exception("modelsync background round failed")
                delay = IDLE_SECONDS
            self._wake.wait(delay)
            self._wake.clear()
        self._stop_watching()

    # watching the model folders

    def _follow_watch_settings(self) -> None:
        """Watch the roots' folders while watching is on; a changed set of folders gets a new watcher."""
        folders = tuple(sorted({root.path for root in self._roots()})) if self._config().watch else ()
        if folders == self._watched:
            return
        self._stop_watching()
        self._watched = folders
        if folders:
            self._watcher = FolderWatcher(folders, self.request_rescan)
            self._watcher.start()

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._watched = ()

    def request_rescan(self, paths: Iterable[str] = ()) -> None:
        """A re-scan soon (the background thread's next round): the watcher saw changes, or a file served changed."""
        log.debug("modelsync: re-scanning (%s)", ", ".join(sorted(paths)[:3]) or "asked")
        self._changed.set()
        self._wake.set()

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
        if not server or config.heartbeat_seconds <= 0 or self._pending is not None:
            plan.heartbeat_at = None  # while a push waits, its retries tell whether the server is back
        elif plan.heartbeat_at is None:
            plan.heartbeat_at = now + config.heartbeat_seconds

        if self._changed.is_set() or (plan.scan_at is not None and now >= plan.scan_at):
            self._changed.clear()
            plan.scan_at = now + rescan if rescan > 0 else None
            self.scan_and_push(config.hash_new_files, push_unchanged=False)
        elif self._pending is not None and plan.push_at is not None and now >= plan.push_at:
            with self._push_lock:
                if self._pending is not None:
                    self._push_pending(now)
        elif plan.heartbeat_at is not None and now >= plan.heartbeat_at:
            plan.heartbeat_at = now + config.heartbeat_seconds
            with self._push_lock:
                self.heartbeat()
        due = [t for t in (plan.scan_at, plan.push_at if self._pending is not None else None, plan.heartbeat_at) if t is not None]
        return max(0.0, min([*due, now + IDLE_SECONDS]) - now)

    def stop(self, timeout: float | None = None) -> None:
        """End the background thread (at once if it is waiting; after the current round otherwise) and the
        transfers under way (left resumable)."""
        self._stop.set()
        self._wake.set()
        self._state_wake.set()
        self.transfers.stop(timeout)
        for thread in (self._thread, self._state_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    # the status line

    def status_line(self, now: float | None = None) -> str:
        """What the tab says about the central server, in sentences: the state of the last contact, what went
        wrong and what to do, the waiting push and when it is tried again (never a time already past)."""
        now = time.time() if now is None else now
        config = self._config()
        if not config.server_url:
            return _sentences(f"No usable central server: {config.server_note}") if config.server_note else \
                "No central server configured: local scan only."
        status = self.push_status
        head = {NOT_CONTACTED: "not contacted yet", ANSWERED: "reachable", NO_ANSWER: "unreachable",
                REFUSED: "answered with an error"}[status.contact]
        sentences = [f"Central server {config.server_url}: {head}", config.server_note, status.error]
        if status.pushing:
            sentences.append("Pushing the inventory now")
        elif self._pending is not None and status.next_retry is not None:
            failures = self.schedule.failures
            wait = status.next_retry - now
            when = f"next try in {wait:.0f} s (at {_clock_time(status.next_retry)})" if wait >= 1 else "next try now"
            sentences.append(f"The push failed {failures} time{'s' if failures != 1 else ''} in a row; the inventory "
                             f"is kept, {when}")
        if status.last_push is not None:
            answer = status.answer
            sentences.append(
                f"Last push accepted {_clock_time(status.last_push)}: added {answer.get('added', 0)}, updated "
                f"{answer.get('updated', 0)}, removed {answer.get('removed', 0)}, unchanged {answer.get('unchanged', 0)}"
                + (f", {len(status.previews_written)} previews written" if status.previews_written else "")
            )
        elif status.contact != NOT_CONTACTED:
            sentences.append("No push accepted yet")
        if status.last_heartbeat is not None:
            sentences.append(f"Last heartbeat {_clock_time(status.last_heartbeat)}")
        return _sentences(*sentences)


def _sentences(*parts: str | None) -> str:
    """Each part as a sentence: capitalised (unless it starts with a URL), ended by a full stop unless it ends
    with one already."""
    out = []
    for part in parts:
        if part:
            if "://" not in part.split(" ", 1)[0]:
                part = part[0].upper() + part[1:]
            out.append(part if part[-1] in ".?!" else part + ".")
    return " ".join(out)


def _clock_time(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
