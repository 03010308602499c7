"""transfer.completed and transfer.failed: emitted by the one writer of a transfer's state (transfers/store.update)
in its transaction, whoever finished the transfer (the node's report, the server finding no source)."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import sqlite_utils

from .events import emit

EVENTS = {"done": "transfer.completed", "failed": "transfer.failed"}


def transfer_changed(db: sqlite_utils.Database, before: Any, changes: dict[str, Any]) -> None:
    """`before`: the Transfer as read; `changes`: the columns just written."""
    event = EVENTS.get(changes.get("state", before.state))
    if event is None or changes.get("state") is None or before.state == changes["state"]:
        return
    known = {f.name for f in fields(before)}
    after = replace(before, **{k: v for k, v in changes.items() if k in known})
    row = db.conn.execute("SELECT name, filename FROM models WHERE id = ?", [after.model_id]).fetchone()
    emit(db, event, {"transfer": after.to_dict(), "model_name": (row[0] or row[1]) if row else after.rel_name,
                     "reason_text": after.error if event == "transfer.failed" else None})
