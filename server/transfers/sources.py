"""Which nodes can serve a model to a destination now: holders of a usable copy, online, reachable by peers (a
`files_url`), able to check a grant (a token hash), not excluded for the SHA256 after wrong bytes, and not the
source this transfer just failed on until that node is heard from again. The most recently heard from first."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection

import sqlite_utils
from modelsync.shared.names import kind_of
from modelsync.shared.records import ROLES

from ..url_param import http_url
from .records import Transfer

MAX_SOURCES = 3  # per order: the node falls back down the list without asking again
# a source that failed this way may work once its node is heard from again (restarted, re-scanned)
PASSING_SOURCE_FAILURES = frozenset({"source_gone", "changed"})


@dataclass(frozen=True)
class Holder:
    server_id: str
    rel_name: str
    role: str | None
    files_url: str | None
    token_hash: str | None = field(repr=False)
    last_contact: str  # the later of its last sync and last heartbeat ("" when never)
    excluded: bool  # sent wrong bytes of this SHA256 and has not hashed its file again

    def can_serve(self, online_ids: Collection[str]) -> bool:
        return self.server_id in online_ids and bool(self.files_url) and bool(self.token_hash) and not self.excluded


def holders(db: sqlite_utils.Database, model_id: int | None, sha256: str, *, destination: str) -> list[Holder]:
    """Every node but the destination holding a usable copy (one row each: its first file by path), most recently
    heard from first, then by id."""
    rows = db.conn.execute(
        """SELECT a.server_id, a.rel_name, a.role, a.content_type, s.files_url, s.token_hash,
                  COALESCE(s.last_sync, ''), COALESCE(s.last_heartbeat, ''),
                  EXISTS (SELECT 1 FROM transfer_source_exclusions x WHERE x.source_server_id = a.server_id AND x.sha256 = ?)
           FROM model_server_availability a JOIN servers s ON s.id = a.server_id
           WHERE a.model_id = ? AND a.server_id <> ?
           ORDER BY a.server_id, a.path""",
        [sha256, model_id, destination],
    ).fetchall()
    found: dict[str, Holder] = {}
    for server_id, rel_name, role, content_type, files_url, key, last_sync, last_heartbeat, excluded in rows:
        if server_id not in found:
            found[server_id] = Holder(server_id, rel_name, _role(role, content_type), files_url, key,
                                      max(last_sync, last_heartbeat), bool(excluded))
    by_id = sorted(found.values(), key=lambda h: h.server_id)
    return sorted(by_id, key=lambda h: h.last_contact, reverse=True)


def _role(role: str | None, content_type: str | None) -> str | None:
    """The folder role the destination should put the file in: the source's, else what its content says."""
    kind = kind_of(role, content_type)
    return kind if kind in ROLES else role


def avoided(transfer: Transfer, holder: Holder) -> bool:
    """The source this transfer last failed on for a passing reason, not heard from since."""
    return (transfer.reason in PASSING_SOURCE_FAILURES and holder.server_id == transfer.source_server_id
            and transfer.reason_at is not None and holder.last_contact <= transfer.reason_at)


def usable_sources(db: sqlite_utils.Database, transfer: Transfer, online_ids: Collection[str]) -> list[Holder]:
    """The sources this transfer may use now, best first (only the requested one, when the order named one)."""
    candidates = holders(db, transfer.model_id, transfer.sha256, destination=transfer.server_id)
    if transfer.requested_source_id:
        candidates = [h for h in candidates if h.server_id == transfer.requested_source_id]
    return [h for h in candidates if h.can_serve(online_ids) and not avoided(transfer, h)]


def file_mtime(db: sqlite_utils.Database, server_id: str, sha256: str) -> int | None:
    """The newest mtime_ns among the node's files of this SHA256, usable or not (an unmounted share's file keeps
    its mtime; it is not hashed again when the share is back)."""
    row = db.conn.execute(
        """SELECT MAX(f.mtime_ns) FROM (
               SELECT a.mtime_ns FROM model_server_availability a JOIN models m ON m.id = a.model_id
               WHERE a.server_id = ? AND m.hash_sha256 = ?
               UNION ALL
               SELECT u.mtime_ns FROM unusable_files u JOIN models m ON m.id = u.model_id
               WHERE u.server_id = ? AND m.hash_sha256 = ?) f""",
        [server_id, sha256, server_id, sha256],
    ).fetchone()
    return row[0]


def set_files_url(db: sqlite_utils.Database, server_id: str, url: Any) -> bool:
    """Record the base URL peers fetch node `server_id`'s files from (what the node reports); True when it changed
    (then it may have become a source: wake the waiting nodes). A URL with credentials, a query or a fragment is
    refused: it is handed to other nodes."""
    http_url(url, "files_url", query_allowed=False)
    cursor = db.conn.execute("UPDATE servers SET files_url = ? WHERE id = ? AND (files_url IS NULL OR files_url <> ?)",
                            [url, server_id, url])
    return cursor.rowcount == 1
