"""The server's clock for the events nobody's request causes: a node going offline or coming back, a node's disk
falling below its free-disk floor, a model jobs used lately left without an online holder.

Judged every few seconds from the registry, whether or not anyone calls the API, against the last judged state kept
in the registry (`webhook_node_watch`, `webhook_lost_models`), so an event is sent once per change and a restart
sends none again. After a start the clock gives every node that was online `offline_after` seconds to be heard from
before judging it offline (the nodes could not reach a stopped server): no burst of node.offline after a restart.
A node seen for the first time is judged without an event. A used model is "lost" when no node judged online holds
it, by a sync that removed its last copy or by its holders going offline: one judge for both."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import chunks, placeholders, read_snapshot, write_transaction
from modelsync.shared.transfer.receiver import DEFAULT_FLOOR_BYTES

from ..insight.node_state import read_states
from ..queries import Liveness
from ..registry import iso, utc_now
from .events import emit

log = logging.getLogger(__name__)

USED_WITHIN_DAYS = 30


@dataclass
class NodeSeen:
    server_id: str
    display_name: str | None
    last_contact: str | None


class NodeClock:
    def __init__(self, db_of_thread: Any, liveness: Liveness, interval: float, started_at: str):
        self._db = db_of_thread  # () -> this thread's registry connection
        self._liveness = liveness
        self._interval = max(0.05, interval)
        self._started_at = started_at
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-clock", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        first = True
        while not self._stop.wait(self._interval):
            try:
                judge(self._db(), self._liveness, self._started_at, first)
                first = False
            except Exception:  # the clock must go on; the next tick judges again from the registry
                log.exception("webhook clock: judging the nodes failed")


def judge(db: sqlite_utils.Database, liveness: Liveness, started_at: str, first_tick: bool = False) -> None:
    """One tick: judged from one read snapshot (no lock that a heartbeat or a sync would wait for); only a change
    takes the write lock, to store the new state and its event together. The first tick of a registry that never
    judged a node (a new one, or one just given webhooks) takes the models lost already as they are, without an
    event."""
    with read_snapshot(db):
        changes = _judged(db, liveness, started_at, first_tick)
    if changes:
        with write_transaction(db):
            _apply(db, changes, liveness)


@dataclass
class Changes:
    first_seen: list[tuple[NodeSeen, bool]] = field(default_factory=list)  # (node, online): stored without an event
    flipped: list[tuple[NodeSeen, bool]] = field(default_factory=list)  # (node, online now)
    disks: list[tuple[NodeSeen, bool, dict[str, Any]]] = field(default_factory=list)  # (node, low now, event data)
    found: list[int] = field(default_factory=list)  # models with an online holder again
    lost: list[tuple[int, dict[str, Any] | None]] = field(default_factory=list)  # (model, event data; None: baseline)

    def __bool__(self) -> bool:
        return bool(self.first_seen or self.flipped or self.disks or self.found or self.lost)


def _judged(db: sqlite_utils.Database, liveness: Liveness, started_at: str, first_tick: bool) -> Changes:
    cutoff = liveness.cutoff()
    seen = [NodeSeen(sid, name, max(sync or "", beat or "") or None) for sid, name, sync, beat in
            db.conn.execute("SELECT id, display_name, last_sync, last_heartbeat FROM servers")]
    watched = {sid: (bool(online), bool(low)) for sid, online, low in
               db.conn.execute("SELECT server_id, online, disk_low FROM webhook_node_watch")}
    changes = Changes()
    online: dict[str, bool] = {}
    for node in seen:
        heard = liveness.is_online(node.server_id, node.last_contact, None, cutoff)
        was_online = watched[node.server_id][0] if node.server_id in watched else None
        # a node online before a restart keeps its benefit of the doubt until offline_after has passed since the start
        online[node.server_id] = heard or (was_online is True and started_at >= cutoff)
        if was_online is None:
            changes.first_seen.append((node, online[node.server_id]))
        elif online[node.server_id] != was_online:
            changes.flipped.append((node, online[node.server_id]))
    _judge_disks(db, {n.server_id: n for n in seen}, online, watched, changes)
    _judge_lost_models(db, [sid for sid, is_online in online.items() if is_online],
                       baseline=first_tick and not watched, changes=changes)
    return changes


def _judge_disks(db: sqlite_utils.Database, nodes: dict[str, NodeSeen], online: dict[str, bool],
                 watched: dict[str, tuple[bool, bool]], changes: Changes) -> None:
    """Only a current report counts: an offline node's last one is left as it was judged."""
    for server_id, state in read_states(db).items():
        if not online.get(server_id):
            continue
        floor = DEFAULT_FLOOR_BYTES if state.floor_bytes is None else state.floor_bytes
        below = [d for d in state.disks if d["free_bytes"] < floor]
        if bool(below) == watched.get(server_id, (False, False))[1]:
            continue
        node = nodes[server_id]
        changes.disks.append((node, bool(below), {
            "server_id": server_id, "display_name": node.display_name, "floor_bytes": floor,
            "free_bytes": state.free_bytes_min, "reported_at": state.reported_at,
            "disks": [{"root": d["root"], "role": d.get("role"), "free_bytes": d["free_bytes"],
                       "total_bytes": d.get("total_bytes")} for d in below]}))


