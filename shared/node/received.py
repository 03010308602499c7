"""A received file into the node's catalog without reading it again: the receiver hashed it while writing, so its
hashes are stored under the file's (path, size, mtime_ns), which is how the scanner recognises a file it knows
(`scanner._reuse_cached`). The scan that follows takes the hashes from there and does the rest as for any new file
(header, sidecars, metadata, aliases), so the catalog row ends up exactly as a scan of the file would write it."""
from __future__ import annotations

import sqlite_utils

from ..catalog import utc_now, write_transaction
from ..records import Root
from ..transfer.receiver import Received


def record_received(db: sqlite_utils.Database, node_id: str, root: Root, received: Received) -> int:
    """Returns the model's id."""
    hashes, now = received.hashes, utc_now()
    with write_transaction(db):
        db.conn.execute(
            """INSERT INTO models (hash_sha256, hash_autov2, hash_autov1, hash_autov3, size, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hash_sha256) DO NOTHING""",
            [hashes.sha256, hashes.sha256[:10], hashes.autov1, hashes.autov3, received.size, now, now])
        model_id = db.conn.execute("SELECT id FROM models WHERE hash_sha256 = ?", [hashes.sha256]).fetchone()[0]
        db.conn.execute("DELETE FROM unusable_files WHERE server_id = ? AND path = ?", [node_id, received.path])
        db.conn.execute(
            """INSERT INTO model_server_availability (server_id, path, model_id, rel_name, role, size, mtime_ns, last_seen,
                                                     has_preview)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)
               ON CONFLICT (server_id, path) DO UPDATE SET model_id = excluded.model_id, rel_name = excluded.rel_name,
                   role = excluded.role, size = excluded.size, mtime_ns = excluded.mtime_ns, last_seen = excluded.last_seen,
                   content_type = NULL, content_base = NULL, embedded = NULL, problem = NULL""",
            [node_id, received.path, model_id, received.rel_name, root.role, received.size, received.mtime_ns, now])
    return model_id
