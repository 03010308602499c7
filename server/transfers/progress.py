"""What the destination node reports of a transfer, and what the transfer becomes.

Only the destination node reports. A transfer that is done, failed or cancelled stays so: a report about it changes
nothing and is answered with it as it is, so the node stops (a cancelled transfer answers "cancelled"). Reported
states: running, verifying, done, failed (with a reason word of shared/transfer/failures.py) and cancelled; queued and
waiting_source are the server's to decide.

| report                          | the transfer becomes                                       | for good?       |
|---------------------------------|------------------------------------------------------------|-----------------|
| running, verifying              | that state (1)                                             | no              |
| done                            | done: finished_at set, bytes_done = size, reason cleared   | yes             |
| cancelled, failed: cancelled    | cancelled (the node's own cancel)                          | yes             |
| failed: source_gone, changed    | queued if another source can serve now, else waiting (2)   | no              |
| failed: not_allowed             | queued: the next order carries a fresh grant (3)           | the second time |
| failed: hash_mismatch, too_long | source excluded (4); queued / waiting_source / failed (5)  | if no other     |
| failed: disk_full               | failed: free space, then retry                             | yes             |
| failed: root_unavailable        | failed: mount the share (never another disk), then retry   | yes             |
| failed: bad_name                | failed: the source's name is empty once made safe          | yes             |

A download (Civitai, URL) has no other source to turn to:
| failed: rate_limited, source_gone | queued: handed out again after its back-off (6), a Civitai | after 5 attempts |
|                                 | one not before the fleet's back-off ends either            |                 |
| failed: auth_required, early_access, not_found, no_hash, url_refused (TERMINAL_DOWNLOAD_REASONS), or any other
|                                 | failed, never handed out again until an admin retries it   | yes             |

(1) An attempt is counted when it starts from queued or waiting_source; the last failure's reason and error stay
    until bytes flow again (a running report with more bytes than the last one).
(2) The source that failed is not chosen again for this transfer until its node is heard from after the failure
    (restarted, re-scanned): another holder is used, or the transfer waits in waiting_source.
(3) Refused again with no bytes in between: failed, not_allowed (the fresh grant was refused too).
(4) That source is not used for that SHA256 until it has hashed its file again: the exclusion keeps the mtime_ns
    of its file and `clear_exclusions_after_sync` ends it when the file has another one.
(5) queued when another holder can serve now, waiting_source when the others are offline, failed when no other
    node (or not the requested one) holds it.
(6) A download's failure counts as an attempt when no running report counted it (it failed at open); the order is
    handed out again only `downloads.retry_delay(attempts)` after the failure: 30 s, doubling, at most 15 minutes.

Without `online_ids` (unknown) a transfer that may go on becomes queued; the node's next orders decide.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Collection

import sqlite_utils

from modelsync.shared.catalog import placeholders, write_transaction
from modelsync.shared.transfer.failures import REASONS

from ..errors import ApiError
from . import store
from .params import byte_count, node_id, rate, text
from .records import RESUMABLE_STATES, Transfer
from .sources import file_mtime, holders, usable_sources

REPORTED_STATES = ("running", "verifying", "done", "failed", "cancelled")
SOURCE_FAILURES = frozenset({"source_gone", "changed", "not_allowed", "hash_mismatch", "too_long"})
PASSING_DOWNLOAD_FAILURES = frozenset({"rate_limited", "source_gone"})
MAX_DOWNLOAD_ATTEMPTS = 5
WRONG_BYTES = frozenset({"hash_mismatch", "too_long"})
MAX_ERROR_CHARS = 1000
MAX_PATH_CHARS = 4096


def report_progress(
    db: sqlite_utils.Database, transfer_id: int, server_id: str, *, state: Any, bytes_done: Any, size: Any = None,
    speed_bps: Any = None, eta_seconds: Any = None, reason: Any = None, error: Any = None, dest_path: Any = None,
    source_server_id: Any = None, online_ids: Collection[str] | None = None, now: datetime | None = None,
) -> Transfer:
    """Record node `server_id`'s report on its transfer; returns the transfer as it is now (see the table above)."""
    if state not in REPORTED_STATES:
        raise ApiError(400, f"state must be one of {', '.join(REPORTED_STATES)}", "state")
    if state == "failed" and reason not in REASONS:
        raise ApiError(400, f"a failure's reason must be one of {', '.join(REASONS)}", "reason")
    values: dict[str, Any] = {"bytes_done": byte_count(bytes_done, "bytes_done"), "speed_bps": rate(speed_bps, "speed_bps"),
                              "eta_seconds": rate(eta_seconds, "eta_seconds")}
    size = None if size is None else byte_count(size, "size")
    error = text(error, "error", MAX_ERROR_CHARS, cut=True)
    if (path := text(dest_path, "dest_path", MAX_PATH_CHARS)) is not None:
        values["dest_path"] = path
    if source_server_id is not None:
        values["source_server_id"] = node_id(source_server_id, "source_server_id")
    stamped = store.stamp(now)
    with write_transaction(db):
        transfer = store.fetch(db, transfer_id)
        if transfer.server_id != server_id:
            raise ApiError(403, f"transfer {transfer.id} is to node {transfer.server_id}; only that node reports on it", "id")
        if not transfer.active:
            return transfer
        if source_server_id is not None and not store.server_exists(db, source_server_id):
            raise ApiError(400, f"no node {source_server_id!r}", "source_server_id")
        if size is not None and transfer.size is not None and size != transfer.size:
            raise ApiError(400, f"the transfer's size is {transfer.size} bytes, not {size}", "size")
        values["size"] = transfer.size if transfer.size is not None else size
        if values["size"] is not None and values["bytes_done"] > values["size"]:
            raise ApiError(400, "bytes_done is more than the size", "bytes_done")
        if state in ("running", "verifying"):
            change = _going(transfer, state, values)
        elif state == "done":
            change = {**values, "state": "done", "bytes_done": values["size"] or values["bytes_done"], "eta_seconds": 0.0,
                      "reason": None, "error": None, "reason_at": None, "finished_at": stamped}
        elif state == "cancelled" or reason == "cancelled":
            change = {**values, "state": "cancelled", "reason": "cancelled", "error": error or REASONS["cancelled"],
                      "reason_at": stamped, "finished_at": stamped}
        else:
            change = {**values, **_failed(db, transfer, reason, error or REASONS[reason], values.get("source_server_id"),
                                          online_ids, stamped)}
        store.update(db, transfer, change, stamped)
        return store.fetch(db, transfer.id)


