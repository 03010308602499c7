"""Operator overrides of a model's metadata (the dashboard's manual corrections).

An override is stored in `models.overrides` and written into the field with source `manual`; every later merge
(a node's sync, the server's own scan, a Civitai answer) keeps it, because overrides always win. Clearing an
override empties the field; the next sync of a node holding the model (or the next Civitai answer) fills it again.
"""
from __future__ import annotations

from typing import Any

import sqlite_utils

from modelsync.shared.catalog import write_transaction
from modelsync.shared.scan.metadata_merge import merge
from modelsync.shared.records import BASES, MANUAL_SOURCE, METADATA_FIELDS, MODEL_TYPES

from .civitai_state import write_fields
from .errors import ApiError
from .queries import decode_json_columns, get_model
from .sync import forget_holders_digests

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


def apply_changes(db: sqlite_utils.Database, model_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Set or clear overrides in one transaction; returns the model's overrides afterwards."""
    with write_transaction(db):
        model = decode_json_columns(get_model(db, model_id))
        overrides: dict[str, Any] = dict(model.get("overrides") or {})
        sources: dict[str, str] = dict(model.get("field_sources") or {})
        existing = {name: model.get(name) for name in METADATA_FIELDS}
        for name, value in changes.items():
            if value is None:
                overrides.pop(name, None)
                if sources.get(name) == MANUAL_SOURCE:
                    existing[name] = None
                    sources.pop(name)
            else:
                overrides[name] = value
        merged = merge([], existing, sources, overrides)
        write_fields(db, model, merged.fields, merged.field_sources, overrides)
        if any(value is None for value in changes.values()):
            forget_holders_digests(db, model_id)
    return overrides
