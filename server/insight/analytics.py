"""Read-side fleet analytics: job demand per model over a window (trend, forecast, a time series) and the fleet's
risks (single copies, unmet demand, cold models, free disk). Formulas: docs/insight.md; arithmetic:
shared/insight/forecast.py."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

import sqlite_utils

from modelsync.shared.catalog import chunks, placeholders
from modelsync.shared.insight.forecast import WINDOWS, forecast, hour_key, trend, window_hours
from modelsync.shared.transfer.receiver import DEFAULT_FLOOR_BYTES

from ..errors import ApiError
from ..queries import Liveness, _rows
from ..registry import iso, parse_iso
from .node_state import NodeState, read_states

COLD_DAYS = 30
PLACE_WINDOW = "7d"  # the demand recommendations weigh
FLEET_LIST_LIMIT = 100


def window_of(text: str | None) -> str:
    window = text or "24h"
    if window not in WINDOWS:
        raise ApiError(400, f"window must be one of {', '.join(WINDOWS)}", "window")
    return window


@dataclass
class Demand:
    kind: str
    key: str
    model_id: int | None
    requests: int = 0
    unmet: int = 0
    previous: int = 0


def demand_totals(db: sqlite_utils.Database, now: datetime, window: str, kind: str | None = None) -> list[Demand]:
    """Every model asked for in this window or the previous one, with its counts in each."""
    hours = WINDOWS[window]
    this, previous_start = window_hours(now, hours), window_hours(now, hours, 1)[0]
    this_start, last = this[0], this[-1]
    where, params = ("AND kind = ?", [kind]) if kind else ("", [])
    rows = db.conn.execute(
        f"""SELECT kind, model_key, MAX(model_id),
                   SUM(CASE WHEN hour >= ? THEN requests ELSE 0 END), SUM(CASE WHEN hour >= ? THEN unmet ELSE 0 END),
                   SUM(CASE WHEN hour < ? THEN requests ELSE 0 END)
            FROM demand_hourly WHERE hour >= ? AND hour <= ? {where}
            GROUP BY kind, model_key""",
        [this_start, this_start, this_start, previous_start, last, *params]).fetchall()
    return [Demand(kind, key, model_id, requests, unmet, previous)
            for kind, key, model_id, requests, unmet, previous in rows]


def _hourly(db: sqlite_utils.Database, now: datetime, window: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
    """(kind, key) -> hour -> (requests, unmet) over this window."""
    hours = window_hours(now, WINDOWS[window])
    start, last = hours[0], hours[-1]
    found: dict[tuple[str, str], dict[str, tuple[int, int]]] = defaultdict(dict)
    for chunk in chunks(sorted({key for _, key in keys})):
        for hour, kind, key, requests, unmet in db.conn.execute(
                f"""SELECT hour, kind, model_key, requests, unmet FROM demand_hourly
                    WHERE model_key IN ({placeholders(chunk)}) AND hour >= ? AND hour <= ?""", [*chunk, start, last]):
            found[(kind, key)][hour] = (requests, unmet)
    return found


def _labels(db: sqlite_utils.Database, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The reference as a job last wrote it, for each (kind, key)."""
    labels: dict[tuple[str, str], str] = {}
    for chunk in chunks(sorted({key for _, key in keys})):
        for kind, key, label in db.conn.execute(
                f"""SELECT kind, model_key, label FROM demand_hourly WHERE model_key IN ({placeholders(chunk)})
                    ORDER BY hour""", chunk):
            labels[(kind, key)] = label
    return labels


