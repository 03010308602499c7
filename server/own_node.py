"""The central server as a node of its own: scanning MODEL_PATH and hashing the files it holds there.

Only files under the configured roots are ever read; a path is never taken from a request.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import replace
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import placeholders, write_transaction
from modelsync.shared.scan.hashing import hash_file
from modelsync.shared.inventory import build_inventory
from modelsync.shared.inventory_apply import apply_inventory
from modelsync.shared.scan.model_folders import roots_for
from modelsync.shared.records import Root

from .config import ServerConfig
from .errors import ApiError
from .registry import iso, utc_now

log = logging.getLogger(__name__)


class OwnNode:
    def __init__(self, config: ServerConfig):
        self.server_id = config.own_server_id
        self.model_paths = [str(p) for p in config.model_paths]
        self._busy = threading.Lock()

    def roots(self) -> list[Root]:
        if not self.model_paths:
            raise ApiError(409, "MODEL_PATH is not set: this server holds no models of its own", "MODEL_PATH")
        roots: list[Root] = []
        for folder in self.model_paths:
            if not os.path.isdir(folder):
                raise ApiError(409, f"MODEL_PATH folder {folder} does not exist", "MODEL_PATH")
            roots.extend(roots_for(folder))
        return roots

    def _exclusive(self) -> threading.Lock:
        if not self._busy.acquire(blocking=False):
            raise ApiError(409, "a scan or hash of this server's models is already running; try again when it ends", None)
        return self._busy

    def scan(self, db: sqlite_utils.Database, calculate_hashes: bool) -> dict[str, Any]:
        from modelsync.shared.scan.scanner import scan  # the scan pipeline is loaded on first use, not at start-up

        roots = self.roots()
        lock = self._exclusive()
        try:
            self._ensure_server_row(db, roots)
            report = scan(roots, db, self.server_id, calculate_hashes=calculate_hashes, display_name="central server")
            self._touch(db)
        finally:
            lock.release()
        return {"success": True, "server_id": self.server_id, "calculate_hashes": calculate_hashes, **report.to_dict()}

    def hash_files(self, db: sqlite_utils.Database, file_ids: list[int]) -> list[dict[str, Any]]:
        """(Re)hash the listed files of this node and apply the result, so each is attached to its model."""
        roots = self.roots()
        lock = self._exclusive()
        try:
            return self._hash_files(db, roots, file_ids)
        finally:
            lock.release()

    def files_of_model(self, db: sqlite_utils.Database, model_id: int) -> list[int]:
        ids = [r[0] for r in db.conn.execute(
            "SELECT id FROM model_server_availability WHERE server_id = ? AND model_id = ? ORDER BY path", [self.server_id, model_id])]
        if not ids:
            raise ApiError(409, f"this server holds no copy of model {model_id} under MODEL_PATH", "id")
        return ids

    def file(self, db: sqlite_utils.Database, file_id: int) -> int:
        row = db.conn.execute("SELECT server_id FROM model_server_availability WHERE id = ?", [file_id]).fetchone()
        if row is None:
            raise ApiError(404, f"no file with id {file_id}", "file_id")
        if row[0] != self.server_id:
            raise ApiError(409, f"file {file_id} is on node {row[0]!r}; the server can only hash its own files", "file_id")
        return file_id

    def _hash_files(self, db: sqlite_utils.Database, roots: list[Root], file_ids: list[int]) -> list[dict[str, Any]]:
        rows = {
            path: (file_id, embedded)
            for file_id, path, embedded in db.conn.execute(
                f"SELECT id, path, embedded FROM model_server_availability WHERE server_id = ? AND id IN ({placeholders(file_ids)})",
                [self.server_id, *file_ids],
            )
        }
        inventory = build_inventory(db, self.server_id, roots, display_name="central server")
        results: list[dict[str, Any]] = []
        files = []
        for f in inventory.files:
            if f.path in rows:
                # keep what the scan learnt from the header, or apply would clear it
                f.embedded = json.loads(rows[f.path][1]) if rows[f.path][1] is not None else None
                f = self._rehash(f, roots, results, rows[f.path][0])
            files.append(f)
        apply_inventory(db, replace(inventory, files=files))
        self._touch(db)
        return results

    def _rehash(self, f, roots: list[Root], results: list[dict[str, Any]], file_id: int):
        outcome: dict[str, Any] = {"file_id": file_id, "path": f.path, "previous_sha256": f.sha256}
        results.append(outcome)
        if not _under_any(f.path, roots):
            outcome["error"] = "the file is not under MODEL_PATH"
            return f
        try:
            stat = os.stat(f.path)
            hashes = hash_file(f.path)
        except OSError as exc:
            outcome["error"] = f"cannot hash: {exc.strerror or exc}"
            return f
        outcome.update(hashes.as_dict())
        outcome["changed"] = f.sha256 is not None and f.sha256 != hashes.sha256
        if f.sha256 == hashes.sha256 and (f.size, f.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            return replace(f, autov1=f.autov1 or hashes.autov1, autov3=f.autov3 or hashes.autov3)
        # new content: forget what the header said, so the next scan reads it again
        return replace(f, sha256=hashes.sha256, autov1=hashes.autov1, autov3=hashes.autov3, size=stat.st_size,
                       mtime_ns=stat.st_mtime_ns, embedded=None, problem=None)

    def _ensure_server_row(self, db: sqlite_utils.Database, roots: list[Root]) -> None:
        with write_transaction(db):
            db.conn.execute(
                "INSERT OR IGNORE INTO servers (id, display_name, created_at) VALUES (?, ?, ?)",
                [self.server_id, "central server", iso(utc_now())],
            )
            db.conn.execute(
                "UPDATE servers SET roots = ? WHERE id = ?",
                [json.dumps([{"path": r.path, "role": r.role} for r in roots]), self.server_id],
            )

    def _touch(self, db: sqlite_utils.Database) -> None:
        with write_transaction(db):
            db.conn.execute("UPDATE servers SET last_sync = ? WHERE id = ?", [iso(utc_now()), self.server_id])


def _under_any(path: str, roots: list[Root]) -> bool:
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root.path)
        if os.path.commonpath([real, base]) == base:
            return True
    return False
