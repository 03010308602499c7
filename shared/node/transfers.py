"""The node's transfer loop: a long-poll for orders (its own thread, with back-off while the central server is
down), at most `max_transfers` transfers at a time, each trying the order's sources in turn through the receiver,
progress reported about once a second, and the outcome reported.

A transfer goes to the first available root of its role with room for it; an unavailable root (an unmounted share)
is never used. A clean stop cancels the transfers under way without reporting them: their temp files stay, the
server still has them running, and the next start is handed them again and resumes from the temp files. Our temp
files that no order wants any more (a crash) are removed once the server has told which transfers stand.

A Civitai source uses the node's own CIVITAI_API_KEY (sent only to Civitai's hosts) or else the key the server
shares in the order; after the rename the version's JSON sidecar and preview are written beside the file. A 429 or
5xx from Civitai's API host is reported at once (`civitai_retry_after`: the wait) so the whole fleet backs off.
Terminal answers (auth, early access, not found, no hash, a refused URL) are reported failed and never tried again
here."""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..civitai.client import CivitaiClient
from ..civitai.companions import write_companions
from ..civitai.download import CivitaiSource, expected_file, size_limit
from ..push_client import PushError
from ..records import Root
from ..transfer.companions import fetch_companions
from ..transfer.destination import safe_relative_name
from ..transfer.failures import TransferFailed
from ..transfer.partfiles import part_name, remove_orphaned_parts
from ..transfer.peer_source import PeerSource
from ..transfer.receiver import Progress, Received, ReceiveOptions, receive
from ..transfer.source import Source
from ..transfer.url_source import ResumableGet, UrlSource
from ..transfer.urls import shown
from .client import (
    MAX_WAIT_SECONDS,
    AnySource,
    CivitaiOrderSource,
    NodeClient,
    OrderSource,
    TransferOrder,
)
from .config import NodeConfig
from .rounds import run_rounds

log = logging.getLogger(__name__)

ORDER_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # after the 1st, 2nd, ... failed long-poll in a row
IDLE_SECONDS = 5.0  # transfers off or no server: the settings are read again after this long
MIN_POLL_SECONDS = 1.0  # a server that answers "nothing" at once is not asked again sooner
PROGRESS_SECONDS = 1.0
SOURCE_FAILURES = frozenset({"source_gone", "changed", "not_allowed", "hash_mismatch", "too_long", "rate_limited"})
FINISHED = ("done", "failed", "cancelled")


def choose_root(roots: list[Root], role: str | None, size: int, floor: int) -> Root:
    """The first available root of the role with room for `size` bytes above the floor."""
    mine = [root for root in roots if role is not None and root.role == role]
    if not mine:
        raise TransferFailed("root_unavailable", f"this node has no folder for {role or 'files without a role'}")
    available = [root for root in mine if os.path.isdir(root.path)]
    if not available:
        raise TransferFailed("root_unavailable", "no folder for " + role + " is available now (" +
                             ", ".join(root.path for root in mine) + "): an unmounted share?")
    for root in available:
        if shutil.disk_usage(root.path).free >= size + floor:
            return root
    raise TransferFailed("disk_full", f"no folder for {role} has {size} bytes free above the floor of {floor}")


@dataclass
class Running:
    order: TransferOrder
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    progress: Progress | None = None
    source_id: str | None = None
    cancelled_by_server: bool = False


def _described(source: AnySource) -> str:
    if isinstance(source, OrderSource):
        return source.server_id
    if isinstance(source, CivitaiOrderSource):
        return f"Civitai version {source.version_id} file {source.file_id}"
    return shown(source.url)


def _expected_size(order: TransferOrder) -> int:
    """The bytes a transfer needs room for: the order's size, else the largest Civitai listing (0: unknown)."""
    if order.size is not None:
        return order.size
    listed = []
    for source in order.sources:
        if isinstance(source, CivitaiOrderSource):
            try:
                listed.append(size_limit(expected_file(source.version, source.file_id)) or 0)
            except TransferFailed:
                continue
    return max(listed, default=0)


def _key_host(url: str, hosts: tuple[str, ...]) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in hosts)


