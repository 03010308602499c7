"""Operator overrides of a model's metadata (the dashboard's manual corrections).

An override is stored in `models.overrides` and written into the field with source `manual`; every later merge
(a node's sync, the server's own scan, a Civitai answer) keeps it, because overrides always win. Clearing an
override empties the field; the next sync of a node holding the model (or the next Civitai answer) fills it again.
"""
from __future__ import annotations

import json
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import write_transaction
from modelsync.shared.metadata_merge import merge
from modelsync.shared.records import BASES, MANUAL_SOURCE, METADATA_FIELDS, MODEL_TYPES

from .civitai_state import metadata_source
from .errors import ApiError
from .queries import get_model
from .registry import iso, utc_now

OVERRIDABLE = ("name", "type", "base", "trained_words")
MAX_NAME = 255
MAX_WORDS = 100
MAX_WORD = 200


def parse_changes(body: dict[str, Any]) -> dict[str, Any]:
    """{field: value} for fields to override, {field: None} for overrides to clear; a 400 names a bad field."""
    if not body:
        raise ApiError(400, f"nothing to change: send one or more of {', '.join(OVERRIDABLE)}", None)
    for name in body:
        if name not in OVERRIDABLE:
            raise ApiError(400, f"{name!r} cannot be overridden; the fields are {', '.join(OVERRIDABLE)}", name)
    return {name: None if value is None else _valid(name, value) for name, value in body.items()}


def _valid(name: str, value: Any) -> Any:
    if name == "name":
        if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_NAME:
            raise ApiError(400, f"name must be a non-empty string of at most {MAX_NAME} characters", name)
        return value.strip()
    if name in ("type", "base"):
        allowed = MODEL_TYPES if name == "type" else BASES
        if value not in allowed:
            raise ApiError(400, f"{name} must be one of {', '.join(allowed)}", name)
        return value
    if not isinstance(value, list) or len(value) > MAX_WORDS:
        raise ApiError(400, f"trained_words must be a list of at most {MAX_WORDS} strings", name)
    words = []
    for i, word in enumerate(value):
        if not isinstance(word, str) or not word.strip() or len(word.strip()) > MAX_WORD:
            raise ApiError(400, f"trained_words[{i}] must be a non-empty string of at most {MAX_WORD} characters", f"{name}[{i}]")
        if word.strip() not in words:
            words.append(word.strip())
    return words


def _decoded(value: str | None) -> Any:
    return json.loads(value) if value else None


def apply_changes(db: sqlite_utils.Database, model_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Set or clear overrides in one transaction; returns the model's overrides afterwards."""
    with write_transaction(db):
        model = get_model(db, model_id)
        overrides: dict[str, Any] = _decoded(model["overrides"]) or {}
        sources: dict[str, str] = _decoded(model["field_sources"]) or {}
        before = {name: _decoded(model[name]) if name == "trained_words" else model[name] for name in METADATA_FIELDS}
        existing = dict(before)
        for name, value in changes.items():
            if value is None:
                overrides.pop(name, None)
                if sources.get(name) == MANUAL_SOURCE:
                    existing[name] = None
                    sources.pop(name)
            else:
                overrides[name] = value
        merged = merge([], existing, sources, overrides)
        row: dict[str, Any] = {name: merged.fields.get(name) for name in METADATA_FIELDS if merged.fields.get(name) != before[name]}
        if row.get("trained_words") is not None:
            row["trained_words"] = json.dumps(row["trained_words"], ensure_ascii=False)
        row.update(
            overrides=json.dumps(overrides, sort_keys=True, ensure_ascii=False) if overrides else None,
            field_sources=json.dumps(merged.field_sources, sort_keys=True),
            metadata_source=metadata_source(merged.field_sources, merged.fields),
            updated_at=iso(utc_now()),
        )
        assignments = ", ".join(f"[{c}] = ?" for c in row)
        db.conn.execute(f"UPDATE models SET {assignments} WHERE id = ?", [*row.values(), model_id])
        if any(value is None for value in changes.values()):
            forget_holders_digests(db, model_id)
    return overrides


def forget_holders_digests(db: sqlite_utils.Database, model_id: int) -> None:
    """The next sync of every node holding the model is applied in full (an identical re-send normally is not), so
    fields emptied here are filled again from what the nodes report."""
    db.conn.execute(
        """UPDATE servers SET inventory_digest = NULL
           WHERE id IN (SELECT DISTINCT server_id FROM model_server_availability WHERE model_id = ?)""",
        [model_id],
    )
