"""Inventory sync and heartbeat: a node's snapshot applied in one transaction, and what the registry can tell it back.

The SHA256 of the last applied inventory body is kept per node: an identical re-send (the common case: a node
pushing on a timer) is answered from the registry without parsing or applying it again. Anything else that
changes a node's rows (availability marks, reset) clears that digest.

Both may carry the URL peers fetch the node's files from (`files_url`), and both may make the node a source for
transfers waiting on one (`sources_may_have_appeared`: the caller wakes the long-polls).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Iterable

import sqlite_utils

from modelsync.shared.catalog import write_transaction
from modelsync.shared.inventory import MAX_WARNINGS, Inventory, InventoryError
from modelsync.shared.inventory_apply import apply_inventory
from modelsync.shared.records import METADATA_FIELDS

from .node_previews import drop_vanished, previews_wanted
from .previews import PreviewStore
from .queries import Liveness, preview_url
from .registry import iso, utc_now
from .transfers import clear_exclusions_after_sync, set_files_url

log = logging.getLogger(__name__)


@dataclass
class FileFacts:
    """What the enriched answer needs to know of one listed file."""

    sha256: str | None
    known_fields: set[str]
    has_preview: bool


def _optional_text(body: dict[str, Any], name: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InventoryError(name, f"must be a string of at most {max_len} characters")
    return value


def record_heartbeat(db: sqlite_utils.Database, server_id: str, body: dict[str, Any]) -> dict[str, Any]:
    display_name = _optional_text(body, "display_name", 200)
    api_url = _optional_text(body, "api_url", 2048)
    now = iso(utc_now())
    with write_transaction(db):
        db.conn.execute(
            """UPDATE servers SET last_heartbeat = ?, display_name = COALESCE(?, display_name),
                                  api_url = COALESCE(?, api_url) WHERE id = ?""",
            [now, display_name, api_url, server_id],
        )
    return {"server_id": server_id, "last_heartbeat": now}


def was_online(db: sqlite_utils.Database, liveness: Liveness, server_id: str) -> bool:
    """Whether the node counted as online before this request (read before the request records its contact)."""
    row = db.conn.execute("SELECT last_sync, last_heartbeat FROM servers WHERE id = ?", [server_id]).fetchone()
    return row is not None and liveness.is_online(server_id, row[0], row[1])


def record_files_url(db: sqlite_utils.Database, server_id: str, body: dict[str, Any]) -> bool:
    """The node's `files_url`, when the body carries one (absent or null: as it was); True when it changed."""
    url = body.get("files_url")
    return url is not None and set_files_url(db, server_id, url)


def sources_may_have_appeared(db: sqlite_utils.Database, server_id: str, answer: dict[str, Any]) -> bool:
    """After a sync: end the node's source exclusions for files it hashed again; True when the sync added or changed
    files or ended exclusions (the node may now serve a model some transfer waits for)."""
    ended = clear_exclusions_after_sync(db, server_id)
    return bool(ended or answer["added"] or answer["updated"])


def forget_digest(db: sqlite_utils.Database, server_id: str) -> None:
    """The node's rows changed by other means: its next sync must be applied in full."""
    db.conn.execute("UPDATE servers SET inventory_digest = NULL WHERE id = ?", [server_id])


def last_digest(db: sqlite_utils.Database, server_id: str) -> str | None:
    row = db.conn.execute("SELECT inventory_digest FROM servers WHERE id = ?", [server_id]).fetchone()
    return row[0] if row else None


def _enriched(db: sqlite_utils.Database, server_id: str, files: Iterable[FileFacts]) -> dict[str, dict[str, Any]]:
    """Per SHA256: the registry's values of fields every one of the node's copies left null, and the preview
    the node may fetch when none of its copies has one."""
    lacking: dict[str, set[str]] = {}
    with_preview: set[str] = set()
    for f in files:
        if not f.sha256:
            continue
        missing = set(METADATA_FIELDS) - f.known_fields
        lacking[f.sha256] = lacking[f.sha256] & missing if f.sha256 in lacking else missing
        if f.has_preview:
            with_preview.add(f.sha256)
    if not lacking:
        return {}
    columns = ", ".join(f"m.[{c}]" for c in METADATA_FIELDS)
    cursor = db.conn.execute(
        f"""SELECT m.id, m.hash_sha256, m.field_sources, p.status, {columns}
            FROM (SELECT DISTINCT model_id FROM model_server_availability WHERE server_id = ? AND model_id IS NOT NULL) a
            JOIN models m ON m.id = a.model_id LEFT JOIN model_previews p ON p.sha256 = m.hash_sha256""",
        [server_id],
    )
    answer: dict[str, dict[str, Any]] = {}
    for model_id, sha256, field_sources, preview_status, *values in cursor:
        wanted = lacking.get(sha256)
        if wanted is None:
            continue
        fields = {k: v for k, v in zip(METADATA_FIELDS, values) if v is not None and k in wanted}
        wants_preview = preview_status == "stored" and sha256 not in with_preview
        if not fields and not wants_preview:
            continue
        for key in ("trained_words", "civitai_trained_words"):
            if isinstance(fields.get(key), str):
                fields[key] = json.loads(fields[key])
        sources = json.loads(field_sources) if field_sources else {}
        answer[sha256] = {
            "model_id": model_id,
            "metadata": fields,
            "field_sources": {k: sources[k] for k in fields if k in sources},
            "preview_url": preview_url(model_id) if wants_preview else None,
        }
    return answer


