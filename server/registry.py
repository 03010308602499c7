"""The fleet registry database: opened once at start-up (migrated, with a backup before each step), then one
connection per thread. SQLite in WAL mode: readers never wait for the writer; writers queue on BEGIN IMMEDIATE.

Also what the registry's ids look like in a URL (`{id:rowid}`), and whether its disk is full."""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlite_utils
from starlette.convertors import Convertor, register_url_convertor

from modelsync.shared.catalog import TIME_FORMAT, migrate, open_catalog, schema_version, write_transaction

log = logging.getLogger(__name__)

# Left alone by reset-database: node identities and their tokens survive an emptied registry; the change counters
# (registry_versions) are bookkeeping, bumped by the triggers of the deletes themselves, not content.
KEPT_ON_RESET = frozenset({"servers", "registry_versions"})
MAX_ROW_ID = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY: 1 .. 2^63-1
DISK_FULL = "the registry's disk is full"
SPACE_PROBE_BYTES = 64 * 1024


def _decimal_at_most(limit: int) -> str:
    """A regex matching exactly the decimal numbers 1..limit without leading zeros."""
    digits = str(limit)
    shorter = f"[1-9][0-9]{{0,{len(digits) - 2}}}"
    same_length = [digits]
    for i, d in enumerate(digits):
        low = "1" if i == 0 else "0"
        if d > low:
            rest = len(digits) - i - 1
            same_length.append(f"{digits[:i]}[{low}-{int(d) - 1}][0-9]{{{rest}}}")
    return "(?:" + "|".join([shorter, *same_length]) + ")"


class RowIdConvertor(Convertor[int]):
    """A registry row id in a URL path: only 1..2^63-1 matches, so any other number (or text) is a 404 of the
    router, never an integer SQLite cannot bind."""

    regex = _decimal_at_most(MAX_ROW_ID)

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        if not 1 <= int(value) <= MAX_ROW_ID:
            raise ValueError(f"{value} is not a registry row id")
        return str(int(value))


class Sha256Convertor(Convertor[str]):
    """A model's SHA256 in a URL path: 64 hex digits, or the router answers 404."""

    regex = "[0-9a-fA-F]{64}"

    def convert(self, value: str) -> str:
        return value.lower()

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("rowid", RowIdConvertor())
register_url_convertor("sha256", Sha256Convertor())


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full" (a full filesystem or the database's page limit), or ENOSPC."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class DiskFull:
    reason: str
    since: str


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
        self._closed = False
        self._lock = threading.Lock()
        self.disk_full: DiskFull | None = None  # set by a write that failed for space; cleared by `disk_state`

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
            with self._lock:  # a background thread outliving the stop must not open a connection nobody closes
                if self._closed:
                    raise sqlite3.ProgrammingError("the registry is closed: the server is stopping")
                db = open_catalog(self.path)
                self._connections.append(db)
            self._local.db = db
        return db

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            try:
                db.conn.close()
            except sqlite3.Error as exc:  # a connection in use by a thread still stopping
                log.debug("closing a registry connection: %s", exc)
        self._local = threading.local()

    def note_disk_full(self, exc: BaseException) -> None:
        if self.disk_full is None:
            self.disk_full = DiskFull(f"{DISK_FULL}: {exc}", iso(utc_now()))
            log.error("%s (%s): writes fail until space is freed", DISK_FULL, exc)

    def disk_state(self) -> DiskFull | None:
        """The disk-full note; while there is one, a write that needs space is tried, and its success clears it."""
        if self.disk_full is not None and self._space_available():
            log.warning("the registry's disk has room again (full since %s)", self.disk_full.since)
            self.disk_full = None
        return self.disk_full

    def _space_available(self) -> bool:
        """Allocates database pages (rolled back: the page limit) and writes a file beside the database (the
        filesystem); the lock wait is short, so a running sync makes it answer "not yet", never wait long."""
        conn = self.db().conn
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        busy_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        try:
            conn.execute("PRAGMA busy_timeout = 250")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE space_probe (b BLOB)")
                conn.execute("INSERT INTO space_probe VALUES (zeroblob(?))", [SPACE_PROBE_BYTES // page_size * page_size])
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            with tempfile.TemporaryFile(dir=self.path.parent, prefix=".space-probe-") as probe:
                probe.write(bytes(SPACE_PROBE_BYTES))
                probe.flush()
                os.fsync(probe.fileno())
        except (sqlite3.Error, OSError) as exc:
            log.debug("the registry's disk is still full: %s", exc)
            return False
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        return True

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
