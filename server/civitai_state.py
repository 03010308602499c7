"""What the registry knows of its Civitai lookups: which models are due, and recording each answer.

Lookups are keyed by SHA256 in `civitai_lookups`: `next_attempt_at` NULL means "not again" (found, or a match the
operator rejected), a time means "due then" (after a 404: the re-check age; after an error: the back-off). A model
with null Civitai fields and no lookup row is due now. A rejected match (`civitai_rejections`) is never applied again.
"""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import write_transaction
from modelsync.shared.inventory_apply import load_rejections
from modelsync.shared.scan.metadata_merge import given_by_civitai, merge, metadata_source
from modelsync.shared.scan.metadata_sources import from_civitai_version
from modelsync.shared.records import METADATA_FIELDS, UNKNOWN_MARK, MetadataContribution

from .errors import ApiError
from .sync import forget_holders_digests
from .registry import iso, utc_now

SOURCE = "civitai_api"
# The Civitai text fields a 404 sets to "none", so that nodes and the dashboard see "Civitai does not know it".
UNKNOWN_MARKED_FIELDS = (
    "civitai_model_name",
    "civitai_model_base",
    "civitai_model_type",
    "civitai_model_version_name",
    "civitai_model_version_desc",
    "civitai_model_version_date",
    "civitai_download_url",
    "civitai_image_url",
)
_JSON_FIELDS = ("trained_words", "civitai_trained_words")


def due_lookups(db: sqlite_utils.Database, limit: int) -> list[str]:
    now = iso(utc_now())
    rows = db.conn.execute(
        """SELECT m.hash_sha256 FROM models m LEFT JOIN civitai_lookups l ON l.sha256 = m.hash_sha256
           WHERE (l.sha256 IS NULL AND (m.civitai_version_id IS NULL OR m.civitai_model_name IS NULL))
              OR (l.next_attempt_at IS NOT NULL AND l.next_attempt_at <= ?)
           ORDER BY l.next_attempt_at IS NOT NULL, l.next_attempt_at, m.id LIMIT ?""",
        [now, limit],
    ).fetchall()
    return [r[0] for r in rows]


def next_due_at(db: sqlite_utils.Database) -> str | None:
    row = db.conn.execute(
        """SELECT MIN(l.next_attempt_at) FROM civitai_lookups l JOIN models m ON m.hash_sha256 = l.sha256
           WHERE l.next_attempt_at IS NOT NULL"""
    ).fetchone()
    return row[0] if row else None


def due_previews(db: sqlite_utils.Database, limit: int) -> list[tuple[str, str]]:
    """(sha256, image URL) of models with a Civitai image and no preview attempt yet."""
    return db.conn.execute(
        """SELECT m.hash_sha256, m.civitai_image_url FROM models m LEFT JOIN model_previews p ON p.sha256 = m.hash_sha256
           WHERE m.civitai_image_url IS NOT NULL AND m.civitai_image_url != ? AND p.sha256 IS NULL
           ORDER BY m.id LIMIT ?""",
        [UNKNOWN_MARK, limit],
    ).fetchall()


def requeue_lookup(db: sqlite_utils.Database, sha256: str) -> None:
    """Due now (refresh-metadata); a failed preview is tried again too."""
    now = iso(utc_now())
    with write_transaction(db):
        db.conn.execute(
            """INSERT INTO civitai_lookups (sha256, status, attempts, next_attempt_at) VALUES (?, 'queued', 0, ?)
               ON CONFLICT(sha256) DO UPDATE SET next_attempt_at = excluded.next_attempt_at""",
            [sha256, now],
        )
        db.conn.execute("DELETE FROM model_previews WHERE sha256 = ? AND status != 'stored'", [sha256])


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for col in (*_JSON_FIELDS, "field_sources", "overrides"):
        if isinstance(row.get(col), str):
            row[col] = json.loads(row[col])
    return row


def _model(db: sqlite_utils.Database, sha256: str) -> dict[str, Any] | None:
    cursor = db.conn.execute("SELECT * FROM models WHERE hash_sha256 = ?", [sha256])
    values = cursor.fetchone()
    if values is None:
        return None
    return _decoded(dict(zip([d[0] for d in cursor.description], values)))


