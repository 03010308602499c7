"""job.blocked: a job asked for a model no node has (the references the most-wanted list counts), sent at most once
per reference per hour. Runs in the job check's after-answer task, never in the check itself."""
from __future__ import annotations

from datetime import timedelta

import sqlite_utils

from modelsync.shared.catalog import write_transaction
from modelsync.shared.jobs.resolver import Resolution, record_wanted, unmet_references

from ..registry import iso, utc_now
from .events import emit, subscribers

QUIET_SECONDS = 3600


def record_blocked(db: sqlite_utils.Database, resolutions: list[Resolution]) -> int:
    """Emit job.blocked for each reference no node has, unless sent for it within the hour; returns how many.
    Nothing is noted while no endpoint wants the event (an endpoint added later hears of the next check at once);
    the notes of references quiet for the hour are dropped as they expire."""
    blocked = unmet_references(resolutions)
    if not blocked or not subscribers(db, "job.blocked"):
        return 0
    now = utc_now()
    quiet_since = iso(now - timedelta(seconds=QUIET_SECONDS))
    sent = 0
    with write_transaction(db):
        db.conn.execute("DELETE FROM webhook_blocked_refs WHERE last_sent_at <= ?", [quiet_since])
        for res, key in blocked:
            kind = res.reference.kind
            if db.conn.execute("SELECT 1 FROM webhook_blocked_refs WHERE kind = ? AND reference_key = ?",
                               [kind, key]).fetchone():
                continue  # sent within the hour (older notes were just deleted)
            db.conn.execute("INSERT INTO webhook_blocked_refs (kind, reference_key, last_sent_at) VALUES (?, ?, ?)",
                            [kind, key, iso(now)])
            emit(db, "job.blocked", {
                "kind": kind, "reference": res.requirement.written, "reference_key": key, "status": res.status,
                "reason": res.reason, "model": res.model.summary() if res.model else None})
            sent += 1
    return sent


def record_wanted_and_blocked(db: sqlite_utils.Database, resolutions: list[Resolution]) -> int:
    """The most-wanted count and the job.blocked event of a check's unmet references, in one transaction."""
    with write_transaction(db):
        record_blocked(db, resolutions)
        return record_wanted(db, resolutions)
