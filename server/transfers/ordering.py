"""Ordering transfers and managing them: order (idempotent), list, get, cancel, retry.

An order is refused when it cannot succeed: an unknown node or model, a node that holds the model already, a
requested source that does not hold it, no node holding it at all, or only nodes that sent wrong bytes of it. One
transfer per (node, SHA256) stands at a time: ordering it again returns the active one, or the failed one as it is
until someone retries it.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import read_snapshot, write_transaction

from ..errors import ApiError
from ..registry import MAX_ROW_ID
from . import store
from .params import node_id, sha256_hex
from .records import REQUESTERS, SOURCE_MODES, STATES, Transfer, TransferPage
from .sources import holders

MAX_PAGE_SIZE = 500


class NoPeer(ApiError):
    """No node can be a source of this model ("auto" then falls back to Civitai when it can)."""


def _model(db: sqlite_utils.Database, sha256: Any, model_id: Any) -> tuple[int, str, int | None, str]:
    """(id, SHA256, size, the field that named it) of the model the order names."""
    if (sha256 is None) == (model_id is None):
        raise ApiError(400, "name the model by sha256 or by model_id (one of them)", "sha256")
    if sha256 is not None:
        row = db.conn.execute("SELECT id, hash_sha256, size FROM models WHERE hash_sha256 = ?",
                              [sha256_hex(sha256, "sha256")]).fetchone()
        named = "sha256"
    else:
        if not isinstance(model_id, int) or isinstance(model_id, bool) or not 1 <= model_id <= MAX_ROW_ID:
            raise ApiError(400, "model_id must be a model's id (a positive integer)", "model_id")
        row = db.conn.execute("SELECT id, hash_sha256, size FROM models WHERE id = ?", [model_id]).fetchone()
        named = "model_id"
    if row is None:
        raise ApiError(404, f"the registry knows no model with this {named}", named)
    return row[0], row[1], row[2], named


def order_transfer(
    db: sqlite_utils.Database, *, server_id: Any, sha256: Any = None, model_id: Any = None, source: Any = "auto",
    from_server_id: Any = None, requested_by: str, now: datetime | None = None,
) -> tuple[Transfer, bool]:
    """Order a copy of the model from a peer to node `server_id`; (the transfer, True) when this call created it, (the
    standing one, False) when one is active or failed already. `source`: "auto" or "peer" (Civitai and URL orders:
    downloads.py, chosen by `transfers.requests`); `from_server_id`: the only node to copy from."""
    if requested_by not in REQUESTERS:
        raise ValueError(f"requested_by must be one of {', '.join(REQUESTERS)}")
    server_id = node_id(server_id, "server_id")
    if source not in SOURCE_MODES:
        raise ApiError(400, f"source must be one of {', '.join(SOURCE_MODES)}", "source")
    if source not in ("auto", "peer"):
        raise ValueError("order_transfer orders copies from peers")
    if from_server_id is not None:
        from_server_id = node_id(from_server_id, "from_server_id")
    stamped = store.stamp(now)
    with write_transaction(db):
        if not store.server_exists(db, server_id):
            raise ApiError(404, f"no node {server_id!r}", "server_id")
        model_id, sha256, size, named = _model(db, sha256, model_id)
        existing = store.standing(db, server_id, sha256)
        if existing is not None:
            return existing, False
        if store.holds(db, server_id, model_id):
            raise ApiError(409, f"node {server_id} already holds this model", named)
        found = holders(db, model_id, sha256, destination=server_id)
        if from_server_id is not None:
            if not store.server_exists(db, from_server_id):
                raise ApiError(404, f"no node {from_server_id!r}", "from_server_id")
            found = [h for h in found if h.server_id == from_server_id]
            if not found:
                raise NoPeer(409, f"node {from_server_id} holds no usable copy of this model", "from_server_id")
        if not found:
            raise NoPeer(409, "no node holds a usable copy of this model to copy from", named)
        chosen = next((h for h in found if not h.excluded), None)
        if chosen is None:
            raise NoPeer(409, "every node holding this model sent wrong bytes of it and has not hashed its file "
                                "again", "from_server_id" if from_server_id else named)
        cursor = db.conn.execute(
            """INSERT INTO transfers (server_id, sha256, model_id, state, source_kind, requested_source_id, size,
                                      rel_name, role, requested_by, created_at, updated_at)
               VALUES (?, ?, ?, 'queued', 'peer', ?, ?, ?, ?, ?, ?, ?)""",
            [server_id, sha256, model_id, from_server_id, size, chosen.rel_name, chosen.role, requested_by, stamped, stamped],
        )
        return store.fetch(db, cursor.lastrowid), True


def get_transfer(db: sqlite_utils.Database, transfer_id: int) -> Transfer:
    return store.fetch(db, transfer_id)


def list_transfers(db: sqlite_utils.Database, server_id: str | None = None, state: str | None = None,
                   limit: int = 50, offset: int = 0) -> TransferPage:
    """Newest first; `server_id` (the destination) and `state` filter."""
    if state is not None and state not in STATES:
        raise ApiError(400, f"state must be one of {', '.join(STATES)}", "state")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ApiError(400, f"limit must be between 1 and {MAX_PAGE_SIZE}", "limit")
    if not 0 <= offset <= MAX_ROW_ID:
        raise ApiError(400, "offset must not be negative", "offset")
    where, params = ["1 = 1"], []
    for column, value in (("server_id", server_id), ("state", state)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    condition = " AND ".join(where)
    with read_snapshot(db):
        total = db.conn.execute(f"SELECT COUNT(*) FROM transfers WHERE {condition}", params).fetchone()[0]
        return TransferPage(store.page(db, condition, params, limit, offset), total, limit, offset)


def cancel(db: sqlite_utils.Database, transfer_id: int, now: datetime | None = None) -> Transfer:
    """Active or failed -> cancelled (the node learns it from the answer to its next progress report and stops,
    keeping its temp file for a retry); cancelling a cancelled transfer changes nothing; a done one cannot be."""
    stamped = store.stamp(now)
    with write_transaction(db):
        transfer = store.fetch(db, transfer_id)
        if transfer.state == "cancelled":
            return transfer
        if transfer.state == "done":
            raise ApiError(409, f"transfer {transfer.id} is done; there is nothing to cancel", "id")
        store.update(db, transfer, {"state": "cancelled", "reason": "cancelled", "error": "cancelled by the operator",
                                    "reason_at": stamped, "finished_at": stamped, "speed_bps": None,
                                    "eta_seconds": None}, stamped)
        return store.fetch(db, transfer.id)


def retry(db: sqlite_utils.Database, transfer_id: int, now: datetime | None = None) -> Transfer:
    """Failed or cancelled -> queued, attempts and the failure cleared; exclusions of sources that sent wrong bytes
    stay (they end when the source hashes its file again)."""
    stamped = store.stamp(now)
    with write_transaction(db):
        transfer = store.fetch(db, transfer_id)
        if transfer.state not in ("failed", "cancelled"):
            raise ApiError(409, f"transfer {transfer.id} is {transfer.state}; only a failed or cancelled one is retried", "id")
        other = store.standing(db, transfer.server_id, transfer.sha256)
        if other is not None and other.id != transfer.id:
            raise ApiError(409, f"transfer {other.id} of this model to node {transfer.server_id} is {other.state}", "id")
        if transfer.model_id is not None and store.holds(db, transfer.server_id, transfer.model_id):
            raise ApiError(409, f"node {transfer.server_id} holds this model now", "id")
        store.update(db, transfer, {"state": "queued", "attempts": 0, "reason": None, "error": None, "reason_at": None,
                                    "finished_at": None, "bytes_done": 0, "speed_bps": None, "eta_seconds": None},
                     stamped)
        return store.fetch(db, transfer.id)