def _judge_lost_models(db: sqlite_utils.Database, online_ids: list[str], baseline: bool, changes: Changes) -> None:
    """The used models no online node holds: one indexed look per model on (model_id, server_id)."""
    since = iso(utc_now() - timedelta(days=USED_WITHIN_DAYS))
    columns = "id, name, filename, type, hash_sha256, last_used"
    if not online_ids:
        lost_rows = db.conn.execute(f"SELECT {columns} FROM models WHERE last_used >= ?", [since]).fetchall()
    else:
        by_part = [{row[0]: row for row in db.conn.execute(
            f"""SELECT {columns} FROM models m WHERE m.last_used >= ? AND NOT EXISTS (
                    SELECT 1 FROM model_server_availability a
                    WHERE a.model_id = m.id AND a.server_id IN ({placeholders(part)}))""", [since, *part])}
            for part in chunks(online_ids)]  # one part unless the fleet has more online nodes than SQL_VARIABLES
        lost_rows = [row for model_id, row in by_part[0].items() if all(model_id in rows for rows in by_part[1:])]
    lost = {row[0]: row for row in lost_rows}
    known = {row[0] for row in db.conn.execute("SELECT model_id FROM webhook_lost_models")}
    changes.found = sorted(known - set(lost))
    for model_id in sorted(set(lost) - known):
        if baseline:
            changes.lost.append((model_id, None))
            continue
        _, name, filename, kind, sha256, last_used = lost[model_id]
        holders = [row[0] for row in db.conn.execute(
            "SELECT DISTINCT server_id FROM model_server_availability WHERE model_id = ? ORDER BY server_id", [model_id])]
        changes.lost.append((model_id, {"model": {"id": model_id, "name": name or filename, "type": kind, "sha256": sha256},
                                        "last_used": last_used, "offline_holders": holders}))


def _apply(db: sqlite_utils.Database, changes: Changes, liveness: Liveness) -> None:
    """Each change stored only if the state is still the one judged (a node or model deleted since is skipped), and
    its event emitted with it."""
    now = iso(utc_now())
    for node, is_online in changes.first_seen:
        db.conn.execute("""INSERT INTO webhook_node_watch (server_id, online, disk_low, judged_at)
                           SELECT ?, ?, 0, ? WHERE EXISTS (SELECT 1 FROM servers WHERE id = ?)""",
                        [node.server_id, int(is_online), now, node.server_id])
    for node, is_online in changes.flipped:
        if db.conn.execute("UPDATE webhook_node_watch SET online = ?, judged_at = ? WHERE server_id = ? AND online = ?",
                           [int(is_online), now, node.server_id, int(not is_online)]).rowcount:
            emit(db, "node.online" if is_online else "node.offline",
                 {"server_id": node.server_id, "display_name": node.display_name, "last_contact": node.last_contact,
                  "offline_after_seconds": liveness.offline_after_seconds})
    for node, low, data in changes.disks:
        if db.conn.execute("UPDATE webhook_node_watch SET disk_low = ? WHERE server_id = ? AND disk_low = ?",
                           [int(low), node.server_id, int(not low)]).rowcount and low:
            emit(db, "node.disk_low", data)
    for model_id in changes.found:
        db.conn.execute("DELETE FROM webhook_lost_models WHERE model_id = ?", [model_id])
    for model_id, data in changes.lost:
        if db.conn.execute("""INSERT INTO webhook_lost_models (model_id, since)
                              SELECT ?, ? WHERE EXISTS (SELECT 1 FROM models WHERE id = ?)""",
                           [model_id, now, model_id]).rowcount and data is not None:
            emit(db, "model.last_copy_lost", data)
