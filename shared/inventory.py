"""The inventory a node sends to the central server: a full snapshot of its model files, versioned.

{"format": 1, "server_id": "gpu-01", "display_name": "...", "api_url": "http://10.0.0.5:7860",
 "roots": [{"role": "checkpoint", "path": "/models/Stable-diffusion"}],
 "files": [{"path": "...", "rel_name": "sub/x.safetensors", "role": "checkpoint", "size": 1, "mtime_ns": 1,
            "sha256": "...", "autov1": "...", "autov3": "...", "type": "checkpoint", "base": "sdxl",
            "metadata_source": "civitai_json", "metadata": {...}, "field_sources": {...},
            "has_embedded_metadata": true, "has_preview": false}]}
A file with "sha256": null is listed but not hashed yet. Since 2026-11 a file may carry "state": "broken" (its bytes
are not a whole model; "problem" says why) or "unreachable" (under a folder listed in "unavailable": [{"path",
"reason"}], kept with its hashes from the node's catalog); neither is ever matched by a job check. An inventory
without them (an older node) means every file is "ok".

Metadata values are bounded per field (FIELD_LIMITS): a longer value is cut with CUT_MARK and reported as a
warning naming the file and the field, so one huge description never refuses a node's whole inventory.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .records import FILE_STATES, METADATA_FIELDS, ROLES, Root

INVENTORY_FORMAT = 1
MAX_PATH_CHARS = 4096
MAX_WARNINGS = 100  # listed in an answer; the rest are counted
CUT_MARK = " …[cut by modelsync]"
_TEXT, _WORDS, _NUMBER, _INTEGER = "text", "words", "number", "integer"
# field -> (kind, limit): characters for text; for word lists (count, characters per word)
FIELD_LIMITS: dict[str, tuple[str, int | tuple[int, int]]] = {
    "name": (_TEXT, 512),
    "type": (_TEXT, 64),
    "base": (_TEXT, 64),
    "description": (_TEXT, 65536),
    "notes": (_TEXT, 65536),
    "activation_text": (_TEXT, 8192),
    "preferred_weight": (_NUMBER, 0),
    "negative_text": (_TEXT, 8192),
    "preferred_vae": (_TEXT, 512),
    "trained_words": (_WORDS, (500, 512)),
    "output_name": (_TEXT, 512),
    "author": (_TEXT, 512),
    "license": (_TEXT, 2048),
    "resolution": (_TEXT, 64),
    "civitai_id": (_INTEGER, 0),
    "civitai_version_id": (_INTEGER, 0),
    "civitai_model_name": (_TEXT, 512),
    "civitai_model_base": (_TEXT, 64),
    "civitai_model_type": (_TEXT, 64),
    "civitai_model_version_name": (_TEXT, 512),
    "civitai_model_version_desc": (_TEXT, 65536),
    "civitai_model_version_date": (_TEXT, 64),
    "civitai_download_url": (_TEXT, 2048),
    "civitai_trained_words": (_WORDS, (500, 512)),
    "civitai_file_size_kb": (_NUMBER, 0),
    "civitai_image_url": (_TEXT, 2048),
}
assert set(FIELD_LIMITS) == set(METADATA_FIELDS)
_MAX_SQL_INTEGER = 2**63 - 1
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_SERVER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class InventoryError(ValueError):
    """An inventory that cannot be applied; `field` names the offending part."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass
class InventoryFile:
    path: str
    rel_name: str
    role: str | None
    size: int
    mtime_ns: int
    sha256: str | None = None
    autov1: str | None = None
    autov3: str | None = None
    type: str | None = None
    base: str | None = None
    metadata_source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    field_sources: dict[str, str] = field(default_factory=dict)
    has_embedded_metadata: bool = False
    has_preview: bool = False
    problem: str | None = None  # why the file could not be fully read (still listed)
    embedded: dict[str, Any] | None = None  # raw header metadata: kept in the node's catalog, never sent
    state: str = "ok"  # one of FILE_STATES


@dataclass
class InventoryWarning:
    """A value the server cut or dropped instead of refusing the inventory."""

    path: str
    field: str
    message: str


