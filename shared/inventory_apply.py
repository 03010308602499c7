"""Apply one server's full inventory snapshot to a catalog, in one transaction.

The same function serves a node's own scan (its catalog) and the central server's sync (the registry):
models are upserted by SHA256 with a null-only metadata merge, availability rows are added, changed or
removed for that server only, and its aliases follow. Re-applying an unchanged snapshot writes nothing.
A file's Civitai fields naming a version the operator rejected for its model (`civitai_rejections`) are ignored.
Counts are per file: added = paths new to this server, updated = known paths whose content, attributes
or model metadata changed, removed = paths no longer listed.
Files listed as "broken" or "unreachable" go to `unusable_files` instead: they create no model, no alias and no
availability row, and leave no trace in the metadata; an unreachable file keeps the model_id its content had.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from .catalog import chunks, placeholders, utc_now, write_transaction
from .inventory import Inventory, InventoryFile
from .names import aliases, kind_of, local_name
from .records import METADATA_FIELDS
from .scan.metadata_merge import contributions_from_flat, given_by_civitai, merge

_AVAILABILITY_ATTRS = (
    "model_id",
    "rel_name",
    "role",
    "size",
    "mtime_ns",
    "has_preview",
    "content_type",
    "content_base",
    "embedded",
    "problem",
)
_MODEL_HASH_COLUMNS = ("hash_autov1", "hash_autov3", "size", "filename", "forge_format")


@dataclass
class ApplyResult:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    unusable: int = 0  # files listed as broken or unreachable
    model_ids: dict[str, int | None] = field(default_factory=dict)
    changed_models: set[int] = field(default_factory=set)
    new_models: set[int] = field(default_factory=set)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _decode_model_row(row: dict[str, Any]) -> dict[str, Any]:
    for col in ("trained_words", "civitai_trained_words", "field_sources", "overrides"):
        if isinstance(row.get(col), str):
            row[col] = json.loads(row[col])
    return row


def _forge_format(rel_name: str) -> str:
    ext = posixpath.splitext(rel_name)[1].lower().lstrip(".")
    return {"sft": "safetensors", "pt": "pickle", "pth": "pickle", "ckpt": "pickle"}.get(ext, ext)


def _load_models(db: sqlite_utils.Database, sha256s: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunks(sha256s):
        for row in db.query(f"SELECT * FROM models WHERE hash_sha256 IN ({placeholders(chunk)})", chunk):
            found[row["hash_sha256"]] = _decode_model_row(row)
    return found


def load_rejections(db: sqlite_utils.Database, sha256s: list[str]) -> dict[str, set[int]]:
    """SHA256 -> the Civitai versions an operator rejected for that model."""
    rejected: dict[str, set[int]] = {}
    for chunk in chunks(sha256s):
        for sha256, version_id in db.conn.execute(
            f"SELECT sha256, version_id FROM civitai_rejections WHERE sha256 IN ({placeholders(chunk)})", chunk
        ):
            rejected.setdefault(sha256, set()).add(version_id)
    return rejected


def _without_rejected_match(fields: dict[str, Any], sources: dict[str, str], rejected: set[int]) -> dict[str, Any]:
    """The fields less those a rejected Civitai match gave (its Civitai columns and whatever a Civitai source filled)."""
    if fields.get("civitai_version_id") not in rejected:
        return fields
    return {k: v for k, v in fields.items() if not given_by_civitai(k, sources.get(k))}


def _file_fields(f: InventoryFile, rejected: set[int]) -> dict[str, Any]:
    fields = {k: v for k, v in f.metadata.items() if k in METADATA_FIELDS and v is not None}
    return _without_rejected_match(fields, f.field_sources, rejected)


def _merge_file_into_model(model: dict[str, Any], f: InventoryFile, rejected: set[int]) -> set[str]:
    """Fill the model's null fields from one file's metadata and hashes; returns the changed columns."""
    changed: set[str] = set()
    result = merge(
        contributions_from_flat(_file_fields(f, rejected), f.field_sources),
        existing={k: model.get(k) for k in METADATA_FIELDS},
        existing_sources=model.get("field_sources") or {},
        overrides=model.get("overrides") or {},
    )
    for name in result.changed:
        model[name] = result.fields.get(name)
        changed.add(name)
    if result.field_sources != (model.get("field_sources") or {}):
        model["field_sources"] = result.field_sources
        changed.add("field_sources")
    if result.metadata_source != model.get("metadata_source"):
        model["metadata_source"] = result.metadata_source
        changed.add("metadata_source")
    offered = {
        "hash_autov1": f.autov1,
        "hash_autov3": f.autov3,
        "size": f.size,
        "filename": posixpath.basename(f.rel_name.replace("\\", "/")),
        "forge_format": _forge_format(f.rel_name),
        "has_embedded_metadata": 1 if f.has_embedded_metadata else None,
    }
    for col, value in offered.items():
        if model.get(col) is None and value is not None:
            model[col] = value
            changed.add(col)
    return changed


def _model_row_for_db(model: dict[str, Any]) -> dict[str, Any]:
    row = dict(model)
    for col in ("trained_words", "civitai_trained_words", "field_sources", "overrides"):
        if col in row and not isinstance(row[col], (str, type(None))):
            row[col] = _json_or_none(row[col])
    return row


def _availability_row(f: InventoryFile, model_id: int | None) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "rel_name": f.rel_name,
        "role": f.role,
        "size": f.size,
        "mtime_ns": f.mtime_ns,
        "has_preview": 1 if f.has_preview else 0,
        "content_type": f.type,
        "content_base": f.base,
        "embedded": _json_or_none(f.embedded),
        "problem": f.problem,
    }


def _desired_aliases(
    files: list[InventoryFile], model_ids: dict[str, int | None], models_by_id: dict[int, dict[str, Any]]
) -> dict[tuple[int, str, str], str]:
    """(model_id, kind, alias) -> local name, for every hashed file; the first file (by path) names a clash."""
    desired: dict[tuple[int, str, str], str] = {}
    for f in sorted(files, key=lambda x: x.path):
        model_id = model_ids.get(f.path)
        if model_id is None:
            continue
        model = models_by_id[model_id]
        kind = kind_of(f.role, f.type or model.get("type"))
        name = local_name(f.rel_name, kind)
        output_name = f.metadata.get("output_name") or model.get("output_name")
        for alias_kind, alias in aliases(f.rel_name, kind, output_name):
            desired.setdefault((model_id, alias_kind, alias), name)
    return desired


def apply_inventory(db: sqlite_utils.Database, inventory: Inventory, *, now: str | None = None) -> ApplyResult:
    now = now or utc_now()
    server_id = inventory.server_id
    result = ApplyResult()
    conn = db.conn
    with write_transaction(db):
        existing_rows = {
            row["path"]: row
            for row in db.query("SELECT * FROM model_server_availability WHERE server_id = ?", [server_id])
        }
        usable = inventory.usable_files()
        sha256s = sorted({f.sha256 for f in inventory.files if f.sha256})
        models = _load_models(db, sha256s)
        rejections = load_rejections(db, sha256s)

        new_model_rows: list[dict[str, Any]] = []
        changed_model_cols: dict[str, set[str]] = {}
        for f in usable:
            if not f.sha256:
                continue
            model = models.get(f.sha256)
            if model is None:
                model = {"hash_sha256": f.sha256, "hash_autov2": f.sha256[:10], "created_at": now, "updated_at": now}
                models[f.sha256] = model
                new_model_rows.append(model)
            cols = _merge_file_into_model(model, f, rejections.get(f.sha256, set()))
            if cols and "id" in model:
                changed_model_cols.setdefault(f.sha256, set()).update(cols)

        if new_model_rows:
            db["models"].insert_all([_model_row_for_db(m) for m in new_model_rows], batch_size=500)
            for model in _load_models(db, [m["hash_sha256"] for m in new_model_rows]).values():
                models[model["hash_sha256"]]["id"] = model["id"]
                result.new_models.add(model["id"])
        for sha, cols in changed_model_cols.items():
            model = models[sha]
            model["updated_at"] = now
            row = _model_row_for_db({c: model.get(c) for c in cols | {"updated_at"}})
            assignments = ", ".join(f"[{c}] = ?" for c in row)
            conn.execute(f"UPDATE models SET {assignments} WHERE id = ?", [*row.values(), model["id"]])
            result.changed_models.add(model["id"])

        inserts: list[dict[str, Any]] = []
        updates: list[tuple[dict[str, Any], int]] = []
        listed: set[str] = set()
        for f in usable:
            listed.add(f.path)
            model_id = models[f.sha256]["id"] if f.sha256 else None
            result.model_ids[f.path] = model_id
            wanted = _availability_row(f, model_id)
            old = existing_rows.get(f.path)
            if old is None:
                inserts.append({"server_id": server_id, "path": f.path, "last_seen": now, **wanted})
                result.added += 1
                continue
            diff = {k: v for k, v in wanted.items() if old.get(k) != v}
            if diff:
                updates.append(({**diff, "last_seen": now}, old["id"]))
            if diff or model_id in result.changed_models:
                result.updated += 1
            else:
                result.unchanged += 1
        if inserts:
            db["model_server_availability"].insert_all(inserts, batch_size=500)
        for diff, row_id in updates:
            assignments = ", ".join(f"[{c}] = ?" for c in diff)
            conn.execute(f"UPDATE model_server_availability SET {assignments} WHERE id = ?", [*diff.values(), row_id])
        gone = [row["id"] for path, row in existing_rows.items() if path not in listed]
        for chunk in chunks(gone):
            conn.execute(f"DELETE FROM model_server_availability WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        held, dropped = _apply_unusable(db, server_id, [f for f in inventory.files if f.state != "ok"], models, now)
        result.unusable = len(held)
        result.removed = sum(1 for path in existing_rows if path not in listed and path not in held)
        result.removed += sum(1 for path in dropped if path not in listed)

        models_by_id = {m["id"]: m for m in models.values()}
        desired = _desired_aliases(usable, result.model_ids, models_by_id)
        current = {
            (row["model_id"], row["kind"], row["alias"]): (row["id"], row["local_name"])
            for row in db.query("SELECT id, model_id, kind, alias, local_name FROM model_aliases WHERE server_id = ?", [server_id])
        }
        stale = [row_id for key, (row_id, name) in current.items() if desired.get(key) != name]
        for chunk in chunks(stale):
            conn.execute(f"DELETE FROM model_aliases WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        fresh = [
            {"model_id": key[0], "server_id": server_id, "kind": key[1], "alias": key[2], "local_name": name}
            for key, name in desired.items()
            if current.get(key, (None, None))[1] != name
        ]
        if fresh:
            db["model_aliases"].insert_all(fresh, batch_size=500)
    return result


def _apply_unusable(
    db: sqlite_utils.Database, server_id: str, files: list[InventoryFile], models: dict[str, dict[str, Any]], now: str
) -> tuple[set[str], set[str]]:
    """The server's broken and unreachable files become exactly `files`; `since` stays while a file keeps its state.
    Returns their paths, and the paths no longer held."""
    existing = {row["path"]: row for row in db.query("SELECT * FROM unusable_files WHERE server_id = ?", [server_id])}
    wanted: dict[str, dict[str, Any]] = {}
    for f in files:
        model = models.get(f.sha256) if f.sha256 else None
        row = _availability_row(f, model.get("id") if model else None)
        del row["problem"]
        wanted[f.path] = {**row, "state": f.state, "reason": f.problem or f.state}
    inserts = []
    for path, row in wanted.items():
        old = existing.get(path)
        if old is None:
            inserts.append({"server_id": server_id, "path": path, "since": now, "last_seen": now, **row})
            continue
        diff = {k: v for k, v in row.items() if old.get(k) != v}
        if diff:
            if "state" in diff:
                diff["since"] = now
            assignments = ", ".join(f"[{c}] = ?" for c in diff)
            db.conn.execute(f"UPDATE unusable_files SET {assignments}, last_seen = ? WHERE id = ?", [*diff.values(), now, old["id"]])
    if inserts:
        db["unusable_files"].insert_all(inserts, batch_size=500)
    gone = {path: row["id"] for path, row in existing.items() if path not in wanted}
    for chunk in chunks(list(gone.values())):
        db.conn.execute(f"DELETE FROM unusable_files WHERE id IN ({placeholders(chunk)})", chunk)
    return set(wanted), set(gone)