def _record_sync(db: sqlite_utils.Database, server_id: str, summary: dict[str, Any] | None, digest: str,
                 inventory: Inventory | None) -> str:
    now = iso(utc_now())
    with write_transaction(db):
        if inventory is None:  # an unchanged re-send: the last sync added, updated and removed nothing
            row = db.conn.execute("SELECT last_sync_summary FROM servers WHERE id = ?", [server_id]).fetchone()
            previous = json.loads(row[0]) if row and row[0] else {}
            db.conn.execute("UPDATE servers SET last_sync = ?, last_sync_summary = ? WHERE id = ?",
                            [now, json.dumps({**previous, **(summary or {})}), server_id])
        else:
            unavailable = [{"path": path, "reason": reason} for path, reason in sorted(inventory.unavailable.items())]
            db.conn.execute(
                """UPDATE servers SET last_sync = ?, last_sync_summary = ?, roots = ?, unavailable = ?, inventory_digest = ?,
                                      display_name = COALESCE(?, display_name), api_url = COALESCE(?, api_url)
                   WHERE id = ?""",
                [now, json.dumps(summary), json.dumps([{"path": r.path, "role": r.role} for r in inventory.roots]),
                 json.dumps(unavailable), digest, inventory.display_name, inventory.api_url, server_id],
            )
    return now


def sync_inventory(db: sqlite_utils.Database, inventory: Inventory, digest: str, previews: PreviewStore) -> dict[str, Any]:
    """Apply the snapshot and record the sync with the inventory's digest in ONE transaction: a crash between the
    two must not leave new files under an old digest (a re-send of the old inventory would then be answered
    "unchanged" and never applied)."""
    with write_transaction(db):
        applied = apply_inventory(db, inventory)
        files, models, unhashed = db.conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT model_id), SUM(model_id IS NULL) FROM model_server_availability WHERE server_id = ?",
            [inventory.server_id],
        ).fetchone()
        counts = {"added": applied.added, "updated": applied.updated, "removed": applied.removed, "unchanged": applied.unchanged}
        now = _record_sync(db, inventory.server_id, {**counts, "files": files, "models": models, "unhashed": unhashed or 0,
                                                     "unusable": applied.unusable}, digest, inventory)
        drop_vanished(db, inventory.server_id, previews)
    if applied.added or applied.updated or applied.removed:
        log.info("sync %s: %d added, %d updated, %d removed, %d unchanged", inventory.server_id, *counts.values())
    facts = (FileFacts(f.sha256, set(f.metadata), f.has_preview) for f in inventory.usable_files())
    warnings = [{"path": w.path, "field": w.field, "message": w.message} for w in inventory.warnings[:MAX_WARNINGS]]
    answer = {"server_id": inventory.server_id, **counts, "unusable": applied.unusable, "new_models": len(applied.new_models),
              "last_sync": now, "enriched": _enriched(db, inventory.server_id, facts), "warnings": warnings,
              "previews_wanted": previews_wanted(db, inventory.server_id)}
    if len(inventory.warnings) > MAX_WARNINGS:
        answer["warnings_omitted"] = len(inventory.warnings) - MAX_WARNINGS
    if warnings:
        log.warning("sync %s: %d values cut or dropped (first: %s %s: %s)", inventory.server_id, len(inventory.warnings),
                    warnings[0]["path"], warnings[0]["field"], warnings[0]["message"])
    return answer


def answer_unchanged(db: sqlite_utils.Database, server_id: str, body: dict[str, Any], digest: str) -> dict[str, Any]:
    """The same body as the last applied one (same digest, so it was validated then): nothing to apply."""
    files = [f for f in body["files"] if f.get("state", "ok") == "ok"]
    now = _record_sync(db, server_id, {"added": 0, "updated": 0, "removed": 0, "unchanged": len(files)}, digest, None)
    facts = (
        FileFacts((f.get("sha256") or "").lower() or None, {k for k, v in (f.get("metadata") or {}).items() if v is not None}, bool(f.get("has_preview")))
        for f in files
    )
    return {"server_id": server_id, "added": 0, "updated": 0, "removed": 0, "unchanged": len(files),
            "unusable": len(body["files"]) - len(files), "new_models": 0, "last_sync": now,
            "enriched": _enriched(db, server_id, facts), "warnings": [], "previews_wanted": previews_wanted(db, server_id)}


def forget_holders_digests(db: sqlite_utils.Database, model_id: int) -> None:
    """The next sync of every node holding the model is applied in full (an identical re-send normally is not), so
    fields emptied here are filled again from what the nodes report."""
    db.conn.execute(
        """UPDATE servers SET inventory_digest = NULL
           WHERE id IN (SELECT DISTINCT server_id FROM model_server_availability WHERE model_id = ?)""",
        [model_id],
    )
