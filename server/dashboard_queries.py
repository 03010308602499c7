"""Read-side queries only the dashboard needs: who holds a page of models, the models x nodes matrix, the overrides,
the transfers with their models' names and where a model may be copied to.

Every query is bounded by a page: the registry may hold 50,000 models on 100 nodes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import placeholders, read_snapshot
from modelsync.shared.records import LORA_TYPES, MODEL_TYPES

from . import transfers
from .errors import ApiError
from .insight.node_state import read_states
from .queries import Liveness, list_servers

MATRIX_PAGE_SIZE = 50


@dataclass
class MatrixRow:
    model_id: int
    label: str
    autov2: str  # tells apart models of the same name (nodes holding different files under one name)
    held_by: set[str]


@dataclass
class Matrix:
    type: str
    incomplete_only: bool
    nodes: list[dict[str, Any]]
    rows: list[MatrixRow] = field(default_factory=list)
    total: int = 0
    page: int = 1
    pages: int = 0


def node_choices(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return [{"id": sid} for (sid,) in db.conn.execute("SELECT id FROM servers ORDER BY id")]


def holders(db: sqlite_utils.Database, model_ids: list[int]) -> dict[int, list[str]]:
    """model id -> the nodes listing a copy of it, by node id."""
    found: dict[int, list[str]] = {model_id: [] for model_id in model_ids}
    if model_ids:
        for model_id, server_id in db.conn.execute(
            f"""SELECT DISTINCT model_id, server_id FROM model_server_availability WHERE model_id IN ({placeholders(model_ids)})
                ORDER BY server_id""",
            model_ids,
        ):
            found[model_id].append(server_id)
    return found


def _types(model_type: str) -> list[str]:
    if model_type not in MODEL_TYPES:
        raise ApiError(400, f"type must be one of {', '.join(MODEL_TYPES)}", "type")
    return sorted(LORA_TYPES) if model_type == "lora" else [model_type]


def matrix(db: sqlite_utils.Database, liveness: Liveness, model_type: str, page: int, incomplete_only: bool) -> Matrix:
    """One page of the models of a type (a LoRA page holds every LoRA variant) against every node."""
    types = _types(model_type)
    nodes = list_servers(db, liveness)
    states = read_states(db)
    for node in nodes:  # what each node last reported (loaded checkpoint, busy, free disk); None: nothing yet
        node["state"] = states.get(node["id"])
    result = Matrix(model_type, incomplete_only, nodes, page=max(page, 1))
    where = f"m.type IN ({placeholders(types)})"
    args: list[Any] = list(types)
    if incomplete_only:
        where += " AND (SELECT COUNT(DISTINCT a.server_id) FROM model_server_availability a WHERE a.model_id = m.id) < ?"
        args.append(len(nodes))
    result.total = db.conn.execute(f"SELECT COUNT(*) FROM models m WHERE {where}", args).fetchone()[0]
    result.pages = (result.total + MATRIX_PAGE_SIZE - 1) // MATRIX_PAGE_SIZE
    rows = db.conn.execute(
        f"""SELECT m.id, COALESCE(m.name, m.filename, m.hash_autov2) AS label, m.hash_autov2 FROM models m WHERE {where}
            ORDER BY label COLLATE NOCASE, m.id LIMIT ? OFFSET ?""",
        [*args, MATRIX_PAGE_SIZE, (result.page - 1) * MATRIX_PAGE_SIZE],
    ).fetchall()
    held = holders(db, [r[0] for r in rows])
    result.rows = [MatrixRow(model_id, label, autov2, set(held[model_id])) for model_id, label, autov2 in rows]
    return result


def overridden_models(db: sqlite_utils.Database, limit: int = 500) -> list[dict[str, Any]]:
    """Models with an operator override or a rejected Civitai match, most recently changed first."""
    cursor = db.conn.execute(
        """SELECT m.id, m.name, m.filename, m.type, m.base, m.overrides, m.updated_at,
                  (SELECT json_group_array(r.version_id) FROM civitai_rejections r WHERE r.sha256 = m.hash_sha256) AS rejected
           FROM models m
           WHERE (m.overrides IS NOT NULL AND m.overrides != '{}')
              OR m.hash_sha256 IN (SELECT sha256 FROM civitai_rejections)
           ORDER BY m.updated_at DESC, m.id LIMIT ?""",
        [limit],
    )
    names = [d[0] for d in cursor.description]
    models = []
    for values in cursor:
        row = dict(zip(names, values))
        row["overrides"] = json.loads(row["overrides"]) if row["overrides"] else {}
        row["rejected"] = json.loads(row["rejected"])
        models.append(row)
    return models



PAGE_SIZE = 100
UNUSABLE_STATES = ("broken", "unreachable")


@dataclass
class FilesPage:
    """One page of files across the nodes: their unusable files, or their files not hashed yet."""

    files: list[dict[str, Any]]
    total: int
    page: int
    pages: int


def _files_page(db: sqlite_utils.Database, source: str, columns: str, where: list[str], args: list[Any], order: str,
                page: int) -> FilesPage:
    where_sql = " AND ".join(where) or "1"
    total = db.conn.execute(f"SELECT COUNT(*) FROM {source} WHERE {where_sql}", args).fetchone()[0]
    cursor = db.conn.execute(f"SELECT {columns} FROM {source} WHERE {where_sql} ORDER BY {order} LIMIT ? OFFSET ?",
                             [*args, PAGE_SIZE, (page - 1) * PAGE_SIZE])
    names = [d[0] for d in cursor.description]
    return FilesPage([dict(zip(names, values)) for values in cursor], total, page, (total + PAGE_SIZE - 1) // PAGE_SIZE)


def unusable_files(db: sqlite_utils.Database, server: str | None, state: str | None, page: int) -> FilesPage:
    """The files no job may use (broken, or under a folder that cannot be read now), node by node; an unreachable
    file that was hashed keeps its model (and AutoV2)."""
    if state and state not in UNUSABLE_STATES:
        raise ApiError(400, f"state must be one of {', '.join(UNUSABLE_STATES)}", "state")
    where, args = [], []
    if server:
        where.append("u.server_id = ?")
        args.append(server)
    if state:
        where.append("u.state = ?")
        args.append(state)
    return _files_page(
        db, "unusable_files u LEFT JOIN models m ON m.id = u.model_id",
        "u.server_id, u.path, u.rel_name, u.role, u.size, u.state, u.reason, u.since, u.last_seen, u.model_id, m.hash_autov2",
        where, args, "u.server_id, u.state, u.path", page)


def unavailable_folders(db: sqlite_utils.Database, server: str | None) -> list[dict[str, Any]]:
    """Every node's folders that cannot be read now, each with its reason (servers.unavailable)."""
    sql = "SELECT id, unavailable FROM servers WHERE unavailable IS NOT NULL AND unavailable != '[]'"
    rows = db.conn.execute(sql + (" AND id = ?" if server else "") + " ORDER BY id", [server] if server else []).fetchall()
    return [{"server_id": server_id, **folder} for server_id, text in rows for folder in json.loads(text)]


