"""Reading and writing `transfers` rows."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlite_utils

from ..errors import ApiError
from ..registry import MAX_ROW_ID, iso, utc_now
from ..webhooks.transfer_events import transfer_changed
from .records import ACTIVE_STATES, Transfer

STANDING_STATES = ACTIVE_STATES + ("failed",)  # at most one per (node, SHA256): the registry's unique index


def _literals(states: tuple[str, ...]) -> str:
    """States written into the SQL, not bound: SQLite uses a partial index only for a query whose terms it can
    match to the index's own WHERE."""
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


STANDING_SQL = f"SELECT * FROM transfers WHERE server_id = ? AND sha256 = ? AND state IN {_literals(STANDING_STATES)}"
ACTIVE_OF_SQL = f"SELECT * FROM transfers WHERE server_id = ? AND state IN {_literals(ACTIVE_STATES)} ORDER BY id"


def stamp(now: datetime | None) -> str:
    return iso(now or utc_now())


def _transfers(db: sqlite_utils.Database, sql: str, params: list[Any]) -> list[Transfer]:
    cursor = db.conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [Transfer(**dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def fetch(db: sqlite_utils.Database, transfer_id: int) -> Transfer:
    is_row_id = isinstance(transfer_id, int) and not isinstance(transfer_id, bool) and 1 <= transfer_id <= MAX_ROW_ID
    found = _transfers(db, "SELECT * FROM transfers WHERE id = ?", [transfer_id]) if is_row_id else []
    if not found:
        raise ApiError(404, f"no transfer {transfer_id!r}", "id")
    return found[0]


def standing(db: sqlite_utils.Database, server_id: str, sha256: str) -> Transfer | None:
    """The active or failed transfer of this SHA256 to this node, if there is one."""
    found = _transfers(db, STANDING_SQL, [server_id, sha256])
    return found[0] if found else None


def arrived(db: sqlite_utils.Database, server_id: str, sha256: str) -> Transfer | None:
    """The node's last done transfer of this SHA256 when it finished at or after the node's last sync: the file is
    there, the registry does not list it yet (ordering it again now would copy it twice)."""
    found = _transfers(db, """SELECT t.* FROM transfers t JOIN servers s ON s.id = t.server_id
                              WHERE t.server_id = ? AND t.sha256 = ? AND t.state = 'done'
                                AND t.finished_at >= COALESCE(s.last_sync, '')
                              ORDER BY t.id DESC LIMIT 1""", [server_id, sha256])
    return found[0] if found else None


def active_of(db: sqlite_utils.Database, server_id: str) -> list[Transfer]:
    return _transfers(db, ACTIVE_OF_SQL, [server_id])


def page(db: sqlite_utils.Database, where: str, params: list[Any], limit: int, offset: int) -> list[Transfer]:
    return _transfers(db, f"SELECT * FROM transfers WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset])


def update(db: sqlite_utils.Database, transfer: Transfer, changes: dict[str, Any], now: str) -> bool:
    """Write `changes` if the row is still in the state `transfer` was read in (a concurrent report or cancel wins
    otherwise); True when written."""
    values = {**changes, "updated_at": now}
    assignments = ", ".join(f"{column} = ?" for column in values)
    cursor = db.conn.execute(f"UPDATE transfers SET {assignments} WHERE id = ? AND state = ?",
                             [*values.values(), transfer.id, transfer.state])
    if cursor.rowcount == 1:
        transfer_changed(db, transfer, values)  # transfer.completed / transfer.failed into the webhook outbox
    return cursor.rowcount == 1


def server_exists(db: sqlite_utils.Database, server_id: str) -> bool:
    return db.conn.execute("SELECT 1 FROM servers WHERE id = ?", [server_id]).fetchone() is not None


def holds(db: sqlite_utils.Database, server_id: str, model_id: int) -> str | None:
    """The path of a usable copy of the model on the node (never a broken or unreachable file), if it has one."""
    row = db.conn.execute("SELECT path FROM model_server_availability WHERE server_id = ? AND model_id = ? ORDER BY path",
                          [server_id, model_id]).fetchone()
    return row[0] if row else None