class TransferRunner:
    def __init__(self, config: Callable[[], NodeConfig], roots: Callable[[], list[Root]],
                 client: Callable[[NodeConfig, str], NodeClient], received: Callable[[Root, Received], None],
                 retry_delays: tuple[float, ...] = ORDER_RETRY_SECONDS, wait_seconds: float = MAX_WAIT_SECONDS):
        self._config = config
        self._roots = roots
        self._client = client  # (config, purpose) -> a client of its own per purpose
        self._received = received  # the file is in place: into the catalog, pushed
        self.on_recorded: Callable[[Root, Received], None] | None = None  # a face's hook once that is done
        self._retry_delays = retry_delays
        self._wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._report_lock = threading.Lock()  # one progress client, shared by the transfers
        self._stop = threading.Event()
        self._slot_free = threading.Event()
        self._thread: threading.Thread | None = None
        self.running: dict[int, Running] = {}
        self.orphans_removed: list[str] | None = None  # None until the first answer about orders
        self.failures = 0  # long-polls failed in a row
        self.last_error: str | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="modelsync-orders", daemon=True)
                self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Cancel the transfers under way (their temp files stay, for a resume) and wait for them to end."""
        self._stop.set()
        self._slot_free.set()
        with self._lock:
            running = list(self.running.values())
        for transfer in running:
            transfer.cancel.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for transfer in running:
            if transfer.thread is not None:
                transfer.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # the long-poll

    def _loop(self) -> None:
        run_rounds(self._round, self._stop, failed_delay=IDLE_SECONDS, failure="modelsync transfer orders round failed")

    def _round(self) -> float:
        config = self._config()
        if not config.receive or not config.server_url:
            return IDLE_SECONDS
        with self._lock:
            free = config.max_transfers - len(self.running)
            running_ids = list(self.running)
            self._slot_free.clear()
        if free <= 0:
            self._slot_free.wait(IDLE_SECONDS)
            return 0
        wait = 0 if self.orphans_removed is None else self._wait_seconds
        asked = time.monotonic()
        try:
            orders = self._client(config, "orders").orders(wait, running_ids)
        except PushError as exc:
            self.failures += 1
            self.last_error = str(exc)
            delay = self._retry_delays[min(self.failures, len(self._retry_delays)) - 1]
            log.log(logging.WARNING if self.failures == 1 else logging.DEBUG,
                    "modelsync cannot read its transfer orders (%s); trying again in %g s", exc, delay)
            return delay
        if self.failures:
            log.info("modelsync reads its transfer orders again")
        self.failures, self.last_error = 0, None
        if self._stop.is_set():
            return 0
        if self.orphans_removed is None:
            try:  # a transfer waiting for its source is not in the orders, and its temp file must stay
                standing = self._client(config, "orders").standing_transfers()
            except PushError as exc:
                log.info("orphaned temp files are left for now: %s", exc)
            else:
                with self._lock:
                    keep = standing | {order.sha256 for order in orders} | {t.order.sha256 for t in self.running.values()}
                self.orphans_removed = remove_orphaned_parts([root.path for root in self._roots()], keep)
                log.info("start-up: %d orphaned temp files removed, those of %d unfinished transfers kept",
                         len(self.orphans_removed), len(keep))
        started = [order for order in orders if self._start(order, config.max_transfers)]
        return 0 if started or time.monotonic() - asked >= MIN_POLL_SECONDS else MIN_POLL_SECONDS

    def _start(self, order: TransferOrder, max_transfers: int) -> bool:
        """Start the order unless the runner is stopping, has no free slot, or a transfer of the same file is still
        under way here: a cancelled one ends only at its next report, and both would write the one temp file named by
        the SHA256. The thread starts under the lock, so every transfer stop() finds has one to join."""
        with self._lock:
            if (self._stop.is_set() or len(self.running) >= max_transfers
                    or any(t.order.sha256 == order.sha256 for t in self.running.values())):
                return False
            transfer = Running(order)
            transfer.thread = threading.Thread(target=self._run, args=(transfer,),
                                               name=f"modelsync-transfer-{order.transfer_id}", daemon=True)
            self.running[order.transfer_id] = transfer
            try:
                transfer.thread.start()
            except RuntimeError:  # no thread to be had now: the order comes again at a later poll
                del self.running[order.transfer_id]
                raise
        return True

    # one transfer

    def _run(self, transfer: Running) -> None:
        try:
            self._transfer(transfer)
        except Exception:
            log.exception("modelsync transfer %d failed unexpectedly", transfer.order.transfer_id)
        finally:
            with self._lock:
                self.running.pop(transfer.order.transfer_id, None)
            self._slot_free.set()

    def _transfer(self, transfer: Running) -> None:
        order, config = transfer.order, self._config()
        try:
            root = choose_root(self._roots(), order.role, _expected_size(order), config.free_floor_bytes)
        except TransferFailed as failed:
            self._report(transfer, "failed", reason=failed.reason, error=failed.message)
            return
        options = ReceiveOptions(floor_bytes=config.free_floor_bytes, bandwidth_bps=config.bandwidth_bps or None,
                                 progress_interval_seconds=PROGRESS_SECONDS)
        for source in order.sources:
            transfer.source_id = source.server_id
            log.info("transfer %d: %s from %s into %s", order.transfer_id, order.rel_name, _described(source), root.path)
            fetcher: Source | None = None
            try:
                fetcher = self._source(transfer, source, config)
                received = receive(fetcher, root.path, order.rel_name, options=options,
                                   progress=lambda p: self._progress(transfer, p), cancel=transfer.cancel)
            except TransferFailed as failed:
                if failed.reason == "cancelled":
                    self._cancelled(transfer, root)
                    return
                log.warning("transfer %d from %s failed: %s (%s)", order.transfer_id, _described(source), failed.reason,
                            failed.message)
                answer = self._report(transfer, "failed", reason=failed.reason, error=failed.message,
                                     source_server_id=source.server_id)
                if failed.reason in SOURCE_FAILURES and (answer is None or answer.get("state") not in FINISHED):
                    continue  # the next source of this order, with its own grant
                return
            finally:
                if fetcher is not None:
                    fetcher.session.close()
            if received.renamed:
                log.warning("transfer %d: %s holds another file; the copy is %s", order.transfer_id, received.wanted_name,
                            received.rel_name)
            self._companions(source, order, config, received)
            self._received(root, received)
            if self.on_recorded is not None:
                self.on_recorded(root, received)
            self._report(transfer, "done", bytes_done=received.size, size=received.size, dest_path=received.path,
                         source_server_id=source.server_id)
            return
        if not order.sources:
            log.info("transfer %d: the order names no source now; the server hands it out again when one is back",
                     order.transfer_id)

    def _source(self, transfer: Running, source: AnySource, config: NodeConfig) -> Source:
        """The receiver's source for one of the order's; raises the refusals known before any request (no_hash,
        url_refused)."""
        order = transfer.order
        if isinstance(source, OrderSource):
            return PeerSource(source.base_url, order.sha256, order.size, config.node_id, source.grant)
        http = ResumableGet(cancel=transfer.cancel)
        if not isinstance(source, CivitaiOrderSource):
            return UrlSource(source.url, order.sha256, size=order.size, http=http)
        file = expected_file(source.version, source.file_id)
        if str(file["hashes"]["SHA256"]).lower() != order.sha256:
            raise TransferFailed("changed", f"Civitai lists SHA256 {file['hashes']['SHA256']} for the file, the order "
                                 f"expects {order.sha256}")
        own = config.civitai_api_key if _key_host(source.download_url, config.civitai_key_hosts) else None
        return CivitaiSource(source.download_url, order.sha256, api_key=own or source.api_key, size=order.size,
                             limit=size_limit(file), http=http,
                             on_backoff=lambda seconds: self._civitai_backoff(transfer, seconds))

    def _companions(self, source: AnySource, order: TransferOrder, config: NodeConfig, received: Received) -> None:
        if isinstance(source, OrderSource):
            fetch_companions(source.base_url, order.sha256, config.node_id, source.grant, received.path)
        elif isinstance(source, CivitaiOrderSource):
            client = CivitaiClient(api_key="")  # images never get a key
            try:
                write_companions(source.version, received.path, set(config.civitai_image_hosts), client)
            finally:
                client.session.close()

    def _civitai_backoff(self, transfer: Running, seconds: float) -> None:
        """Civitai answered 429 or 5xx: the central server hears it now, so every node backs off."""
        answer = self._report(transfer, "running", civitai_retry_after=round(seconds, 1))
        if answer is not None and answer.get("state") in FINISHED:
            transfer.cancelled_by_server = True
            transfer.cancel.set()

    def _cancelled(self, transfer: Running, root: Root) -> None:
        """Stopped by this node's stop (the temp file stays for a resume) or by the server's cancel (removed)."""
        if not transfer.cancelled_by_server:
            log.info("transfer %d stopped; it resumes from its temp file", transfer.order.transfer_id)
            return
        order = transfer.order
        temp = os.path.join(os.path.dirname(os.path.join(root.path, safe_relative_name(order.rel_name))),
                            part_name(order.sha256))
        try:
            os.remove(temp)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the temp file %s of cancelled transfer %d: %s", temp, order.transfer_id, exc)
        log.info("transfer %d was cancelled on the central server", order.transfer_id)

    def _progress(self, transfer: Running, progress: Progress) -> None:
        """Called by the receiver at most once per PROGRESS_SECONDS; a cancel in the answer stops the transfer."""
        transfer.progress = progress
        answer = self._report(transfer, "running", bytes_done=progress.bytes_done, size=progress.size,
                              speed_bps=round(progress.speed_bps, 1),
                              eta_seconds=None if progress.eta_seconds is None else round(progress.eta_seconds, 1),
                              source_server_id=transfer.source_id)
        if answer is not None and answer.get("state") in FINISHED:
            transfer.cancelled_by_server = True
            transfer.cancel.set()

    def _report(self, transfer: Running, state: str, **fields) -> dict | None:
        """The server's answer; None when it could not be told (it hands the transfer out again later)."""
        fields.setdefault("bytes_done", transfer.progress.bytes_done if transfer.progress else 0)
        try:
            with self._report_lock:
                return self._client(self._config(), "progress").report(transfer.order.transfer_id, state, **fields)
        except PushError as exc:
            log.log(logging.WARNING if state in FINISHED else logging.DEBUG,
                    "modelsync could not report transfer %d as %s: %s", transfer.order.transfer_id, state, exc)
            return None
