"""Previews from the nodes: a model's `<stem>.preview.jpeg` on a node, which its operator chose, wins over Civitai's.

A sync answer names the models whose preview the server wants from that node (`previews_wanted`); the node sends
each once (PUT /api/v1/servers/{id}/previews/{sha256}); the server shrinks and re-encodes it as JPEG. Between
nodes, the first preview received stays until that node no longer has it; then the model's next preview comes from
another node (or Civitai's again)."""
from __future__ import annotations

import sqlite_utils

from .errors import ApiError
from .previews import PreviewError, PreviewStore, StoredPreview
from .registry import iso, utc_now

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000

_WANTED = """
    SELECT DISTINCT m.hash_sha256 FROM model_server_availability a
    JOIN models m ON m.id = a.model_id LEFT JOIN model_previews p ON p.sha256 = m.hash_sha256
    WHERE a.server_id = ? AND a.has_preview = 1
      AND (p.sha256 IS NULL OR p.status != 'stored' OR p.source_server IS NULL)
    ORDER BY m.hash_sha256"""


def previews_wanted(db: sqlite_utils.Database, server_id: str) -> list[str]:
    """The node's models that have a local preview there while the server has none, or only Civitai's."""
    return [row[0] for row in db.conn.execute(_WANTED, [server_id])]


def drop_vanished(db: sqlite_utils.Database, server_id: str, store: PreviewStore) -> int:
    """Previews this node gave for models it no longer holds with a preview: forgotten, so another can come."""
    gone = [row[0] for row in db.conn.execute(
        """SELECT p.sha256 FROM model_previews p WHERE p.source_server = ? AND NOT EXISTS (
               SELECT 1 FROM model_server_availability a JOIN models m ON m.id = a.model_id
               WHERE m.hash_sha256 = p.sha256 AND a.server_id = ? AND a.has_preview = 1)""", [server_id, server_id])]
    for sha256 in gone:
        db.conn.execute("DELETE FROM model_previews WHERE sha256 = ?", [sha256])
        store.path(sha256).unlink(missing_ok=True)
    return len(gone)


def _first_node(db: sqlite_utils.Database, server_id: str, sha256: str) -> str | None:
    """The other node whose preview of the model came first and stays; None when this node's is taken."""
    held = db.conn.execute(
        """SELECT 1 FROM model_server_availability a JOIN models m ON m.id = a.model_id
           WHERE a.server_id = ? AND m.hash_sha256 = ? AND a.has_preview = 1 LIMIT 1""", [server_id, sha256]).fetchone()
    if held is None:
        raise ApiError(409, f"node {server_id} lists no copy of {sha256} with a preview: sync first", "sha256")
    current = db.conn.execute("SELECT status, source_server FROM model_previews WHERE sha256 = ?", [sha256]).fetchone()
    if current is not None and current[0] == "stored" and current[1] not in (None, server_id):
        return current[1]
    return None


def store_node_preview(db: sqlite_utils.Database, store: PreviewStore, server_id: str, sha256: str, data: bytes) -> dict:
    first = _first_node(db, server_id, sha256)  # before decoding, to refuse cheaply; decided again when writing

    def write_row(preview: StoredPreview) -> bool:
        nonlocal first
        first = _first_node(db, server_id, sha256)
        if first is None:
            db.conn.execute(
                """INSERT OR REPLACE INTO model_previews
                   (sha256, status, source_url, content_type, width, height, bytes, checked_at, error, source_server)
                   VALUES (?, 'stored', NULL, 'image/jpeg', ?, ?, ?, ?, NULL, ?)""",
                [sha256, preview.width, preview.height, preview.bytes, iso(utc_now()), server_id])
        return first is None

    stored: StoredPreview | None = None
    if first is None:
        try:
            stored = store.store(db, sha256, data, write_row, max_pixels=MAX_UPLOAD_PIXELS)
        except PreviewError as exc:
            raise ApiError(400, f"the preview is {exc}", "body") from None
    if stored is None:
        return {"sha256": sha256, "stored": False, "reason": f"node {first}'s preview came first and stays"}
    return {"sha256": sha256, "stored": True, "width": stored.width, "height": stored.height}
