"""The events webhooks carry, and `emit`: an event written into the outbox inside the caller's transaction.

`emit` does no network I/O: one read of the subscribed endpoints and one INSERT per endpoint, committed (or rolled
back) with whatever the caller writes. The delivery threads are woken at once; an event committed after they looked
is found on their next look (at most `POLL_SECONDS` later)."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import utc_now
from modelsync.shared.webhooks.signing import new_message_id

EVENT_TYPES = (
    "node.offline",
    "node.online",
    "node.disk_low",
    "model.last_copy_lost",
    "job.blocked",
    "transfer.completed",
    "transfer.failed",
    "model.update_available",
)
TEST_EVENT = "webhook.test"  # sent by POST /api/v1/webhooks/{id}/test to that endpoint only
ALL_EVENTS = "*"

_listeners: set[threading.Event] = set()  # one per running delivery service (tests run several in one process)
_listeners_lock = threading.Lock()


def listen(wake: threading.Event) -> None:
    with _listeners_lock:
        _listeners.add(wake)


def unlisten(wake: threading.Event) -> None:
    with _listeners_lock:
        _listeners.discard(wake)


def wake_deliveries() -> None:
    with _listeners_lock:
        for wake in _listeners:
            wake.set()


def event_body(event_type: str, data: dict[str, Any]) -> str:
    """The body every try of the event sends: Standard Webhooks' {type, timestamp, data}."""
    moment = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": moment, "data": data}, separators=(",", ":"), sort_keys=True)


def subscribed(events_json: str, event_type: str) -> bool:
    events = json.loads(events_json)
    return ALL_EVENTS in events or event_type in events


def subscribers(db: sqlite_utils.Database, event_type: str) -> list[int]:
    """The enabled endpoints that want this event."""
    return [endpoint_id for endpoint_id, events in
            db.conn.execute("SELECT id, events FROM webhook_endpoints WHERE enabled = 1")
            if subscribed(events, event_type)]


def enqueue(db: sqlite_utils.Database, endpoint_id: int, event_type: str, body: str, message_id: str) -> int:
    cursor = db.conn.execute(
        """INSERT INTO webhook_deliveries (endpoint_id, message_id, event_type, payload, state, attempts, next_attempt_at,
                                           created_at)
           VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)""",
        [endpoint_id, message_id, event_type, body, time.time(), utc_now()],
    )
    return int(cursor.lastrowid)


def emit(db: sqlite_utils.Database, event_type: str, data: dict[str, Any]) -> None:
    """Queue the event for every enabled endpoint subscribed to it (in the caller's transaction, if any)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event_type!r}")
    endpoints = subscribers(db, event_type)
    if not endpoints:
        return
    body, message_id = event_body(event_type, data), new_message_id()
    for endpoint_id in endpoints:
        enqueue(db, endpoint_id, event_type, body, message_id)
    wake_deliveries()
