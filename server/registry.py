"""The fleet registry database: opened once at start-up (migrated, with a backup before each step), then one
connection per thread. SQLite in WAL mode: readers never wait for the writer; writers queue on BEGIN IMMEDIATE."""
from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlite_utils

from modelsync.shared.catalog import TIME_FORMAT, migrate, open_catalog, schema_version, write_transaction

log = logging.getLogger(__name__)

# Left alone by reset-database: node identities and their tokens survive an emptied registry.
KEPT_ON_RESET = frozenset({"servers"})


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


def iso_ago(seconds: float) -> str:
    return iso(utc_now() - timedelta(seconds=seconds))


def backup_database(source: sqlite3.Connection, backups: Path, label: str) -> Path:
    """A consistent copy of a live database (sqlite3 backup API), named by time and label."""
    backups.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = backups / f"registry-{stamp}-{label}.db"
    dest = sqlite3.connect(str(target))
    try:
        source.backup(dest)
    finally:
        dest.close()
    log.info("database backed up to %s", target)
    return target


class Registry:
    """Owns the database file; hands each thread its own connection."""

    def __init__(self, path: Path, backups: Path):
        self.path = Path(path)
        self.backups = backups
        self._local = threading.local()
        self._connections: list[sqlite_utils.Database] = []
        self._lock = threading.Lock()

    def open(self) -> list[int]:
        """Create or migrate the schema; every migration step is preceded by a backup of a non-empty database."""
        db = self.db()
        had_schema = schema_version(db) > 0

        def before_step(version: int) -> None:
            if had_schema:
                backup_database(db.conn, self.backups, f"before-v{version}")

        applied = migrate(db, before_step)
        if applied:
            log.info("registry schema migrated to version %d (%s)", applied[-1], self.path)
        return applied

    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = open_catalog(self.path)
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            try:
                db.conn.close()
            except sqlite3.Error as exc:  # a connection in use by a thread still stopping
                log.debug("closing a registry connection: %s", exc)
        self._local = threading.local()

    def backup(self, label: str) -> Path:
        return backup_database(self.db().conn, self.backups, label)

    def reset(self) -> Path:
        """Back up, then empty every registry table but the nodes themselves, in one transaction."""
        backup = self.backup("before-reset")
        db = self.db()
        with write_transaction(db):
            tables = [t for t in db.table_names() if t not in KEPT_ON_RESET and not t.startswith("sqlite_")]
            # children (tables with foreign keys) first, so no row ever points at a deleted one
            for name in sorted(tables, key=lambda t: not db[t].foreign_keys):
                db.execute(f"DELETE FROM [{name}]")
            db.execute("UPDATE servers SET last_sync = NULL, last_sync_summary = NULL, inventory_digest = NULL")
        log.warning("registry reset; previous content kept in %s", backup)
        return backup