def write_fields(
    db: sqlite_utils.Database,
    model: dict[str, Any],
    fields: dict[str, Any],
    sources: dict[str, str],
    overrides: dict[str, Any] | None = None,
) -> set[str]:
    """Write what changed of a model's metadata (and its overrides, when given); `model` is its decoded row.
    Returns the metadata fields that changed."""
    changed = {name for name in METADATA_FIELDS if fields.get(name) != model.get(name)}
    row: dict[str, Any] = {name: fields.get(name) for name in changed}
    for name in _JSON_FIELDS:
        if row.get(name) is not None:
            row[name] = json.dumps(row[name], ensure_ascii=False)
    kept_sources = {k: v for k, v in sources.items() if fields.get(k) is not None}
    if kept_sources != (model.get("field_sources") or {}):
        row["field_sources"] = json.dumps(kept_sources, sort_keys=True)
    source = metadata_source(kept_sources, fields)
    if source != model.get("metadata_source"):
        row["metadata_source"] = source
    if overrides is not None and overrides != (model.get("overrides") or {}):
        row["overrides"] = json.dumps(overrides, sort_keys=True, ensure_ascii=False) if overrides else None
    if row:
        row["updated_at"] = iso(utc_now())
        assignments = ", ".join(f"[{c}] = ?" for c in row)
        db.conn.execute(f"UPDATE models SET {assignments} WHERE id = ?", [*row.values(), model["id"]])
    return changed


def _record(db: sqlite_utils.Database, sha256: str, status: str, next_attempt_at: str | None, **extra: Any) -> None:
    now = iso(utc_now())
    db.conn.execute(
        """INSERT INTO civitai_lookups (sha256, status, checked_at, attempts, next_attempt_at, version_id, error, response)
           VALUES (:sha256, :status, :now, 1, :next, :version_id, :error, :response)
           ON CONFLICT(sha256) DO UPDATE SET status = :status, checked_at = :now, attempts = COALESCE(attempts, 0) + 1,
             next_attempt_at = :next, version_id = COALESCE(:version_id, version_id), error = :error,
             response = COALESCE(:response, response)""",
        {"sha256": sha256, "status": status, "now": now, "next": next_attempt_at,
         "version_id": extra.get("version_id"), "error": extra.get("error"), "response": extra.get("response")},
    )


def record_found(db: sqlite_utils.Database, sha256: str, version: dict[str, Any], origin: str) -> set[str]:
    """Fill the model's null fields from a Civitai version (never overwriting; earlier "none" marks give way).
    A version the operator rejected for this model is recorded as such and not applied."""
    offered = from_civitai_version(version, sha256)
    version_id = version.get("id") if isinstance(version.get("id"), int) else None
    with write_transaction(db):
        if version_id is not None and version_id in load_rejections(db, [sha256]).get(sha256, set()):
            _record(db, sha256, "rejected", None, version_id=version_id)
            return set()
        model = _model(db, sha256)
        changed: set[str] = set()
        if model is not None:
            existing = {k: model.get(k) for k in METADATA_FIELDS}
            sources = dict(model.get("field_sources") or {})
            for name in UNKNOWN_MARKED_FIELDS:
                if existing.get(name) == UNKNOWN_MARK and sources.get(name) == SOURCE:
                    existing[name] = None
                    sources.pop(name)
            merged = merge([MetadataContribution(SOURCE, offered, origin)], existing, sources, model.get("overrides") or {})
            changed = write_fields(db, model, merged.fields, merged.field_sources)
        _record(db, sha256, "found", None, version_id=version_id, response=json.dumps(version, ensure_ascii=False))
    return changed