def _going(transfer: Transfer, state: str, values: dict[str, Any]) -> dict[str, Any]:
    change = {**values, "state": state}
    if transfer.state not in RESUMABLE_STATES:
        change["attempts"] = transfer.attempts + 1
    if transfer.reason is not None and values["bytes_done"] > transfer.bytes_done and transfer.state in RESUMABLE_STATES:
        change.update(reason=None, error=None, reason_at=None)  # bytes flow again: the last failure is over
    return change


def _failed(db: sqlite_utils.Database, transfer: Transfer, reason: str, error: str, reported_source: str | None,
            online_ids: Collection[str] | None, stamped: str) -> dict[str, Any]:
    failure = {"reason": reason, "error": error, "reason_at": stamped, "speed_bps": None, "eta_seconds": None}
    terminal = {**failure, "state": "failed", "finished_at": stamped}
    if transfer.source_kind != "peer":
        # a download that fails before its first progress report (unreachable, 429/5xx at open) counts too
        attempts = transfer.attempts + (0 if transfer.state in RESUMABLE_STATES else 1)
        passing = reason in PASSING_DOWNLOAD_FAILURES and attempts < MAX_DOWNLOAD_ATTEMPTS
        return {**failure, "attempts": attempts, "state": "queued" if passing else "failed",
                **({} if passing else {"finished_at": stamped})}
    if reason not in SOURCE_FAILURES:
        return terminal
    source = reported_source or transfer.source_server_id
    if source is None:
        raise ApiError(400, f"name the source (source_server_id) of a failure for {reason}", "source_server_id")
    if reason == "not_allowed" and transfer.reason == "not_allowed":
        return terminal  # the fresh grant of the order after the first refusal was refused too
    if reason in WRONG_BYTES:
        _exclude(db, source, transfer.sha256, stamped)
        others = [h for h in holders(db, transfer.model_id, transfer.sha256, destination=transfer.server_id)
                  if not h.excluded and (transfer.requested_source_id in (None, h.server_id))]
        if not others:
            return terminal
    if online_ids is None:
        return {**failure, "state": "queued"}
    after = replace(transfer, reason=reason, reason_at=stamped, source_server_id=source)
    return {**failure, "state": "queued" if usable_sources(db, after, online_ids) else "waiting_source"}


def _exclude(db: sqlite_utils.Database, source: str, sha256: str, stamped: str) -> None:
    db.conn.execute(
        """INSERT INTO transfer_source_exclusions (source_server_id, sha256, mtime_ns, since) VALUES (?, ?, ?, ?)
           ON CONFLICT (source_server_id, sha256) DO UPDATE SET mtime_ns = excluded.mtime_ns, since = excluded.since""",
        [source, sha256, file_mtime(db, source, sha256), stamped],
    )


def clear_exclusions_after_sync(db: sqlite_utils.Database, server_id: str) -> int:
    """After node `server_id` synced: its exclusions end for the files it hashed again (another mtime_ns) or no longer
    holds. Returns how many ended (then sources may have appeared: wake the waiting nodes)."""
    with write_transaction(db):
        rows = db.conn.execute("SELECT sha256, mtime_ns FROM transfer_source_exclusions WHERE source_server_id = ?",
                               [server_id]).fetchall()
        ended = [sha256 for sha256, mtime_ns in rows if file_mtime(db, server_id, sha256) != mtime_ns]
        if ended:
            db.conn.execute(f"DELETE FROM transfer_source_exclusions WHERE source_server_id = ? AND sha256 IN "
                            f"({placeholders(ended)})", [server_id, *ended])
    return len(ended)
