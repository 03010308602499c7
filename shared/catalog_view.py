"""What a node's catalog holds, as records people and scripts read: the files of one node (filtered), and everything
known of one file or model (every hash, each metadata field with its source, the problem, the other copies)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlite_utils

from .records import METADATA_FIELDS

_HEX = re.compile(r"^[0-9a-fA-F]+$")

# one row per file, usable or not: the availability rows ("ok") and the unusable ones, with the model's hashes
_FILES = """
    SELECT a.path, a.rel_name, a.role, 'ok' AS state, a.size, a.mtime_ns, a.content_type, a.content_base, a.problem,
           a.has_preview, a.model_id
    FROM model_server_availability a WHERE a.server_id = :server_id
    UNION ALL
    SELECT u.path, u.rel_name, u.role, u.state, u.size, u.mtime_ns, u.content_type, u.content_base, u.reason,
           u.has_preview, u.model_id
    FROM unusable_files u WHERE u.server_id = :server_id"""


@dataclass
class FileRecord:
    path: str
    rel_name: str
    role: str | None
    state: str  # ok | broken | unreachable
    size: int
    sha256: str | None
    autov2: str | None
    autov1: str | None
    autov3: str | None
    type: str | None  # what the content says
    base: str | None
    name: str | None
    metadata_source: str | None
    problem: str | None
    has_preview: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FileFilter:
    type: str | None = None
    base: str | None = None
    role: str | None = None
    text: str | None = None
    unhashed: bool = False
    duplicates: bool = False
    problems: bool = False


@dataclass
class FileDetail:
    record: FileRecord
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {value, source}
    copies: list[str] = field(default_factory=list)  # every path of this node holding the same content

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.to_dict(), "fields": self.fields, "copies": self.copies}


def _record(row: dict[str, Any]) -> FileRecord:
    sha256 = row["hash_sha256"]
    return FileRecord(
        path=row["path"], rel_name=row["rel_name"], role=row["role"], state=row["state"], size=row["size"],
        sha256=sha256, autov2=sha256[:10] if sha256 else None, autov1=row["hash_autov1"], autov3=row["hash_autov3"],
        type=row["content_type"], base=row["content_base"], name=row["name"], metadata_source=row["metadata_source"],
        problem=row["problem"], has_preview=bool(row["has_preview"]),
    )


def _select(where: str = "") -> str:
    return f"""SELECT f.*, m.hash_sha256, m.hash_autov1, m.hash_autov3, m.name, m.metadata_source
               FROM ({_FILES}) f LEFT JOIN models m ON m.id = f.model_id {where} ORDER BY f.path"""


def list_files(db: sqlite_utils.Database, server_id: str, filters: FileFilter | None = None) -> list[FileRecord]:
    f = filters or FileFilter()
    conditions: list[str] = []
    params: dict[str, Any] = {"server_id": server_id}
    for column, value in (("f.content_type", f.type), ("f.content_base", f.base), ("f.role", f.role)):
        if value:
            conditions.append(f"{column} = :{column[2:]}")
            params[column[2:]] = value
    if f.text:
        conditions.append("(f.rel_name LIKE :text ESCAPE '\\' OR m.name LIKE :text ESCAPE '\\')")
        params["text"] = "%" + f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    if f.unhashed:
        conditions.append("f.model_id IS NULL AND f.state = 'ok'")
    if f.problems:
        conditions.append("(f.state != 'ok' OR f.problem IS NOT NULL)")
    if f.duplicates:
        conditions.append("""f.state = 'ok' AND f.model_id IN (SELECT model_id FROM model_server_availability
                             WHERE server_id = :server_id AND model_id IS NOT NULL GROUP BY model_id HAVING COUNT(*) > 1)""")
    where = "WHERE " + " AND ".join(conditions) if conditions else ""
    return [_record(row) for row in db.query(_select(where), params)]


def find(db: sqlite_utils.Database, server_id: str, ref: str) -> list[FileDetail]:
    """The files a reference names: a path (as given or made absolute), a SHA256, an AutoV2 or AutoV1 hash."""
    params: dict[str, Any] = {"server_id": server_id}
    if _HEX.match(ref) and len(ref) in (64, 10, 8):
        column = {64: "m.hash_sha256", 10: "m.hash_autov2", 8: "m.hash_autov1"}[len(ref)]
        where, params["ref"] = f"WHERE {column} = :ref", ref.lower()
    else:
        where = "WHERE f.path IN (:ref, :absolute)"
        params.update(ref=ref, absolute=os.path.abspath(ref))
    return [_detail(db, server_id, row) for row in db.query(_select(where), params)]


def _detail(db: sqlite_utils.Database, server_id: str, row: dict[str, Any]) -> FileDetail:
    detail = FileDetail(_record(row))
    if row["model_id"] is None:
        return detail
    model = next(db.query("SELECT * FROM models WHERE id = ?", [row["model_id"]]))
    sources = json.loads(model["field_sources"]) if model["field_sources"] else {}
    for name in METADATA_FIELDS:
        value = model.get(name)
        if value is None:
            continue
        if name in ("trained_words", "civitai_trained_words") and isinstance(value, str):
            value = json.loads(value)
        detail.fields[name] = {"value": value, "source": sources.get(name)}
    detail.copies = [r["path"] for r in db.query(
        "SELECT path FROM model_server_availability WHERE server_id = ? AND model_id = ? ORDER BY path",
        [server_id, row["model_id"]])]
    return detail


def record_of(f: Any) -> FileRecord:
    """The record of an inventory file (what a scan found), without reading the catalog."""
    return FileRecord(
        path=f.path, rel_name=f.rel_name, role=f.role, state=f.state, size=f.size, sha256=f.sha256,
        autov2=f.sha256[:10] if f.sha256 else None, autov1=f.autov1, autov3=f.autov3, type=f.type, base=f.base,
        name=f.metadata.get("name"), metadata_source=f.metadata_source, problem=f.problem, has_preview=f.has_preview,
    )
