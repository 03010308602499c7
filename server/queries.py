"""Read-side queries of the registry, shaped as the API answers them."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import JSON_COLUMNS, placeholders, read_snapshot
from modelsync.shared.names import kind_of, local_name
from modelsync.shared.records import FILE_STATES, LORA_TYPES

from .errors import ApiError
from .registry import iso_ago

AVAILABILITY_FILTERS = ("available", "missing", "online", "offline")
UPDATE_FILTERS = ("available",)
# a model's Civitai update (server/civitai_updates.py): a newer version found for the version the model holds now
UPDATE_JOIN = """LEFT JOIN civitai_updates u ON u.model_id = m.id AND u.civitai_model_id = m.civitai_id
                   AND u.held_version_id = m.civitai_version_id AND u.version_id IS NOT NULL"""
UPDATE_COLUMNS = """u.version_id AS update_version_id, u.name AS update_name, u.published_at AS update_published_at,
                    u.download_url AS update_download_url"""
SORT_COLUMNS = {
    "name": "COALESCE(m.name, m.filename) COLLATE NOCASE",
    "type": "m.type",
    "base": "m.base",
    "size": "m.size",
    "created": "m.created_at",
    "updated": "m.updated_at",
    "last_used": "m.last_used",
    "id": "m.id",
}
MAX_PAGE_SIZE = 500
_HEX = re.compile(r"^[0-9a-fA-F]{4,64}$")


def preview_url(model_id: int) -> str:
    return f"/api/v1/models/{model_id}/preview"


@dataclass
class Liveness:
    """A node is online while it has synced or sent a heartbeat within offline_after seconds; the server's own
    node (MODEL_PATH) is online while the server runs."""

    offline_after_seconds: float
    own_server_id: str

    def cutoff(self) -> str:
        return iso_ago(self.offline_after_seconds)

    def is_online(self, server_id: str, last_sync: str | None, last_heartbeat: str | None, cutoff: str | None = None) -> bool:
        if server_id == self.own_server_id:
            return True
        last_contact = max(last_sync or "", last_heartbeat or "")
        return bool(last_contact) and last_contact >= (cutoff or self.cutoff())

    def online_ids(self, db: sqlite_utils.Database) -> list[str]:
        cutoff = self.cutoff()
        rows = db.conn.execute("SELECT id, last_sync, last_heartbeat FROM servers").fetchall()
        return [sid for sid, sync, beat in rows if self.is_online(sid, sync, beat, cutoff)]


def decode_json_columns(row: dict[str, Any]) -> dict[str, Any]:
    for col in JSON_COLUMNS | {"roots", "last_sync_summary", "unavailable"}:
        if isinstance(row.get(col), str):
            row[col] = json.loads(row[col])
    return row


def _rows(db: sqlite_utils.Database, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    cursor = db.conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


def model_update(row: dict[str, Any]) -> dict[str, Any] | None:
    """The `update` of a model read with UPDATE_JOIN / UPDATE_COLUMNS."""
    if row.get("update_version_id") is None:
        return None
    return {"version_id": row["update_version_id"], "name": row["update_name"],
            "published_at": row["update_published_at"], "download_url": row["update_download_url"]}


def model_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "filename": row["filename"],
        "type": row["type"],
        "base": row["base"],
        "sha256": row["hash_sha256"],
        "autov1": row["hash_autov1"],
        "autov2": row["hash_autov2"],
        "autov3": row["hash_autov3"],
        "size": row["size"],
        "metadata_source": row["metadata_source"],
        "civitai_id": row["civitai_id"],
        "civitai_version_id": row["civitai_version_id"],
        "civitai_model_name": row["civitai_model_name"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "last_used": row["last_used"],
        "overridden": sorted(json.loads(row["overrides"])) if row.get("overrides") else [],
        "node_count": row["node_count"],
        "online_node_count": row["online_node_count"],
        "preview_url": preview_url(row["id"]) if row["preview_stored"] else None,
        "update": model_update(row),
    }


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_models(db: sqlite_utils.Database, liveness: Liveness, params: dict[str, str]) -> dict[str, Any]:
    """GET /api/v1/models: filters type, base, text, server, availability; sort; limit/offset or page."""
    with read_snapshot(db):  # the total and the page from one state
        return _list_models(db, liveness, params)


def _list_models(db: sqlite_utils.Database, liveness: Liveness, params: dict[str, str]) -> dict[str, Any]:
    limit = int_param(params, "limit", 50, 1, MAX_PAGE_SIZE)
    page = int_param(params, "page", 0, 1, 10**9) if params.get("page") else None
    offset = (page - 1) * limit if page else int_param(params, "offset", 0, 0, 10**12)
    sort = params.get("sort") or "name"
    if sort not in SORT_COLUMNS:
        raise ApiError(400, f"sort must be one of {', '.join(SORT_COLUMNS)}", "sort")
    order = (params.get("order") or "asc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be asc or desc", "order")

    where: list[str] = []
    args: list[Any] = []
    for column in ("type", "base"):
        values = _split(params.get(column))
        if column == "type" and "lora" in values:  # a job's <lora:...> loads any LoRA variant
            values = sorted(set(values) | LORA_TYPES)
        if values:
            where.append(f"m.{column} IN ({placeholders(values)})")
            args.extend(values)
    text = (params.get("text") or params.get("q") or "").strip()
    if text:
        pattern = _like(text)
        clauses = ["m.name LIKE ? ESCAPE '\\'", "m.filename LIKE ? ESCAPE '\\'", "m.civitai_model_name LIKE ? ESCAPE '\\'"]
        args.extend([pattern, pattern, pattern])
        if _HEX.match(text):
            clauses += ["m.hash_sha256 LIKE ?", "m.hash_autov3 LIKE ?"]
            args.extend([text.lower() + "%"] * 2)
        where.append("(" + " OR ".join(clauses) + ")")
    server = params.get("server")
    if server:
        where.append("EXISTS (SELECT 1 FROM model_server_availability a WHERE a.model_id = m.id AND a.server_id = ?)")
        args.append(server)
    online = liveness.online_ids(db)
    availability = params.get("availability")
    if availability:
        if availability not in AVAILABILITY_FILTERS:
            raise ApiError(400, f"availability must be one of {', '.join(AVAILABILITY_FILTERS)}", "availability")
        any_copy = "EXISTS (SELECT 1 FROM model_server_availability a WHERE a.model_id = m.id)"
        online_copy = f"EXISTS (SELECT 1 FROM model_server_availability a WHERE a.model_id = m.id AND a.server_id IN ({placeholders(online)}))"
        if availability == "available":
            where.append(any_copy)
        elif availability == "missing":
            where.append("NOT " + any_copy)
        elif availability == "online":
            where.append(online_copy)
            args.extend(online)
        else:
            where.append(f"{any_copy} AND NOT {online_copy}")
            args.extend(online)
    update = params.get("update")
    if update:
        if update not in UPDATE_FILTERS:
            raise ApiError(400, f"update must be one of {', '.join(UPDATE_FILTERS)}", "update")
        where.append("""EXISTS (SELECT 1 FROM civitai_updates u WHERE u.model_id = m.id AND u.civitai_model_id = m.civitai_id
                          AND u.held_version_id = m.civitai_version_id AND u.version_id IS NOT NULL)""")
    where_sql = ("WHERE " + " AND ".join(where)) if where else ""

    total = db.conn.execute(f"SELECT COUNT(*) FROM models m {where_sql}", args).fetchone()[0]
    # the page's ids first (a sort over the filtered models alone), then the per-model counts for those rows only:
    # SQLite would otherwise compute them for every row it sorts, which a deep page of a large registry pays for
    ordering = f"{SORT_COLUMNS[sort]} {order.upper()}, m.id {order.upper()}"
    sql = f"""
        WITH page AS (SELECT m.id FROM models m {where_sql} ORDER BY {ordering} LIMIT ? OFFSET ?)
        SELECT m.*,
          (SELECT COUNT(DISTINCT a.server_id) FROM model_server_availability a WHERE a.model_id = m.id) AS node_count,
          (SELECT COUNT(DISTINCT a.server_id) FROM model_server_availability a
             WHERE a.model_id = m.id AND a.server_id IN ({placeholders(online)})) AS online_node_count,
          EXISTS (SELECT 1 FROM model_previews p WHERE p.sha256 = m.hash_sha256 AND p.status = 'stored') AS preview_stored,
          {UPDATE_COLUMNS}
        FROM page JOIN models m ON m.id = page.id {UPDATE_JOIN}
        ORDER BY {ordering}"""
    rows = _rows(db, sql, [*args, limit, offset, *online])
    return {
        "models": [model_summary(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        "page": offset // limit + 1,
        "pages": (total + limit - 1) // limit,
    }


def int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {text!r}", name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}", name)
    return value


def get_model(db: sqlite_utils.Database, model_id: int) -> dict[str, Any]:
    rows = _rows(db, "SELECT * FROM models WHERE id = ?", [model_id])
    if not rows:
        raise ApiError(404, f"no model with id {model_id}", "id")
    return rows[0]


def model_availability(db: sqlite_utils.Database, liveness: Liveness, model_id: int) -> dict[str, Any]:
    """The nodes that hold a model, each with its files, local name and last_seen (the hot path: two indexed reads)."""
    model = db.conn.execute("SELECT id, hash_sha256, type FROM models WHERE id = ?", [model_id]).fetchone()
    if model is None:
        raise ApiError(404, f"no model with id {model_id}", "id")
    rows = db.conn.execute(
        """SELECT a.server_id, a.path, a.rel_name, a.role, a.content_type, a.last_seen,
                  s.display_name, s.api_url, s.last_sync, s.last_heartbeat
           FROM model_server_availability a LEFT JOIN servers s ON s.id = a.server_id
           WHERE a.model_id = ? ORDER BY a.server_id, a.path""",
        [model_id],
    ).fetchall()
    cutoff = liveness.cutoff()
    nodes: dict[str, dict[str, Any]] = {}
    for server_id, path, rel_name, role, content_type, last_seen, display_name, api_url, last_sync, last_heartbeat in rows:
        name = local_name(rel_name, kind_of(role, content_type or model[2]))
        node = nodes.get(server_id)
        if node is None:
            node = nodes[server_id] = {
                "server_id": server_id,
                "display_name": display_name,
                "api_url": api_url,
                "online": liveness.is_online(server_id, last_sync, last_heartbeat, cutoff),
                "local_name": name,
                "last_seen": last_seen,
                "files": [],
            }
        node["last_seen"] = max(node["last_seen"] or "", last_seen or "") or None
        node["files"].append({"path": path, "rel_name": rel_name, "local_name": name, "last_seen": last_seen})
    servers = list(nodes.values())
    return {
        "model_id": model[0],
        "sha256": model[1],
        "available": bool(servers),
        "online": any(s["online"] for s in servers),
        "servers": servers,
    }


def model_info(db: sqlite_utils.Database, liveness: Liveness, model_id: int) -> dict[str, Any]:
    with read_snapshot(db):
        return _model_info(db, liveness, model_id)


def _model_info(db: sqlite_utils.Database, liveness: Liveness, model_id: int) -> dict[str, Any]:
    model = decode_json_columns(get_model(db, model_id))
    availability = model_availability(db, liveness, model_id)
    aliases = _rows(
        db,
        "SELECT server_id, kind, alias, local_name FROM model_aliases WHERE model_id = ? ORDER BY server_id, kind, alias",
        [model_id],
    )
    lookup = _rows(
        db,
        "SELECT status, checked_at, attempts, next_attempt_at, version_id, error FROM civitai_lookups WHERE sha256 = ?",
        [model["hash_sha256"]],
    )
    preview = _rows(db, "SELECT status, source_url, checked_at, error FROM model_previews WHERE sha256 = ?", [model["hash_sha256"]])
    rejected = _rows(db, "SELECT version_id, rejected_at FROM civitai_rejections WHERE sha256 = ? ORDER BY rejected_at",
                     [model["hash_sha256"]])
    update = _rows(db, f"SELECT {UPDATE_COLUMNS} FROM models m {UPDATE_JOIN} WHERE m.id = ?", [model_id])
    update_check = _rows(db, """SELECT checked_at, next_check_at, attempts, error FROM civitai_update_checks
                                WHERE civitai_model_id = ?""", [model["civitai_id"]])
    model["sha256"] = model["hash_sha256"]
    return {
        **model,
        "overrides": model.get("overrides") or {},
        "field_sources": model.get("field_sources") or {},
        "servers": availability["servers"],
        "available": availability["available"],
        "online": availability["online"],
        "aliases": aliases,
        "civitai_lookup": lookup[0] if lookup else None,
        "civitai_rejected": rejected,
        "preview": preview[0] if preview else None,
        "preview_url": preview_url(model_id) if preview and preview[0]["status"] == "stored" else None,
        "update": model_update(update[0]),
        "update_check": update_check[0] if update_check else None,
    }


def list_servers(db: sqlite_utils.Database, liveness: Liveness) -> list[dict[str, Any]]:
    cutoff = liveness.cutoff()
    rows = _rows(
        db,
        """SELECT s.id, s.display_name, s.api_url, s.roots, s.unavailable, s.created_at, s.last_sync, s.last_heartbeat,
                  s.last_sync_summary,
                  (SELECT COUNT(*) FROM model_server_availability a WHERE a.server_id = s.id) AS file_count,
                  (SELECT COUNT(DISTINCT a.model_id) FROM model_server_availability a WHERE a.server_id = s.id) AS model_count,
                  (SELECT COUNT(*) FROM model_server_availability a WHERE a.server_id = s.id AND a.model_id IS NULL)
                    AS unhashed_count,
                  (SELECT COUNT(*) FROM unusable_files u WHERE u.server_id = s.id AND u.state = 'broken') AS broken_count,
                  (SELECT COUNT(*) FROM unusable_files u WHERE u.server_id = s.id AND u.state = 'unreachable')
                    AS unreachable_count
           FROM servers s ORDER BY s.id""",
    )
    for row in rows:
        decode_json_columns(row)
        row["unavailable"] = row["unavailable"] or []
        row["online"] = liveness.is_online(row["id"], row["last_sync"], row["last_heartbeat"], cutoff)
        row["last_seen"] = max(row["last_sync"] or "", row["last_heartbeat"] or "") or None
    return rows


def server_files(db: sqlite_utils.Database, server_id: str, params: dict[str, str]) -> dict[str, Any]:
    """One node's files (GET /api/v1/servers/{id}/files), optionally only those not hashed yet, or its broken or
    unreachable files (`state=`)."""
    limit = int_param(params, "limit", 100, 1, MAX_PAGE_SIZE)
    offset = int_param(params, "offset", 0, 0, 10**12)
    state = params.get("state", "ok")
    if state not in FILE_STATES:
        raise ApiError(400, f"state must be one of {', '.join(FILE_STATES)}", "state")
    if state != "ok":
        return _unusable_files(db, server_id, state, limit, offset)
    where = "a.server_id = ?" + (" AND a.model_id IS NULL" if params.get("unhashed") in ("1", "true", "yes") else "")
    total = db.conn.execute(f"SELECT COUNT(*) FROM model_server_availability a WHERE {where}", [server_id]).fetchone()[0]
    files = _rows(
        db,
        f"""SELECT a.id, a.model_id, a.path, a.rel_name, a.role, a.size, a.mtime_ns, a.last_seen, a.has_preview,
                   a.content_type, a.content_base, a.problem
            FROM model_server_availability a WHERE {where} ORDER BY a.path LIMIT ? OFFSET ?""",
        [server_id, limit, offset],
    )
    return {"server_id": server_id, "files": files, "total": total, "limit": limit, "offset": offset}


def _unusable_files(db: sqlite_utils.Database, server_id: str, state: str, limit: int, offset: int) -> dict[str, Any]:
    total = db.conn.execute("SELECT COUNT(*) FROM unusable_files WHERE server_id = ? AND state = ?", [server_id, state]).fetchone()[0]
    files = _rows(
        db,
        """SELECT u.id, u.model_id, u.path, u.rel_name, u.role, u.size, u.mtime_ns, u.last_seen, u.state, u.reason, u.since,
                  m.hash_autov2
           FROM unusable_files u LEFT JOIN models m ON m.id = u.model_id
           WHERE u.server_id = ? AND u.state = ? ORDER BY u.path LIMIT ? OFFSET ?""",
        [server_id, state, limit, offset],
    )
    return {"server_id": server_id, "state": state, "files": files, "total": total, "limit": limit, "offset": offset}
