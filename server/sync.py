"""Inventory sync and heartbeat: a node's snapshot applied in one transaction, and what the registry can tell it back."""
from __future__ import annotations

import json
import logging
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import write_transaction
from modelsync.shared.inventory import Inventory, InventoryError
from modelsync.shared.inventory_apply import ApplyResult, apply_inventory
from modelsync.shared.records import METADATA_FIELDS

from .queries import preview_url
from .registry import iso, utc_now

log = logging.getLogger(__name__)

_SQL_VARS = 500


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


def _enriched(db: sqlite_utils.Database, inventory: Inventory) -> dict[str, dict[str, Any]]:
    """Per SHA256: the registry's values of fields every one of the node's copies left null, and the preview
    the node may fetch when none of its copies has one."""
    lacking: dict[str, set[str]] = {}
    without_preview: set[str] = set()
    with_preview: set[str] = set()
    for f in inventory.files:
        if not f.sha256:
            continue
        missing = {name for name in METADATA_FIELDS if f.metadata.get(name) is None}
        lacking[f.sha256] = lacking[f.sha256] & missing if f.sha256 in lacking else missing
        (with_preview if f.has_preview else without_preview).add(f.sha256)
    if not lacking:
        return {}
    columns = ", ".join(f"m.[{c}]" for c in METADATA_FIELDS)
    answer: dict[str, dict[str, Any]] = {}
    hashes = sorted(lacking)
    for start in range(0, len(hashes), _SQL_VARS):
        chunk = hashes[start : start + _SQL_VARS]
        cursor = db.conn.execute(
            f"""SELECT m.id, m.hash_sha256, m.field_sources, p.status, {columns}
                FROM models m LEFT JOIN model_previews p ON p.sha256 = m.hash_sha256
                WHERE m.hash_sha256 IN ({','.join('?' * len(chunk))})""",
            chunk,
        )
        for model_id, sha256, field_sources, preview_status, *values in cursor:
            registry_values = dict(zip(METADATA_FIELDS, values))
            fields = {k: v for k, v in registry_values.items() if v is not None and k in lacking[sha256]}
            wants_preview = preview_status == "stored" and sha256 in without_preview and sha256 not in with_preview
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


def _summary(db: sqlite_utils.Database, server_id: str, applied: ApplyResult) -> dict[str, Any]:
    files, models, unhashed = db.conn.execute(
        """SELECT COUNT(*), COUNT(DISTINCT model_id), SUM(model_id IS NULL)
           FROM model_server_availability WHERE server_id = ?""",
        [server_id],
    ).fetchone()
    return {
        "added": applied.added,
        "updated": applied.updated,
        "removed": applied.removed,
        "unchanged": applied.unchanged,
        "files": files,
        "models": models,
        "unhashed": unhashed or 0,
    }


def sync_inventory(db: sqlite_utils.Database, inventory: Inventory) -> dict[str, Any]:
    """Apply the snapshot (one transaction, by the shared apply), then record the node's sync and answer."""
    applied = apply_inventory(db, inventory)
    summary = _summary(db, inventory.server_id, applied)
    now = iso(utc_now())
    with write_transaction(db):
        db.conn.execute(
            """UPDATE servers SET last_sync = ?, last_sync_summary = ?, roots = ?,
                                  display_name = COALESCE(?, display_name), api_url = COALESCE(?, api_url)
               WHERE id = ?""",
            [
                now,
                json.dumps(summary),
                json.dumps([{"path": r.path, "role": r.role} for r in inventory.roots]),
                inventory.display_name,
                inventory.api_url,
                inventory.server_id,
            ],
        )
    if applied.added or applied.updated or applied.removed:
        log.info(
            "sync %s: %d added, %d updated, %d removed, %d unchanged",
            inventory.server_id, applied.added, applied.updated, applied.removed, applied.unchanged,
        )
    return {
        "server_id": inventory.server_id,
        "added": applied.added,
        "updated": applied.updated,
        "removed": applied.removed,
        "unchanged": applied.unchanged,
        "new_models": len(applied.new_models),
        "last_sync": now,
        "enriched": _enriched(db, inventory),
    }
