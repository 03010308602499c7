"""The Civitai enrichment worker: one background thread for the whole fleet, never in a request's path.

It looks up due models by full SHA256 (the bulk endpoint when several are due), fills only null fields,
marks 404s "none" until the re-check age, and fetches each model's first still image once as its preview.
All requests share one rate (CIVITAI_REQUESTS_PER_MINUTE), `CivitaiRate`: the update checks
(server/civitai_updates.py) take their turns from the same one. A 429 or a server error pauses every request
(Retry-After when given, else exponential back-off); a timeout only delays that model, never marks it unknown.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from modelsync.shared.civitai.client import CivitaiClient, ImageRejected

from . import civitai_state as state
from .config import ServerConfig
from .previews import PreviewError, PreviewStore
from .registry import Registry, parse_iso, utc_now

log = logging.getLogger(__name__)

BULK_LIMIT = 100  # hashes per POST /api/v1/model-versions/by-hash


class CivitaiRate:
    """The fleet's one Civitai rate, shared by every thread that asks Civitai: requests spaced evenly, and a pause for
    everyone after a 429 or a server error."""

    def __init__(self, requests_per_minute: float, max_backoff_seconds: float):
        self.interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self.max_backoff_seconds = max_backoff_seconds
        self._lock = threading.Lock()
        self._next_turn = 0.0  # monotonic: the earliest moment the next request may go
        self._paused_until = 0.0  # monotonic; fleet-wide back-off after 429 / 5xx
        self._failures = 0  # consecutive fleet-level failures, for the exponential back-off

    def take_turn(self, stop: threading.Event) -> bool:
        """Wait for this caller's turn (reserved at once, so two threads never take the same one); False when `stop`
        is set while waiting."""
        while True:
            with self._lock:
                now = time.monotonic()
                start = max(self._next_turn, self._paused_until, now)
                if start <= now:
                    self._next_turn = now + self.interval
                    return True
            if stop.wait(start - now):
                return False

    def back_off(self, retry_after: float | None) -> float:
        """Pause every request; returns the pause in seconds."""
        with self._lock:
            self._failures += 1
            delay = retry_after if retry_after is not None else 2.0 ** (self._failures - 1)
            delay = min(max(delay, 0.0), self.max_backoff_seconds)
            self._paused_until = max(self._paused_until, time.monotonic() + delay)
        log.warning("Civitai: pausing all requests for %.1f s", delay)
        return delay

    def pause_for(self, seconds: float) -> None:
        """Pause every request `seconds` (capped); a longer pause already running stays."""
        with self._lock:
            delay = min(max(seconds, 0.0), self.max_backoff_seconds)
            self._paused_until = max(self._paused_until, time.monotonic() + delay)

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def paused_seconds(self) -> float:
        return max(0.0, self._paused_until - time.monotonic())


class CivitaiWorker:
    def __init__(self, registry: Registry, config: ServerConfig, previews: PreviewStore, client: CivitaiClient | None = None):
        self.registry = registry
        self.config = config
        self.previews = previews
        self.client = client or CivitaiClient(
            base_url=config.civitai_api_base, api_key=config.civitai_api_key, timeout=config.civitai_timeout_seconds
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.rate = CivitaiRate(config.civitai_requests_per_minute, config.civitai_max_backoff_seconds)
        self.counts = {"found": 0, "not_found": 0, "errors": 0, "previews": 0}

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="civitai-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("Civitai worker still waiting on a request; leaving it (no transaction is open)")

    def wake(self) -> None:
        self._wake.set()

    # --- the fleet's one Civitai rate, shared with on-demand calls (transfer orders, fulfil) -----------------
    def paused_seconds(self) -> float:
        """How long the fleet's Civitai back-off lasts still (0: not backing off)."""
        return self.rate.paused_seconds()

    def back_off_for(self, seconds: float) -> None:
        """Someone else got a 429 from Civitai (a node's `civitai_retry_after`, an on-demand call): pause every
        request that long (capped by CIVITAI_MAX_BACKOFF); a longer pause already running stays."""
        self.rate.pause_for(seconds)

    def take_turn(self) -> bool:
        """Wait for an on-demand request's turn in the fleet's rate; False at once while backing off, or stopping."""
        return self.paused_seconds() == 0 and self._throttle()

    def status(self) -> dict[str, Any]:
        paused = self.paused_seconds()
        return {"running": self._thread is not None and self._thread.is_alive(), "paused_seconds": round(paused, 1), **self.counts}

    def _run(self) -> None:
        log.info("Civitai worker started (%s, %.0f requests/minute)", self.config.civitai_api_base, self.config.civitai_requests_per_minute)
        while not self._stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a bug or a broken database must not end enrichment for good
                log.exception("Civitai worker step failed")
                worked = False
            if not worked:
                self._idle()

    def _idle(self) -> None:
        timeout = self.config.worker_idle_seconds
        due = parse_iso(state.next_due_at(self.registry.db()))
        if due is not None:
            timeout = max(0.05, min(timeout, (due - utc_now()).total_seconds()))
        self._wake.wait(timeout)
        self._wake.clear()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; returns False when the worker is stopping."""
        return not self._stop.wait(seconds) if seconds > 0 else not self._stop.is_set()

    # --- one round ---------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Do one batch of due work; returns False when there was nothing to do."""
        db = self.registry.db()
        if not self._sleep(self.rate.paused_seconds()):
            return True
        due = state.due_lookups(db, self.config.civitai_batch_size)
        if due:
            self._look_up(due)
            return True
        previews = state.due_previews(db, self.config.civitai_batch_size)
        if previews:
            for sha256, url in previews:
                if self._stop.is_set() or not self._fetch_preview(sha256, url):
                    break
            return True
        return False

    def _throttle(self) -> bool:
        return self.rate.take_turn(self._stop)

    def _back_off(self, retry_after: float | None) -> float:
        return self.rate.back_off(retry_after)

    def _model_retry_delay(self, sha256: str) -> float:
        tries = state.attempts(self.registry.db(), sha256) + 1
        return min(2.0 ** (tries - 1), self.config.civitai_max_backoff_seconds)

    def _look_up(self, hashes: list[str]) -> None:
        if len(hashes) > 1:
            for start in range(0, len(hashes), BULK_LIMIT):
                if not self._look_up_bulk(hashes[start : start + BULK_LIMIT]):
                    return
            return
        self._look_up_one(hashes[0])

    def _look_up_one(self, sha256: str) -> bool:
        if not self._throttle():
            return False
        result = self.client.by_hash(sha256)
        db = self.registry.db()
        if result.status == "found":
            self.rate.succeeded()
            state.record_found(db, sha256, result.data, self._origin())
            self.counts["found"] += 1
            log.info("Civitai: %s found (version %s)", sha256[:10], (result.data or {}).get("id"))
        elif result.status == "not_found":
            self.rate.succeeded()
            state.record_not_found(db, sha256, self.config.civitai_recheck_days)
            self.counts["not_found"] += 1
            log.info("Civitai: %s not known", sha256[:10])
        else:
            self._failed([sha256], result.status, result.error, result.retry_after)
            return False
        return True

    def _look_up_bulk(self, hashes: list[str]) -> bool:
        if not self._throttle():
            return False
        result = self.client.by_hashes(hashes)
        if result.status != "ok":
            self._failed(hashes, result.status, result.error, result.retry_after)
            return False
        self.rate.succeeded()
        db = self.registry.db()
        for sha256 in hashes:
            version = result.found.get(sha256)
            if version is not None:
                state.record_found(db, sha256, version, self._origin())
                self.counts["found"] += 1
            else:
                state.record_not_found(db, sha256, self.config.civitai_recheck_days)
                self.counts["not_found"] += 1
        log.info("Civitai: bulk lookup of %d hashes, %d found", len(hashes), len(result.found))
        return True

    def _failed(self, hashes: list[str], status: str, error: str | None, retry_after: float | None) -> None:
        """429 and server errors pause the fleet; every model asked stays unknown-free and is due again later."""
        pause = self._back_off(retry_after)
        db = self.registry.db()
        for sha256 in hashes:
            state.record_error(db, sha256, f"{status}: {error or ''}".strip(": "), max(pause, self._model_retry_delay(sha256)))
        self.counts["errors"] += 1
        log.warning("Civitai lookup failed (%s) for %d models: %s", status, len(hashes), error)

    def _origin(self) -> str:
        return f"{self.config.civitai_api_base}/api/v1/model-versions/by-hash"

    # --- previews --------------------------------------------------------------------------------------------
    def _fetch_preview(self, sha256: str, url: str) -> bool:
        """Download, convert and store one preview (one attempt; refresh-metadata allows another).
        Returns False when the worker is stopping."""
        if not self._throttle():
            return False
        db = self.registry.db()
        try:
            data, content_type = self.client.download_image(url, set(self.config.civitai_image_hosts), self.config.preview_max_bytes)
            stored = self.previews.store(db, sha256, data, lambda preview: state.record_preview_if_due(
                db, sha256, url, "stored", content_type=content_type, width=preview.width, height=preview.height,
                bytes=preview.bytes))
        except ImageRejected as exc:
            if exc.transient:  # not recorded: due again once the fleet-wide pause is over
                pause = self._back_off(exc.retry_after)
                log.warning("Civitai: preview for %s failed (%s); trying again in %.0f s", sha256[:10], exc, pause)
                return True
            state.record_preview_if_due(db, sha256, url, "failed", error=str(exc)[:1000])
            log.info("Civitai: no preview for %s: %s", sha256[:10], exc)
            return True
        except PreviewError as exc:
            state.record_preview_if_due(db, sha256, url, "failed", error=str(exc)[:1000])
            log.info("Civitai: no preview for %s: %s", sha256[:10], exc)
            return True
        if stored is None:
            log.info("Civitai: preview for %s no longer wanted (a node's came, or the match was rejected)", sha256[:10])
        else:
            self.counts["previews"] += 1
        return True