def reject_match(db: sqlite_utils.Database, model_id: int) -> tuple[int, set[str]]:
    """The operator says the model's Civitai match is wrong: remember its version as rejected, clear what the match
    filled (the Civitai columns and every field a Civitai source gave; overrides stay), put back the type and base
    the files' content says, and drop its preview. Returns the rejected version id and the cleared fields."""
    with write_transaction(db):
        row = db.conn.execute("SELECT hash_sha256 FROM models WHERE id = ?", [model_id]).fetchone()
        if row is None:
            raise ApiError(404, f"no model with id {model_id}", "id")
        model = _model(db, row[0])
        assert model is not None
        version_id = model.get("civitai_version_id")
        if version_id is None:
            raise ApiError(409, f"model {model_id} has no Civitai match to reject", "civitai_version_id")
        overrides = model.get("overrides") or {}
        sources = dict(model.get("field_sources") or {})
        fields = {k: model.get(k) for k in METADATA_FIELDS}
        cleared = {
            name for name in METADATA_FIELDS
            if fields[name] is not None and name not in overrides
            and given_by_civitai(name, sources.get(name))
        }
        for name in cleared:
            fields[name] = None
            sources.pop(name, None)
        for name, column in (("type", "content_type"), ("base", "content_base")):
            if fields[name] is None:
                content = db.conn.execute(
                    f"""SELECT {column} FROM model_server_availability WHERE model_id = ? AND {column} IS NOT NULL
                        GROUP BY {column} ORDER BY COUNT(*) DESC, {column} LIMIT 1""",
                    [model_id],
                ).fetchone()
                if content is not None:
                    fields[name], sources[name] = content[0], "embedded"
        write_fields(db, model, fields, sources)
        db.conn.execute(
            "INSERT OR REPLACE INTO civitai_rejections (sha256, version_id, rejected_at) VALUES (?, ?, ?)",
            [model["hash_sha256"], version_id, iso(utc_now())],
        )
        _record(db, model["hash_sha256"], "rejected", None, version_id=version_id)
        db.conn.execute("DELETE FROM model_previews WHERE sha256 = ?", [model["hash_sha256"]])
        forget_holders_digests(db, model_id)  # the nodes' next syncs refill what was cleared
    return version_id, cleared


def record_not_found(db: sqlite_utils.Database, sha256: str, recheck_days: float) -> set[str]:
    """Civitai does not know this file: null Civitai text fields become "none"; ask again after recheck_days."""
    with write_transaction(db):
        model = _model(db, sha256)
        changed: set[str] = set()
        if model is not None:
            marks = {name: UNKNOWN_MARK for name in UNKNOWN_MARKED_FIELDS if model.get(name) is None}
            merged = merge(
                [MetadataContribution(SOURCE, marks)],
                {k: model.get(k) for k in METADATA_FIELDS},
                model.get("field_sources") or {},
                model.get("overrides") or {},
            )
            changed = write_fields(db, model, merged.fields, merged.field_sources)
        _record(db, sha256, "not_found", iso(utc_now() + timedelta(days=recheck_days)))
    return changed


def record_error(db: sqlite_utils.Database, sha256: str, error: str, retry_in_seconds: float) -> None:
    """A failed lookup (timeout, 429, 5xx...): nothing about the model changes; it is due again later."""
    with write_transaction(db):
        _record(db, sha256, "error", iso(utc_now() + timedelta(seconds=retry_in_seconds)), error=error[:1000])


def attempts(db: sqlite_utils.Database, sha256: str) -> int:
    row = db.conn.execute("SELECT attempts FROM civitai_lookups WHERE sha256 = ?", [sha256]).fetchone()
    return (row[0] or 0) if row else 0


def record_preview_if_due(db: sqlite_utils.Database, sha256: str, url: str, status: str, **details: Any) -> bool:
    """Record the attempt only while the model still waits for this image: no preview row came meanwhile (a node's
    own wins) and its Civitai image is still `url` (a rejected match has none). False: nothing written."""
    with write_transaction(db):
        if db.conn.execute("""SELECT 1 FROM models m WHERE m.hash_sha256 = ? AND m.civitai_image_url = ?
                              AND NOT EXISTS (SELECT 1 FROM model_previews p WHERE p.sha256 = m.hash_sha256)""",
                           [sha256, url]).fetchone() is None:
            return False
        db.conn.execute(
            """INSERT OR REPLACE INTO model_previews (sha256, status, source_url, content_type, width, height, bytes, checked_at, error)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [sha256, status, url, details.get("content_type"), details.get("width"), details.get("height"),
             details.get("bytes"), iso(utc_now()), details.get("error")],
        )
    return True