def unhashed_files(db: sqlite_utils.Database, server: str | None, page: int) -> FilesPage:
    """Files a node listed without hashes: not models until hashed (model_id NULL)."""
    where, args = ["a.model_id IS NULL"], []
    if server:
        where.append("a.server_id = ?")
        args.append(server)
    return _files_page(db, "model_server_availability a",
                       "a.server_id, a.path, a.rel_name, a.role, a.size, a.content_type, a.content_base, a.last_seen",
                       where, args, "a.server_id, a.path", page)


def unhashed_count(db: sqlite_utils.Database, server: str | None) -> int:
    sql = "SELECT COUNT(*) FROM model_server_availability WHERE model_id IS NULL"
    return db.conn.execute(sql + (" AND server_id = ?" if server else ""), [server] if server else []).fetchone()[0]


TRANSFERS_PAGE_SIZE = 50


@dataclass
class TransfersPage:
    """One page of transfers as the API lists them (`GET /api/v1/transfers`), each with its model's label."""

    transfers: list[dict[str, Any]]  # the API's transfer, plus "model": {label, autov2} or None
    total: int
    page: int
    pages: int


def transfers_page(db: sqlite_utils.Database, server: str | None, state: str | None, page: int) -> TransfersPage:
    with read_snapshot(db):
        listed = transfers.list_transfers(db, server_id=server, state=state, limit=TRANSFERS_PAGE_SIZE,
                                          offset=(page - 1) * TRANSFERS_PAGE_SIZE)
        model_ids = sorted({t.model_id for t in listed.transfers if t.model_id is not None})
        labels = {
            model_id: {"label": label, "autov2": autov2}
            for model_id, label, autov2 in db.conn.execute(
                f"""SELECT id, COALESCE(name, filename, hash_autov2), hash_autov2 FROM models
                    WHERE id IN ({placeholders(model_ids)})""", model_ids)
        } if model_ids else {}
    rows = [{**t.to_dict(), "model": labels.get(t.model_id)} for t in listed.transfers]
    return TransfersPage(rows, listed.total, page, (listed.total + TRANSFERS_PAGE_SIZE - 1) // TRANSFERS_PAGE_SIZE)


def copy_targets(db: sqlite_utils.Database, liveness: Liveness, holders_of_model: set[str]) -> list[str]:
    """The online nodes a copy of a model may be ordered to: not holding it, and not the server's own node (it
    runs no agent to receive one)."""
    return sorted(set(liveness.online_ids(db)) - holders_of_model - {liveness.own_server_id})
