"""Webhook endpoints and their deliveries in the registry: what the admin API and the delivery threads read and write."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import TIME_FORMAT, utc_now, write_transaction

from ..transfers.records import shown_url


@dataclass(frozen=True)
class Endpoint:
    id: int
    url: str
    events: list[str]
    description: str | None
    secret: str = field(repr=False)
    enabled: bool
    disabled_reason: str | None
    disabled_at: str | None
    dropped: int
    dropped_last_at: str | None
    created_at: str

    def to_dict(self, backlog: int) -> dict[str, Any]:
        """As answers and pages show it: never the secret, the URL without its query (it may hold a token)."""
        return {"id": self.id, "url": shown_url(self.url), "events": self.events, "description": self.description,
                "enabled": self.enabled, "disabled_reason": self.disabled_reason, "disabled_at": self.disabled_at,
                "backlog": backlog, "dropped": self.dropped, "dropped_last_at": self.dropped_last_at,
                "created_at": self.created_at}


@dataclass(frozen=True)
class Delivery:
    id: int
    endpoint_id: int
    message_id: str
    event_type: str
    payload: str
    state: str
    attempts: int
    next_attempt_at: float
    last_attempt_at: str | None
    last_status: int | None
    last_error: str | None
    created_at: str
    finished_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint_id": self.endpoint_id, "message_id": self.message_id,
                "event_type": self.event_type, "state": self.state, "attempts": self.attempts,
                "next_attempt_at": unix_iso(self.next_attempt_at) if self.state == "pending" else None,
                "last_attempt_at": self.last_attempt_at, "last_status": self.last_status, "last_error": self.last_error,
                "created_at": self.created_at, "finished_at": self.finished_at, "payload": json.loads(self.payload)}


def unix_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime(TIME_FORMAT)


def _endpoint(row: tuple) -> Endpoint:
    (id_, url, events, description, secret, enabled, disabled_reason, disabled_at, dropped, dropped_last_at,
     created_at) = row
    return Endpoint(id_, url, json.loads(events), description, secret, bool(enabled), disabled_reason, disabled_at,
                    dropped, dropped_last_at, created_at)


ENDPOINT_COLUMNS = ("id, url, events, description, secret, enabled, disabled_reason, disabled_at, dropped, "
                    "dropped_last_at, created_at")
DELIVERY_COLUMNS = ("id, endpoint_id, message_id, event_type, payload, state, attempts, next_attempt_at, "
                    "last_attempt_at, last_status, last_error, created_at, finished_at")


def create_endpoint(db: sqlite_utils.Database, url: str, events: list[str], description: str | None,
                    secret: str) -> Endpoint:
    with write_transaction(db):
        cursor = db.conn.execute(
            "INSERT INTO webhook_endpoints (url, events, description, secret, enabled, dropped, created_at) "
            "VALUES (?, ?, ?, ?, 1, 0, ?)", [url, json.dumps(events), description, secret, utc_now()])
        found = endpoint(db, int(cursor.lastrowid))
    assert found is not None
    return found


def endpoint(db: sqlite_utils.Database, endpoint_id: int) -> Endpoint | None:
    row = db.conn.execute(f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?", [endpoint_id]).fetchone()
    return _endpoint(row) if row else None


def endpoints(db: sqlite_utils.Database) -> list[Endpoint]:
    return [_endpoint(row) for row in db.conn.execute(f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id")]


def backlogs(db: sqlite_utils.Database) -> dict[int, int]:
    """Undelivered events per endpoint."""
    return dict(db.conn.execute(
        "SELECT endpoint_id, COUNT(*) FROM webhook_deliveries WHERE state = 'pending' GROUP BY endpoint_id").fetchall())


def delete_endpoint(db: sqlite_utils.Database, endpoint_id: int) -> bool:
    with write_transaction(db):
        return db.conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", [endpoint_id]).rowcount == 1


def _delivery(row: tuple) -> Delivery:
    return Delivery(*row)


def delivery(db: sqlite_utils.Database, delivery_id: int) -> Delivery | None:
    row = db.conn.execute(f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?", [delivery_id]).fetchone()
    return _delivery(row) if row else None


def deliveries(db: sqlite_utils.Database, endpoint_id: int, state: str | None, limit: int,
               offset: int) -> tuple[list[Delivery], int]:
    """A page of the endpoint's deliveries, newest first, and how many there are."""
    where, params = ("endpoint_id = ? AND state = ?", [endpoint_id, state]) if state else ("endpoint_id = ?", [endpoint_id])
    total = db.conn.execute(f"SELECT COUNT(*) FROM webhook_deliveries WHERE {where}", params).fetchone()[0]
    rows = db.conn.execute(f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {where} ORDER BY id DESC "
                           "LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
    return [_delivery(row) for row in rows], total


def retry(db: sqlite_utils.Database, delivery_id: int) -> Delivery:
    """Due now, with its schedule of retries from the start; its endpoint enabled again (the operator acts)."""
    with write_transaction(db):
        db.conn.execute("""UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,
                                  finished_at = NULL WHERE id = ?""", [time.time(), delivery_id])
        db.conn.execute("""UPDATE webhook_endpoints SET enabled = 1, disabled_reason = NULL, disabled_at = NULL
                           WHERE id = (SELECT endpoint_id FROM webhook_deliveries WHERE id = ?)""", [delivery_id])
        found = delivery(db, delivery_id)
    assert found is not None
    return found


def heads(db: sqlite_utils.Database) -> list[Delivery]:
    """Each enabled endpoint's oldest undelivered event: the only one of that endpoint that may be sent now."""
    rows = db.conn.execute(
        f"""SELECT {', '.join('d.' + c.strip() for c in DELIVERY_COLUMNS.split(','))}
            FROM webhook_deliveries d
            JOIN (SELECT endpoint_id, MIN(id) AS head FROM webhook_deliveries WHERE state = 'pending'
                  GROUP BY endpoint_id) h ON h.head = d.id
            JOIN webhook_endpoints e ON e.id = d.endpoint_id
            WHERE e.enabled = 1""").fetchall()
    return [_delivery(row) for row in rows]


def head(db: sqlite_utils.Database, endpoint_id: int) -> Delivery | None:
    """The endpoint's oldest undelivered event as the registry holds it now (None when there is none)."""
    row = db.conn.execute(f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
                              WHERE endpoint_id = ? AND state = 'pending' ORDER BY id LIMIT 1""",
                          [endpoint_id]).fetchone()
    return _delivery(row) if row else None


def record_success(db: sqlite_utils.Database, delivery: Delivery, status: int) -> None:
    now = utc_now()
    with write_transaction(db):
        db.conn.execute("""UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, last_status = ?,
                                  last_error = NULL, last_attempt_at = ?, finished_at = ?
                           WHERE id = ? AND state = 'pending'""", [status, now, now, delivery.id])


def record_failure(db: sqlite_utils.Database, delivery: Delivery, status: int | None, error: str,
                   next_attempt_at: float | None) -> None:
    """A failed try: due again at `next_attempt_at`, or failed for good (None)."""
    now = utc_now()
    with write_transaction(db):
        if next_attempt_at is None:
            db.conn.execute("""UPDATE webhook_deliveries SET state = 'failed', attempts = attempts + 1, last_status = ?,
                                      last_error = ?, last_attempt_at = ?, finished_at = ?
                               WHERE id = ? AND state = 'pending'""", [status, error, now, now, delivery.id])
        else:
            db.conn.execute("""UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?, last_error = ?,
                                      last_attempt_at = ?, next_attempt_at = ? WHERE id = ? AND state = 'pending'""",
                            [status, error, now, next_attempt_at, delivery.id])


def record_test(db: sqlite_utils.Database, delivery: Delivery, status: int | None, error: str | None,
                delivered: bool) -> None:
    now = utc_now()
    with write_transaction(db):
        db.conn.execute("""UPDATE webhook_deliveries SET state = ?, attempts = 1, last_status = ?, last_error = ?,
                                  last_attempt_at = ?, finished_at = ? WHERE id = ?""",
                        ["delivered" if delivered else "failed", status, error, now, now, delivery.id])


def disable(db: sqlite_utils.Database, endpoint_id: int, reason: str) -> None:
    with write_transaction(db):
        db.conn.execute("UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, disabled_at = ? WHERE id = ?",
                        [reason, utc_now(), endpoint_id])


def trim_backlogs(db: sqlite_utils.Database, cap: int, in_flight: set[int]) -> int:
    """Each endpoint keeps at most `cap` undelivered events: the oldest beyond are dropped and counted. An endpoint
    with a try in flight is trimmed after it (its head, the oldest, is being sent and its outcome must be recorded)."""
    over_sql = """SELECT endpoint_id, COUNT(*) FROM webhook_deliveries WHERE state = 'pending'
                  GROUP BY endpoint_id HAVING COUNT(*) > ?"""
    if not db.conn.execute(over_sql, [cap]).fetchone():  # a plain read: the write lock only when there is a trim
        return 0
    dropped_total = 0
    with write_transaction(db):
        for endpoint_id, count in db.conn.execute(over_sql, [cap]).fetchall():
            if endpoint_id in in_flight:
                continue
            excess = count - cap
            dropped = db.conn.execute(
                """DELETE FROM webhook_deliveries WHERE id IN (
                       SELECT id FROM webhook_deliveries WHERE endpoint_id = ? AND state = 'pending' ORDER BY id LIMIT ?)""",
                [endpoint_id, excess]).rowcount
            db.conn.execute("UPDATE webhook_endpoints SET dropped = dropped + ?, dropped_last_at = ? WHERE id = ?",
                            [dropped, utc_now(), endpoint_id])
            dropped_total += dropped
    return dropped_total


def prune_log(db: sqlite_utils.Database, older_than: str) -> int:
    """Delivered and failed deliveries that finished before `older_than` leave the log."""
    with write_transaction(db):
        return db.conn.execute("DELETE FROM webhook_deliveries WHERE state <> 'pending' AND finished_at < ?",
                               [older_than]).rowcount
