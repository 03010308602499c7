"""What a node should hold: models to place on it (demanded, not held, fitting its free disk above its floor, most
requested first, each with the source a transfer would use) and models it could drop (cold, and held by at least
two other nodes). Rules: docs/insight.md.

The fleet-wide parts (demand, holders, cold models, the nodes' states) are read once into a `FleetView`: the
Insights page lists every node's recommendations from one view."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlite_utils

from modelsync.shared.names import kind_of

from ..errors import ApiError
from ..queries import Liveness
from ..transfers.sources import holders as source_holders
from ..transfers.store import STANDING_STATES
from .analytics import (
    PLACE_WINDOW,
    cold_known,
    cold_model_ids,
    demand_by_model,
    floor_of,
    holders_by_model,
    model_summary,
    models_by_id,
)
from .node_state import NodeState, read_states

MAX_PLACE = 20
MAX_DROP = 50


@dataclass(frozen=True)
class FleetView:
    """What every node's recommendations share, read once (inside the caller's read snapshot)."""

    own_server_id: str
    online: set[str]
    states: dict[str, NodeState]
    demanded: dict[int, tuple[int, int]]  # model id -> (requests, unmet) in PLACE_WINDOW
    models: dict[int, dict[str, Any]]  # the demanded models' rows
    holders: dict[int, dict[str, int]]  # demanded model id -> node -> bytes
    cold_known: bool
    cold_from: str | None
    cold_holders: dict[int, dict[str, int]]  # cold model id -> node -> bytes (empty until cold_known)


def fleet_view(db: sqlite_utils.Database, liveness: Liveness, now: datetime) -> FleetView:
    demanded = {m: counts for m, counts in demand_by_model(db, now, PLACE_WINDOW).items() if counts[0]}
    is_known, cold_from = cold_known(db, now)
    return FleetView(
        own_server_id=liveness.own_server_id, online=set(liveness.online_ids(db)), states=read_states(db),
        demanded=demanded, models=models_by_id(db, demanded), holders=holders_by_model(db, demanded),
        cold_known=is_known, cold_from=cold_from,
        cold_holders=holders_by_model(db, cold_model_ids(db, now)) if is_known else {})


def _source(db: sqlite_utils.Database, model: dict[str, Any], server_id: str, view: FleetView
            ) -> tuple[dict[str, Any], str | None]:
    """The source a transfer would use now, and the role the copy would get (the holder's folder, else the content)."""
    found = [h for h in source_holders(db, model["id"], model["sha256"], destination=server_id)
             if h.server_id != view.own_server_id]
    role = found[0].role if found else None
    serving = [h for h in found if h.can_serve(view.online)]
    if serving:
        return {"kind": "peer", "server_id": serving[0].server_id}, serving[0].role
    if model["civitai_version_id"] is not None:
        return ({"kind": "civitai", "version_id": model["civitai_version_id"],
                 "model_name": model["civitai_model_name"], "version_name": model["civitai_model_version_name"]}, role)
    return {"kind": "none"}, role


def _filesystem(disk: dict[str, Any]) -> tuple[Any, ...]:
    """Which roots share their free space: the same device id when the node reports one; else the same total and
    free bytes as first reported (two filesystems alike to the byte are taken as one: the safe side)."""
    if disk.get("device") is not None:
        return ("device", disk["device"])
    return ("size", disk["total_bytes"], disk["free_bytes"])


def _disks(state: NodeState | None) -> list[dict[str, Any]]:
    disks = [{"root": d.get("root"), "role": d.get("role"), "free_bytes": int(d.get("free_bytes") or 0),
              "total_bytes": int(d.get("total_bytes") or 0), "device": d.get("device")}
             for d in state.disks] if state else []
    for disk in disks:
        disk["filesystem"] = _filesystem(disk)
    return disks


def _free_for(disks: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    """The disk a copy of this role would land on: the freest root of that role, else the freest root."""
    of_role = [d for d in disks if d["role"] == role] or disks
    return max(of_role, key=lambda d: d["free_bytes"], default=None)


def _take(disks: list[dict[str, Any]], landing: dict[str, Any], size: int) -> None:
    """The copy's space is gone from every root on the filesystem it lands on."""
    for disk in disks:
        if disk["filesystem"] == landing["filesystem"]:
            disk["free_bytes"] -= size


def _standing(db: sqlite_utils.Database, server_id: str) -> dict[str, dict[str, Any]]:
    marks = ", ".join("?" for _ in STANDING_STATES)
    return {sha: {"id": tid, "state": state} for tid, sha, state in db.conn.execute(
        f"SELECT id, sha256, state FROM transfers WHERE server_id = ? AND state IN ({marks})",
        [server_id, *STANDING_STATES])}


def _place(db: sqlite_utils.Database, view: FleetView, server_id: str, disks: list[dict[str, Any]], floor: int
           ) -> tuple[list[dict[str, Any]], int]:
    """The models to place, and how many demanded ones did not fit. A model larger than the freest root allows is
    passed over before its source is looked up."""
    held = {m for m, nodes in view.holders.items() if server_id in nodes}
    wanted = sorted((m for m in view.demanded if m not in held and m in view.models),
                    key=lambda m: (-view.demanded[m][0], -view.demanded[m][1], m))
    standing = _standing(db, server_id)
    place: list[dict[str, Any]] = []
    skipped_for_space = 0
    for model_id in wanted:
        if len(place) >= MAX_PLACE:
            break
        model = view.models[model_id]
        size = int(model["size"] or 0)
        if size <= 0 or max(d["free_bytes"] for d in disks) - size < floor:
            skipped_for_space += 1
            continue
        source, role = _source(db, model, server_id, view)
        disk = _free_for(disks, role or kind_of(None, model["type"]))
        if disk is None or disk["free_bytes"] - size < floor:
            skipped_for_space += 1
            continue
        _take(disks, disk, size)  # the next recommendation counts this one's space as taken
        requests, unmet = view.demanded[model_id]
        nodes = view.holders.get(model_id, {})
        on = sum(s in view.online for s in nodes)
        reason = (f"asked for {requests} time(s) in the last {PLACE_WINDOW}" + (f", {unmet} unmet" if unmet else "")
                  + f"; held by {on} online node(s) of {len(nodes)}")
        place.append({"model": model_summary(model), "requests": requests, "unmet": unmet, "reason": reason,
                      "source": source, "root": disk["root"], "free_after_bytes": disk["free_bytes"],
                      "transfer": standing.get(model["sha256"])})
    return place, skipped_for_space


def _drop(db: sqlite_utils.Database, view: FleetView, server_id: str) -> list[dict[str, Any]]:
    others_of = {m: [s for s in nodes if s != server_id] for m, nodes in view.cold_holders.items() if server_id in nodes}
    droppable = sorted((m for m, others in others_of.items() if len(others) >= 2),
                       key=lambda m: (-view.cold_holders[m][server_id], m))[:MAX_DROP]
    cold_models = models_by_id(db, droppable)
    drop = []
    for model_id in droppable:
        others = others_of[model_id]
        drop.append({"model": model_summary(cold_models[model_id]), "bytes": view.cold_holders[model_id][server_id],
                     "last_used": cold_models[model_id]["last_used"],
                     "reason": f"no job asked for it in 30 days; {len(others)} other node(s) hold it "
                               f"({sum(s in view.online for s in others)} online)",
                     "other_holders": sorted(others)})
    return drop


def recommendations(db: sqlite_utils.Database, view: FleetView, server_id: str) -> dict[str, Any]:
    if db.conn.execute("SELECT 1 FROM servers WHERE id = ?", [server_id]).fetchone() is None:
        raise ApiError(404, f"no node {server_id!r} is registered", "server_id")
    state = view.states.get(server_id)
    disks = _disks(state)
    free_now = min((d["free_bytes"] for d in disks), default=None)
    floor = floor_of(state)
    place, skipped_for_space = _place(db, view, server_id, disks, floor) if disks and floor is not None else ([], 0)
    return {"server_id": server_id, "online": server_id in view.online, "disk_known": bool(disks) and floor is not None,
            "free_bytes": free_now,
            "floor_bytes": floor, "window": PLACE_WINDOW, "place": place, "skipped_for_space": skipped_for_space,
            "drop": _drop(db, view, server_id) if view.cold_known else [], "cold_known": view.cold_known,
            "cold_from": view.cold_from}