def models_by_id(db: sqlite_utils.Database, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for chunk in chunks(sorted(set(ids))):
        for row in _rows(db, f"""SELECT id, name, filename, type, hash_sha256 AS sha256, size, civitai_id,
                                        civitai_version_id, civitai_model_name, civitai_model_version_name, last_used
                                 FROM models WHERE id IN ({placeholders(chunk)})""", chunk):
            found[row["id"]] = row
    return found


def holders_by_model(db: sqlite_utils.Database, ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """model id -> node -> the bytes of its files of that model there."""
    found: dict[int, dict[str, int]] = defaultdict(dict)
    for chunk in chunks(sorted(set(ids))):
        for model_id, server_id, size in db.conn.execute(
                f"""SELECT model_id, server_id, SUM(COALESCE(size, 0)) FROM model_server_availability
                    WHERE model_id IN ({placeholders(chunk)}) GROUP BY model_id, server_id""", chunk):
            found[model_id][server_id] = size
    return found


def model_summary(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row[k] for k in ("id", "name", "filename", "type", "sha256", "size", "civitai_version_id")}


def _holders(nodes: dict[str, int] | None, online: set[str]) -> dict[str, Any] | None:
    if nodes is None:
        return None
    return {"online": sum(s in online for s in nodes), "all": len(nodes), "nodes": sorted(nodes)}


def _series(hours: list[str], counts: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    return [{"hour": h, "requests": counts.get(h, (0, 0))[0], "unmet": counts.get(h, (0, 0))[1]} for h in hours]


def demand(db: sqlite_utils.Database, liveness: Liveness, now: datetime, window: str, kind: str | None = None,
           limit: int = 100) -> dict[str, Any]:
    """The demand answer: per model (most requested first, at most `limit`) and the hourly totals of the window."""
    hours = window_hours(now, WINDOWS[window])
    totals = demand_totals(db, now, window, kind)
    totals.sort(key=lambda d: (-d.requests, -d.unmet, -d.previous, d.kind, d.key))
    shown = totals[:limit]
    keys = [(d.kind, d.key) for d in shown]
    hourly, labels = _hourly(db, now, window, keys), _labels(db, keys)
    ids = [d.model_id for d in shown if d.model_id is not None]
    models, holders = models_by_id(db, ids), holders_by_model(db, ids)
    online = set(liveness.online_ids(db))
    items = []
    for d in shown:
        counts = hourly.get((d.kind, d.key), {})
        items.append({
            "kind": d.kind, "key": d.key, "label": labels.get((d.kind, d.key)),
            "model": model_summary(models.get(d.model_id)) if d.model_id is not None else None,
            "requests": d.requests, "unmet": d.unmet, "previous_requests": d.previous,
            "holders": _holders(holders.get(d.model_id, {}), online) if d.model_id is not None else None,
            "trend": trend(d.requests, d.previous),
            "forecast": forecast([counts.get(h, (0, 0))[0] for h in hours]),
        })
    series: dict[str, tuple[int, int]] = {}
    where, params = ("AND kind = ?", [kind]) if kind else ("", [])
    for hour, requests, unmet in db.conn.execute(
            f"""SELECT hour, SUM(requests), SUM(unmet) FROM demand_hourly WHERE hour >= ? AND hour <= ? {where}
                GROUP BY hour""", [hours[0], hours[-1], *params]):
        series[hour] = (requests, unmet)
    return {"window": window, "hours": len(hours), "from": hours[0], "to": hours[-1], "kind": kind,
            "models": items, "total_models": len(totals),
            "requests": sum(d.requests for d in totals), "unmet": sum(d.unmet for d in totals),
            "series": _series(hours, series)}


def demand_series(db: sqlite_utils.Database, liveness: Liveness, now: datetime, window: str, model_id: int) -> dict[str, Any]:
    """One model's hourly counts over the window, with its totals, trend and forecast."""
    model = models_by_id(db, [model_id]).get(model_id)
    if model is None:
        raise ApiError(404, f"no model {model_id}", "model_id")
    hours = WINDOWS[window]
    this, previous = window_hours(now, hours), window_hours(now, hours, 1)
    counts: dict[str, tuple[int, int]] = {}
    for hour, requests, unmet in db.conn.execute(
            """SELECT hour, SUM(requests), SUM(unmet) FROM demand_hourly
               WHERE model_key = ? AND hour >= ? AND hour <= ? GROUP BY hour""",
            [f"sha256:{model['sha256']}", previous[0], this[-1]]):
        counts[hour] = (requests, unmet)
    requests = sum(counts.get(h, (0, 0))[0] for h in this)
    before = sum(counts.get(h, (0, 0))[0] for h in previous)
    online = set(liveness.online_ids(db))
    return {"window": window, "hours": hours, "from": this[0], "to": this[-1], "model": model_summary(model),
            "requests": requests, "unmet": sum(counts.get(h, (0, 0))[1] for h in this), "previous_requests": before,
            "holders": _holders(holders_by_model(db, [model_id]).get(model_id, {}), online),
            "trend": trend(requests, before), "forecast": forecast([counts.get(h, (0, 0))[0] for h in this]),
            "series": _series(this, counts)}


# --- the fleet's risks -------------------------------------------------------------------------------------------

def recording_since(db: sqlite_utils.Database) -> str | None:
    row = db.conn.execute("SELECT started_at FROM demand_recording WHERE id = 1").fetchone()
    return row[0] if row else None


def cold_known(db: sqlite_utils.Database, now: datetime) -> tuple[bool, str | None]:
    """Whether demand has been recorded for COLD_DAYS (before that nothing is cold), and from when it will be."""
    since = recording_since(db)
    if since is None:
        return False, None
    from_when = parse_iso(since) + timedelta(days=COLD_DAYS)
    return from_when <= now, iso(from_when)


def cold_model_ids(db: sqlite_utils.Database, now: datetime, server_id: str | None = None) -> set[int]:
    """Held models (on `server_id`, or anywhere) no pre-submission check named and no approved dispatch used in
    COLD_DAYS. Call only when cold_known."""
    since = iso(now - timedelta(days=COLD_DAYS))
    where, params = ("AND a.server_id = ?", [server_id]) if server_id else ("", [])
    rows = db.conn.execute(
        f"""SELECT DISTINCT a.model_id FROM model_server_availability a JOIN models m ON m.id = a.model_id
            WHERE (m.last_used IS NULL OR m.last_used < ?) {where}
              AND NOT EXISTS (SELECT 1 FROM demand_hourly d WHERE d.model_key = 'sha256:' || m.hash_sha256
                                                           AND d.hour >= ?)""",
        [since, *params, hour_key(now - timedelta(days=COLD_DAYS))]).fetchall()
    return {r[0] for r in rows}


def floor_of(state: NodeState | None) -> int | None:
    """The free space the node's transfers leave (the default floor for a report that gave none)."""
    if state is None:
        return None
    return state.floor_bytes if state.floor_bytes is not None else DEFAULT_FLOOR_BYTES


def node_disks(db: sqlite_utils.Database, liveness: Liveness) -> list[dict[str, Any]]:
    """Each node with its free disk as last reported (None when it reported none)."""
    states = read_states(db)
    online = set(liveness.online_ids(db))
    nodes = []
    for server_id, display_name in db.conn.execute("SELECT id, display_name FROM servers ORDER BY id"):
        state = states.get(server_id)
        disks = [{k: d.get(k) for k in ("root", "role", "free_bytes", "total_bytes")} for d in state.disks] if state else []
        nodes.append({"server_id": server_id, "display_name": display_name, "online": server_id in online,
                      "reported_at": state.reported_at if state else None,
                      "free_bytes": min((d["free_bytes"] for d in disks), default=None),
                      "floor_bytes": floor_of(state), "disks": disks})
    return nodes


def demand_by_model(db: sqlite_utils.Database, now: datetime, window: str) -> dict[int, tuple[int, int]]:
    """model id -> (requests, unmet) over the window (its hours, as demand() counts them)."""
    hours = window_hours(now, WINDOWS[window])
    return {model_id: (requests, unmet) for model_id, requests, unmet in db.conn.execute(
        """SELECT model_id, SUM(requests), SUM(unmet) FROM demand_hourly
           WHERE model_id IS NOT NULL AND hour >= ? AND hour <= ? GROUP BY model_id""", [hours[0], hours[-1]])}


def fleet(db: sqlite_utils.Database, liveness: Liveness, now: datetime) -> dict[str, Any]:
    online = set(liveness.online_ids(db))
    used = demand_by_model(db, now, "30d")

    single = [r[0] for r in db.conn.execute(
        """SELECT model_id FROM (SELECT DISTINCT model_id, server_id FROM model_server_availability
                                 WHERE model_id IS NOT NULL) AS copies
           GROUP BY model_id HAVING COUNT(*) = 1""")]
    single.sort(key=lambda m: (-used.get(m, (0, 0))[0], m))
    shown = single[:FLEET_LIST_LIMIT]
    models, holders = models_by_id(db, shown), holders_by_model(db, shown)
    single_holder = []
    for model_id in shown:
        (server_id, size), = holders[model_id].items()
        single_holder.append({"model": model_summary(models[model_id]), "server_id": server_id,
                              "online": server_id in online, "bytes": size,
                              "requests_30d": used.get(model_id, (0, 0))[0]})

    totals = demand_totals(db, now, "30d")
    ids = [d.model_id for d in totals if d.model_id is not None]
    held, known = holders_by_model(db, ids), models_by_id(db, ids)
    labels = _labels(db, [(d.kind, d.key) for d in totals if d.requests])
    unmet = []
    for d in totals:
        holders_now = held.get(d.model_id, {}) if d.model_id is not None else {}
        if d.requests and not any(s in online for s in holders_now):
            unmet.append({"kind": d.kind, "key": d.key, "label": labels.get((d.kind, d.key)),
                          "model": model_summary(known.get(d.model_id)) if d.model_id is not None else None,
                          "requests_30d": d.requests, "unmet_30d": d.unmet,
                          "holders": _holders(holders_now, online) if d.model_id is not None else None})
    unmet.sort(key=lambda u: (-u["requests_30d"], u["kind"], u["key"]))

    is_known, cold_from = cold_known(db, now)
    cold: dict[str, Any] = {"known": is_known, "from": cold_from, "models": [], "total_models": 0, "nodes": []}
    if is_known:
        cold_ids = sorted(cold_model_ids(db, now))
        cold_holders = holders_by_model(db, cold_ids)
        reclaim: dict[str, int] = defaultdict(int)
        for model_id in cold_ids:
            for server_id, size in cold_holders[model_id].items():
                reclaim[server_id] += size
        cold_ids.sort(key=lambda m: (-sum(cold_holders[m].values()), m))
        cold_models = models_by_id(db, cold_ids[:FLEET_LIST_LIMIT])
        cold.update(
            total_models=len(cold_ids),
            models=[{"model": model_summary(cold_models[m]), "last_used": cold_models[m]["last_used"],
                     "nodes": [{"server_id": s, "bytes": b} for s, b in sorted(cold_holders[m].items())]}
                    for m in cold_ids[:FLEET_LIST_LIMIT]],
            nodes=[{"server_id": s, "bytes": b} for s, b in sorted(reclaim.items())])
    return {"single_holder": single_holder, "single_holder_total": len(single), "unmet": unmet[:FLEET_LIST_LIMIT],
            "unmet_total": len(unmet), "cold": cold, "nodes": node_disks(db, liveness),
            "recording_since": recording_since(db)}