@dataclass
class Inventory:
    server_id: str
    display_name: str | None = None
    api_url: str | None = None
    roots: list[Root] = field(default_factory=list)
    files: list[InventoryFile] = field(default_factory=list)
    format: int = INVENTORY_FORMAT
    unavailable: dict[str, str] = field(default_factory=dict)  # folder -> why its files could not be seen
    warnings: list[InventoryWarning] = field(default_factory=list)  # what parsing cut or dropped

    def usable_files(self) -> list[InventoryFile]:
        return [f for f in self.files if f.state == "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "server_id": self.server_id,
            "display_name": self.display_name,
            "api_url": self.api_url,
            "roots": [{"path": r.path, "role": r.role} for r in self.roots],
            "unavailable": [{"path": path, "reason": reason} for path, reason in sorted(self.unavailable.items())],
            "files": [{k: v for k, v in vars(f).items() if k != "embedded"} for f in self.files],
            "unhashed": sum(1 for f in self.files if f.sha256 is None and f.state == "ok"),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def valid_server_id(server_id: str) -> bool:
    return bool(_SERVER_ID.match(server_id or ""))


def _expect(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise InventoryError(field_name, message)


def _opt_str(value: Any, field_name: str, max_len: int = 4096) -> str | None:
    if value is None:
        return None
    _expect(isinstance(value, str), field_name, "must be a string")
    _expect(len(value) <= max_len, field_name, f"longer than {max_len} characters")
    return value


def _hash(value: Any, field_name: str, length: int | None = None) -> str | None:
    value = _opt_str(value, field_name, 64)
    if value is None:
        return None
    _expect(bool(_HEX.match(value)), field_name, "must be hexadecimal")
    _expect(length is None or len(value) == length, field_name, f"must be {length} hex digits")
    return value.lower()


def _int(value: Any, field_name: str) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0, field_name, "must be a non-negative integer")
    return value


def _bounded_text(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(CUT_MARK)] + CUT_MARK


def _bounded_value(name: str, value: Any) -> tuple[Any, str | None]:
    """The value within its field's limit (None: dropped), and what was done to it, if anything."""
    kind, limit = FIELD_LIMITS[name]
    if kind == _TEXT:
        assert isinstance(limit, int)
        if not isinstance(value, str):
            return None, f"dropped: a {type(value).__name__}, not text"
        return _bounded_text(value, limit), f"cut to {limit} characters (was {len(value)})" if len(value) > limit else None
    if kind == _WORDS:
        assert isinstance(limit, tuple)
        count, chars = limit
        if not isinstance(value, list):
            return None, f"dropped: a {type(value).__name__}, not a list of words"
        words = [w for w in value if isinstance(w, str)]
        kept = [_bounded_text(w, chars) for w in words[:count]]
        notes = []
        if len(words) < len(value):
            notes.append(f"{len(value) - len(words)} items that are not text dropped")
        if len(words) > count:
            notes.append(f"cut to {count} words (was {len(words)})")
        if any(len(w) > chars for w in words[:count]):
            notes.append(f"words cut to {chars} characters")
        return kept, "; ".join(notes) or None
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN is not a number
    if kind == _INTEGER and not (numeric and float(value).is_integer() and 0 <= value <= _MAX_SQL_INTEGER):
        return None, "dropped: not an integer id"
    if kind == _NUMBER and not (numeric and abs(value) < 1e300):
        return None, "dropped: not a number"
    return (int(value) if kind == _INTEGER else value), None


def _bounded_metadata(metadata: dict[str, Any], path: str, warnings: list[InventoryWarning]) -> dict[str, Any]:
    bounded: dict[str, Any] = {}
    for name, value in metadata.items():
        if name not in FIELD_LIMITS or value is None:
            continue
        kept, note = _bounded_value(name, value)
        if note:
            warnings.append(InventoryWarning(path, f"metadata.{name}", note))
        if kept is not None:
            bounded[name] = kept
    return bounded


def parse_file(data: Any, where: str, warnings: list[InventoryWarning] | None = None) -> InventoryFile:
    warnings = [] if warnings is None else warnings
    _expect(isinstance(data, dict), where, "must be an object")
    path = _opt_str(data.get("path"), f"{where}.path", MAX_PATH_CHARS)
    _expect(bool(path), f"{where}.path", "is required")
    role = _opt_str(data.get("role"), f"{where}.role", 32)
    _expect(role is None or role in ROLES, f"{where}.role", f"must be one of {', '.join(ROLES)}")
    state = data.get("state", "ok")
    _expect(state in FILE_STATES, f"{where}.state", f"must be one of {', '.join(FILE_STATES)}")
    metadata = data.get("metadata") or {}
    _expect(isinstance(metadata, dict), f"{where}.metadata", "must be an object")
    metadata = _bounded_metadata(metadata, path, warnings)
    field_sources = data.get("field_sources") or {}
    _expect(isinstance(field_sources, dict), f"{where}.field_sources", "must be an object")
    return InventoryFile(
        path=path,
        rel_name=_opt_str(data.get("rel_name"), f"{where}.rel_name", MAX_PATH_CHARS) or path,
        role=role,
        size=_int(data.get("size"), f"{where}.size"),
        mtime_ns=_int(data.get("mtime_ns", 0), f"{where}.mtime_ns"),
        sha256=_hash(data.get("sha256"), f"{where}.sha256", 64),
        autov1=_hash(data.get("autov1"), f"{where}.autov1", 8),
        autov3=_hash(data.get("autov3"), f"{where}.autov3"),
        type=_opt_str(data.get("type"), f"{where}.type", 32),
        base=_opt_str(data.get("base"), f"{where}.base", 32),
        metadata_source=_opt_str(data.get("metadata_source"), f"{where}.metadata_source", 32),
        metadata=metadata,
        field_sources={str(k): str(v)[:32] for k, v in field_sources.items() if k in METADATA_FIELDS},
        has_embedded_metadata=bool(data.get("has_embedded_metadata")),
        has_preview=bool(data.get("has_preview")),
        problem=_opt_str(data.get("problem"), f"{where}.problem"),
        state=state,
    )


def parse_inventory(data: Any, max_files: int = 200_000) -> Inventory:
    """Validate a decoded inventory; raises InventoryError naming the first bad field."""
    _expect(isinstance(data, dict), "body", "must be a JSON object")
    _expect(data.get("format") == INVENTORY_FORMAT, "format", f"must be {INVENTORY_FORMAT}")
    server_id = data.get("server_id")
    _expect(isinstance(server_id, str) and valid_server_id(server_id), "server_id", "must be 1-64 of A-Z a-z 0-9 . _ -")
    roots_data = data.get("roots") or []
    _expect(isinstance(roots_data, list), "roots", "must be a list")
    roots = []
    for i, r in enumerate(roots_data):
        _expect(isinstance(r, dict), f"roots[{i}]", "must be an object")
        roots.append(Root(path=_opt_str(r.get("path"), f"roots[{i}].path") or "", role=_opt_str(r.get("role"), f"roots[{i}].role", 32)))
    unavailable_data = data.get("unavailable") or []
    _expect(isinstance(unavailable_data, list) and len(unavailable_data) <= max_files, "unavailable",
            f"must be a list of at most {max_files} folders")
    unavailable = {}
    for i, u in enumerate(unavailable_data):
        _expect(isinstance(u, dict), f"unavailable[{i}]", "must be an object")
        folder = _opt_str(u.get("path"), f"unavailable[{i}].path", MAX_PATH_CHARS)
        _expect(bool(folder), f"unavailable[{i}].path", "is required")
        unavailable[folder] = _opt_str(u.get("reason"), f"unavailable[{i}].reason") or "unavailable"
    files_data = data.get("files")
    _expect(isinstance(files_data, list), "files", "must be a list")
    _expect(len(files_data) <= max_files, "files", f"has {len(files_data)} entries; the limit is {max_files}")
    warnings: list[InventoryWarning] = []
    files = [parse_file(f, f"files[{i}]", warnings) for i, f in enumerate(files_data)]
    seen: set[str] = set()
    for i, f in enumerate(files):
        _expect(f.path not in seen, f"files[{i}].path", "is listed twice")
        seen.add(f.path)
    return Inventory(
        server_id=server_id,
        display_name=_opt_str(data.get("display_name"), "display_name", 200),
        api_url=_opt_str(data.get("api_url"), "api_url", 2048),
        roots=roots,
        files=files,
        unavailable=unavailable,
        warnings=warnings,
    )


def build_inventory(
    db: Any, server_id: str, roots: list[Root], display_name: str | None = None, api_url: str | None = None
) -> Inventory:
    """The inventory a node's catalog holds for itself now (what its last scan found), ready to push."""
    sql = """
        SELECT m.*, a.path, a.rel_name, a.role, a.size, a.mtime_ns, a.content_type, a.content_base,
               a.has_preview, a.problem
        FROM model_server_availability a LEFT JOIN models m ON m.id = a.model_id
        WHERE a.server_id = ? ORDER BY a.path"""
    files = []
    for row in db.query(sql, [server_id]):
        metadata = {k: row[k] for k in METADATA_FIELDS if row.get(k) is not None}
        for key in ("trained_words", "civitai_trained_words"):
            if isinstance(metadata.get(key), str):
                metadata[key] = json.loads(metadata[key])
        files.append(
            InventoryFile(
                path=row["path"],
                rel_name=row["rel_name"],
                role=row["role"],
                size=row["size"],
                mtime_ns=row["mtime_ns"],
                sha256=row["hash_sha256"],
                autov1=row["hash_autov1"],
                autov3=row["hash_autov3"],
                type=row["content_type"],
                base=row["content_base"],
                metadata_source=row["metadata_source"],
                metadata=metadata,
                field_sources=json.loads(row["field_sources"]) if row["field_sources"] else {},
                has_embedded_metadata=bool(row["has_embedded_metadata"]),
                has_preview=bool(row["has_preview"]),
                problem=row["problem"],
            )
        )
    held = """
        SELECT a.*, m.hash_sha256, m.hash_autov1, m.hash_autov3 FROM unusable_files a LEFT JOIN models m ON m.id = a.model_id
        WHERE a.server_id = ? ORDER BY a.path"""
    for row in db.query(held, [server_id]):
        files.append(
            InventoryFile(
                path=row["path"], rel_name=row["rel_name"], role=row["role"], size=row["size"], mtime_ns=row["mtime_ns"],
                sha256=row["hash_sha256"], autov1=row["hash_autov1"], autov3=row["hash_autov3"],
                type=row["content_type"], base=row["content_base"], has_preview=bool(row["has_preview"]),
                problem=row["reason"], state=row["state"],
                embedded=json.loads(row["embedded"]) if row["embedded"] is not None else None,
            )
        )
    return Inventory(server_id=server_id, display_name=display_name, api_url=api_url, roots=list(roots), files=files)
