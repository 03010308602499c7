"""What each node last reported of itself (issue #13): the `node_states` table, written by the heartbeat, read by
the node list, the dashboard, the ranking of the job checks, the fleet analytics (free disk) and the disk_low alert.

The job checks read the states from memory (`StateCache`): a heartbeat of this process puts its state there as it
commits it; the counter `registry_versions.node_states` (kept by triggers, whoever writes) tells the cache in one
indexed read whether anyone else changed the table since (a reset, a deleted node, another process): then it reads
the table again."""
from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils
from modelsync.shared.node.state import StateReport

_COLUMNS = ("server_id", "reported_at", "loaded_title", "loaded_sha256", "selected_title", "selected_sha256", "modules",
            "busy", "gpu_total_bytes", "gpu_free_bytes", "disks", "floor_bytes")
_VERSION_SQL = "SELECT version FROM registry_versions WHERE topic = 'node_states'"


@dataclass(frozen=True)
class NodeState:
    server_id: str
    reported_at: str
    loaded_title: str | None = None
    loaded_sha256: str | None = None
    selected_title: str | None = None
    selected_sha256: str | None = None
    modules: list[str] = field(default_factory=list)
    busy: bool | None = None
    gpu_total_bytes: int | None = None
    gpu_free_bytes: int | None = None
    disks: list[dict[str, Any]] = field(default_factory=list)  # {"root", "role", "free_bytes", "total_bytes"}
    floor_bytes: int | None = None  # the free space the node's transfers leave (None: an older report)

    @property
    def free_bytes_min(self) -> int | None:
        """The least free space of the node's model roots (None: no disk reported)."""
        return min((d["free_bytes"] for d in self.disks), default=None)

    def as_dict(self, online: bool) -> dict[str, Any]:
        """The node list's `state`; `current` False: the node is offline and this is its last report."""
        return {
            "reported_at": self.reported_at,
            "current": online,
            "loaded": {"title": self.loaded_title, "sha256": self.loaded_sha256} if self.loaded_title else None,
            "selected": {"title": self.selected_title, "sha256": self.selected_sha256} if self.selected_title else None,
            "modules": self.modules,
            "busy": self.busy,
            "gpu": ({"total_bytes": self.gpu_total_bytes, "free_bytes": self.gpu_free_bytes}
                    if self.gpu_total_bytes is not None else None),
            "disks": self.disks,
            "floor_bytes": self.floor_bytes,
            "free_bytes_min": self.free_bytes_min,
        }


def _state(row: tuple[Any, ...]) -> NodeState:
    values = dict(zip(_COLUMNS, row))
    values["modules"] = json.loads(values["modules"]) if values["modules"] else []
    values["disks"] = json.loads(values["disks"]) if values["disks"] else []
    values["busy"] = None if values["busy"] is None else bool(values["busy"])
    return NodeState(**values)


def read_states(db: sqlite_utils.Database) -> dict[str, NodeState]:
    """Every node's last report, by server_id (a node that never reported has none)."""
    rows = db.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM node_states").fetchall()
    return {row[0]: _state(row) for row in rows}


def record_state(db: sqlite_utils.Database, server_id: str, report: StateReport, now: str) -> NodeState:
    """Keep the node's report (the caller's transaction)."""
    a = report.activity
    state = NodeState(
        server_id=server_id, reported_at=now,
        loaded_title=a.loaded.title if a.loaded else None, loaded_sha256=a.loaded.sha256 if a.loaded else None,
        selected_title=a.selected.title if a.selected else None, selected_sha256=a.selected.sha256 if a.selected else None,
        modules=list(a.modules), busy=a.busy,
        gpu_total_bytes=report.gpu.total_bytes if report.gpu else None,
        gpu_free_bytes=report.gpu.free_bytes if report.gpu else None,
        disks=[d.to_dict() for d in report.disks], floor_bytes=report.floor_bytes,
    )
    values = [getattr(state, c) for c in _COLUMNS]
    values[_COLUMNS.index("modules")] = json.dumps(state.modules)
    values[_COLUMNS.index("disks")] = json.dumps(state.disks)
    values[_COLUMNS.index("busy")] = None if state.busy is None else int(state.busy)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    db.conn.execute(f"""INSERT INTO node_states ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})
                        ON CONFLICT (server_id) DO UPDATE SET {updates}""", values)
    return state


def states_version(db: sqlite_utils.Database) -> int:
    return db.conn.execute(_VERSION_SQL).fetchone()[0]


class StateCache:
    """The nodes' states in memory; `states(db)` costs one indexed read while no one else wrote them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = -1
        self._states: dict[str, NodeState] = {}

    def states(self, db: sqlite_utils.Database) -> dict[str, NodeState]:
        """The states as of the caller's read (call it inside the same read snapshot as the other reads)."""
        version = states_version(db)
        with self._lock:
            if version == self._version:
                return self._states
        states = read_states(db)
        with self._lock:
            self._states, self._version = states, version
        return states

    def put(self, state: NodeState, version: int) -> None:
        """A state this process committed, with the counter as its transaction left it: taken when it follows the
        cached one directly, else the cache is read again at its next use (another write came between)."""
        with self._lock:
            if version == self._version + 1:
                self._states = {**self._states, state.server_id: state}
                self._version = version
            else:
                self._version = -1


_caches: weakref.WeakKeyDictionary[Any, StateCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(registry: Any) -> StateCache:
    """The one cache of a registry (server/registry.py Registry) in this process."""
    with _caches_lock:
        found = _caches.get(registry)
        if found is None:
            found = _caches[registry] = StateCache()
        return found
