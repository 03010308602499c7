"""A full disk: a write that fails for space is a 507 "the registry's disk is full" (it was a 500
OperationalError), the node's rows stay exactly as they were, /api/v1/health says "degraded" with disk_full until
a write that needs space succeeds again. Two real ways to fill it: SQLite's page limit (PRAGMA max_page_count, on
every connection the registry opens) and a small tmpfs (where this test may mount one)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from support_server import RunningServer, run_server

import modelsync.server.registry as registry_module


def files(prefix: str, count: int) -> list[dict]:
    return [{"path": f"/srv/models/Lora/{prefix}_{i:05d}_{'x' * 100}.safetensors", "rel_name": f"{prefix}_{i:05d}.safetensors",
             "role": "lora", "size": 1000 + i, "sha256": hashlib.sha256(f"{prefix}-{i}".encode()).hexdigest(),
             "metadata": {"name": f"{prefix} {i} " + "d" * 200}} for i in range(count)]


def sync(server: RunningServer, server_id: str, entries: list[dict], token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return server.post(f"/api/v1/servers/{server_id}/models/sync", json={"format": 1, "server_id": server_id, "files": entries},
                       headers=headers)


def node_rows(db_path: Path) -> dict[str, list]:
    """Everything the registry holds about its nodes and models, to compare before and after."""
    conn = sqlite3.connect(db_path)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("servers", "model_server_availability", "model_aliases", "models")}
    finally:
        conn.close()


class PageLimit:
    """PRAGMA max_page_count is a per-connection setting: applied to every connection the registry opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.connections: list[sqlite3.Connection] = []
        self.pages: int | None = None
        opener = registry_module.open_catalog

        def open_limited(path):
            db = opener(path)
            self.connections.append(db.conn)
            if self.pages is not None:
                db.conn.execute(f"PRAGMA max_page_count = {self.pages}")
            return db

        monkeypatch.setattr(registry_module, "open_catalog", open_limited)

    def set(self, pages: int) -> None:
        self.pages = pages
        for conn in self.connections:
            conn.execute(f"PRAGMA max_page_count = {pages}")

    def current_pages(self) -> int:
        return self.connections[0].execute("PRAGMA page_count").fetchone()[0]


def assert_disk_full_answer(r) -> None:
    assert r.status_code == 507, r.text
    assert r.json() == {"error": "the registry's disk is full", "field": None}


def test_a_full_database_is_a_507_changes_nothing_and_health_says_so_until_there_is_room(tmp_path, monkeypatch):
    limit = PageLimit(monkeypatch)
    with run_server(tmp_path) as server:
        token = sync(server, "gpu-01", files("a", 5), None).json()["token"]
        assert server.get("/api/v1/health").json()["status"] == "ok"
        before = node_rows(server.db_path)
        limit.set(limit.current_pages())

        assert_disk_full_answer(sync(server, "gpu-01", files("a", 5) + files("b", 400), token))
        # a first contact is registered only with its inventory: neither is kept
        assert_disk_full_answer(sync(server, "gpu-02", files("c", 400), None))
        assert node_rows(server.db_path) == before
        health = server.get("/api/v1/health").json()
        assert health["status"] == "degraded" and health["disk_full"] is True
        assert "database or disk is full" in health["reason"]
        # reads go on; the health probe's failed write does not clear the flag
        assert server.get("/api/v1/models").json()["total"] == 5
        assert server.get("/api/v1/health").json()["disk_full"] is True

        limit.set(1_000_000)
        health = server.get("/api/v1/health").json()
        assert health["status"] == "ok" and health["disk_full"] is False and "reason" not in health
        r = sync(server, "gpu-01", files("a", 5) + files("b", 400), token)
        assert r.status_code == 200 and r.json()["added"] == 400


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command on this machine")
    if mounted.returncode != 0:
        pytest.skip(f"this test may not mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_tmpfs_is_a_507_changes_nothing_and_health_clears_once_space_is_freed(tmp_path):
    with small_tmpfs(tmp_path / "mnt", "16m") as mnt, run_server(mnt / "data") as server:
        token = sync(server, "gpu-01", files("a", 5), None).json()["token"]
        before = node_rows(server.db_path)
        filler = fill(mnt)

        assert_disk_full_answer(sync(server, "gpu-01", files("a", 5) + files("b", 3000), token))
        assert node_rows(server.db_path) == before
        health = server.get("/api/v1/health").json()
        assert health["status"] == "degraded" and health["disk_full"] is True

        os.unlink(filler)
        assert server.get("/api/v1/health").json()["status"] == "ok"
        r = sync(server, "gpu-01", files("a", 5) + files("b", 3000), token)
        assert r.status_code == 200 and r.json()["added"] == 3000
