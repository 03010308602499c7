"""Demand recording: each pre-submission availability check (with `record` not false) counts once per model it names,
met or unmet, in hourly UTC buckets (table `demand_hourly`, shared/catalog.py `_v13_demand`).

A check only adds to a dict in memory (under a lock, no I/O: the job check's speed does not change); a thread writes
the counts in one transaction every `demand_flush_seconds` (10 s) and at stop, and prunes buckets older than 90 days
once an hour. What a crash can lose: the counts of the last flush interval (at most ~10 s of checks; the killed
process's memory). A write that fails (a locked or full disk) keeps the counts in memory for the next try.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from modelsync.shared.catalog import TIME_FORMAT, write_transaction
from modelsync.shared.insight.forecast import hour_key
from modelsync.shared.jobs.resolver import Resolution, wanted_key

from ..registry import utc_now

if TYPE_CHECKING:
    from ..context import ServerContext
    from ..registry import Registry

log = logging.getLogger(__name__)

KEEP_DAYS = 90
PRUNE_EVERY_SECONDS = 3600.0
MAX_LABEL = 300  # a reference as a job wrote it, cut (the registry's model name is shown when it knows the model)


@dataclass
class Count:
    model_id: int | None
    label: str
    requests: int = 0
    unmet: int = 0


def named_models(resolutions: list[Resolution], online: set[str]) -> dict[tuple[str, str], tuple[int | None, str, bool]]:
    """(kind, model_key) -> (model_id, label, unmet) for each model a check names, once each; unmet when no online
    node holds it (or the reference resolves to no single model)."""
    named: dict[tuple[str, str], tuple[int | None, str, bool]] = {}
    for res in resolutions:
        key = wanted_key(res)
        model_id = res.model.id if res.status == "resolved" and res.model is not None else None  # what the key names
        met = res.status in ("resolved", "name_conflict") and any(s in online for s in res.holders())
        seen = named.get((res.reference.kind, key))
        named[(res.reference.kind, key)] = (model_id, res.requirement.written[:MAX_LABEL],
                                            (seen[2] if seen else True) and not met)
    return named


class DemandRecorder:
    def __init__(self, registry: "Registry", flush_seconds: float = 10.0,
                 clock: Callable[[], datetime] = utc_now):
        self.registry = registry
        self.flush_seconds = max(flush_seconds, 0.1)
        self.clock = clock
        self._pending: dict[tuple[str, str, str], Count] = {}  # (hour, kind, model_key) -> counts not written yet
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time (the timer, a reader's flush, stop)
        self._stop = threading.Event()
        self._pruned_at = 0.0
        self._thread = threading.Thread(target=self._run, name="modelsync-demand", daemon=True)

    def start(self) -> "DemandRecorder":
        self._thread.start()
        return self

    def record(self, resolutions: list[Resolution], answer: dict[str, Any]) -> None:
        """Count a pre-submission check: `answer` is its `model_availability` (which nodes are online)."""
        online = {s["server_id"] for s in answer.get("servers", ()) if s.get("online")}
        hour = hour_key(self.clock())
        with self._lock:
            for (kind, key), (model_id, label, unmet) in named_models(resolutions, online).items():
                count = self._pending.get((hour, kind, key))
                if count is None:
                    count = self._pending[(hour, kind, key)] = Count(model_id, label)
                count.requests += 1
                count.unmet += unmet
                count.label = label

    def flush(self) -> int:
        """Write the counts taken so far (one transaction); returns how many buckets were written."""
        with self._flush_lock:
            with self._lock:
                taken, self._pending = self._pending, {}
            if not taken:
                self._prune_if_due()
                return 0
            try:
                self._write(taken)
            except sqlite3.Error as exc:
                log.warning("demand counts not written, kept for the next try: %s", exc)
                with self._lock:
                    for bucket, count in taken.items():
                        kept = self._pending.setdefault(bucket, Count(count.model_id, count.label))
                        kept.requests += count.requests
                        kept.unmet += count.unmet
                return 0
            self._prune_if_due()
            return len(taken)

    def _write(self, taken: dict[tuple[str, str, str], Count]) -> None:
        db = self.registry.db()
        with write_transaction(db):
            db.conn.execute("INSERT INTO demand_recording (id, started_at) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                            [self.clock().strftime(TIME_FORMAT)])  # after a registry reset: counting begins again
            db.conn.executemany(
                """INSERT INTO demand_hourly (hour, kind, model_key, model_id, label, requests, unmet)
                   VALUES (?, ?, ?, (SELECT id FROM models WHERE id = ?), ?, ?, ?)
                   ON CONFLICT (hour, kind, model_key) DO UPDATE SET requests = demand_hourly.requests + excluded.requests,
                       unmet = demand_hourly.unmet + excluded.unmet, label = excluded.label,
                       model_id = COALESCE(excluded.model_id, demand_hourly.model_id)""",
                [(hour, kind, key, c.model_id, c.label, c.requests, c.unmet) for (hour, kind, key), c in taken.items()])

    def _prune_if_due(self) -> None:
        now = self.clock()
        if now.timestamp() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        cutoff = hour_key(now - timedelta(days=KEEP_DAYS))
        try:
            db = self.registry.db()
            with write_transaction(db):
                db.conn.execute("DELETE FROM demand_hourly WHERE hour < ?", [cutoff])
        except sqlite3.Error as exc:
            log.warning("old demand counts not pruned: %s", exc)
            return
        self._pruned_at = now.timestamp()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()


def start(ctx: "ServerContext") -> DemandRecorder:
    ctx.demand = DemandRecorder(ctx.registry, ctx.config.demand_flush_seconds).start()
    return ctx.demand
