"""The SQLite schema shared by a node's catalog and the central registry, and its versioned migrations.

One row per distinct content in `models` (by SHA256); one row per file on a server in
`model_server_availability` (a node's own catalog holds one server_id: itself); every name a job may use
in `model_aliases`. A file that has no hash yet has model_id NULL until it is hashed.
"""
from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import sqlite_utils

from .records import METADATA_FIELDS

JSON_COLUMNS = frozenset({"trained_words", "civitai_trained_words", "field_sources", "overrides"})

_MODEL_METADATA_COLUMNS: dict[str, type] = {
    name: (float if name == "preferred_weight" else int if name in ("civitai_id", "civitai_version_id") else str)
    for name in METADATA_FIELDS
}
_MODEL_METADATA_COLUMNS["civitai_file_size_kb"] = float


def _v1_initial(db: sqlite_utils.Database) -> None:
    db["models"].create(
        {
            "id": int,
            "hash_sha256": str,
            "hash_autov1": str,
            "hash_autov2": str,
            "hash_autov3": str,
            "size": int,
            "filename": str,
            "forge_format": str,
            **_MODEL_METADATA_COLUMNS,
            "metadata_source": str,
            "field_sources": str,
            "overrides": str,
            "has_embedded_metadata": int,
            "last_used": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"hash_sha256"},
    )
    db["models"].create_index(["hash_sha256"], unique=True)
    db["models"].create_index(["hash_autov2"])
    db["models"].create_index(["hash_autov1"])
    db["models"].create_index(["hash_autov3"])
    db["models"].create_index(["civitai_version_id"])
    db["models"].create_index(["type"])

    db["servers"].create(
        {
            "id": str,
            "display_name": str,
            "api_url": str,
            "token_hash": str,
            "roots": str,
            "created_at": str,
            "last_sync": str,
            "last_heartbeat": str,
            "last_sync_summary": str,
        },
        pk="id",
    )

    db["model_server_availability"].create(
        {
            "id": int,
            "server_id": str,
            "model_id": int,
            "path": str,
            "rel_name": str,
            "role": str,
            "size": int,
            "mtime_ns": int,
            "last_seen": str,
            "has_preview": int,
            # what the node learnt from the file itself; lets a re-scan of an unchanged file skip reading it
            "content_type": str,
            "content_base": str,
            "embedded": str,
            "problem": str,
        },
        pk="id",
        not_null={"server_id", "path"},
        foreign_keys=[("model_id", "models", "id")],
    )
    db["model_server_availability"].create_index(["server_id", "path"], unique=True)
    db["model_server_availability"].create_index(["model_id", "server_id"])

    db["model_aliases"].create(
        {"id": int, "model_id": int, "server_id": str, "alias": str, "kind": str, "local_name": str},
        pk="id",
        not_null={"model_id", "server_id", "alias", "kind"},
        foreign_keys=[("model_id", "models", "id")],
    )
    db["model_aliases"].create_index(["alias"])
    db["model_aliases"].create_index(["model_id", "server_id", "kind", "alias"], unique=True)
    db["model_aliases"].create_index(["server_id"])

    db["civitai_lookups"].create(
        {
            "sha256": str,
            "status": str,  # found | not_found | error
            "checked_at": str,
            "attempts": int,
            "next_attempt_at": str,
            "version_id": int,
            "error": str,
            "response": str,
        },
        pk="sha256",
    )


def _v2_central_registry(db: sqlite_utils.Database) -> None:
    """Central previews (one per SHA256, fetched once), the digest of each node's last applied inventory (an
    identical re-send is answered without re-applying it), and the indexes the model listing filters on."""
    db["model_previews"].create(
        {
            "sha256": str,
            "status": str,  # stored | failed
            "source_url": str,
            "content_type": str,
            "width": int,
            "height": int,
            "bytes": int,
            "checked_at": str,
            "error": str,
        },
        pk="sha256",
    )
    db["servers"].add_column("inventory_digest", str)
    db["models"].create_index(["base"])
    db["models"].create_index(["name"])
    db["model_server_availability"].create_index(["server_id", "model_id"])


def _v3_job_checks(db: sqlite_utils.Database) -> None:
    """What the job checks need: the per-reference counter of models jobs asked for and no node had (the
    most-wanted list), an index to find a fleet's embeddings by role (a prompt is matched against them), and the
    alias index made covering (a job's names are looked up without touching the table)."""
    db["wanted_models"].create(
        {
            "id": int,
            "kind": str,  # the kind the job named it as: checkpoint, lora, vae, ...
            "reference_key": str,  # "sha256:<hex>", "autov2:<hex>", "name:<normalised>", "civitai_version_id:<n>"
            "reference": str,  # as a job last wrote it
            "model_id": int,  # set when the registry knows the model (no node holds it)
            "requests": int,
            "first_wanted": str,
            "last_wanted": str,
        },
        pk="id",
        not_null={"kind", "reference_key", "requests"},
        foreign_keys=[("model_id", "models", "id")],
    )
    db["wanted_models"].create_index(["kind", "reference_key"], unique=True)
    db["wanted_models"].create_index(["requests"])
    db["model_server_availability"].create_index(["role", "content_type"])
    db["model_aliases"].create_index(["alias", "kind", "model_id", "server_id"])
    db.conn.execute("DROP INDEX idx_model_aliases_alias")


def _v4_rejected_matches(db: sqlite_utils.Database) -> None:
    """Civitai matches an operator marked wrong: a lookup answer or a Civitai sidecar naming a rejected version of a
    model is never applied to that model again."""
    db["civitai_rejections"].create({"sha256": str, "version_id": int, "rejected_at": str}, pk=("sha256", "version_id"))


def _v5_copies_by_model(db: sqlite_utils.Database) -> None:
    """A model's files on every node, read from the index alone: a job check reads a few index pages instead of a
    table page per node holding the model. (The narrower (model_id, server_id) index stays: node counts read less.)"""
    db["model_server_availability"].create_index(["model_id", "server_id", "path", "rel_name", "role", "content_type"])



def _v6_embedding_set_version(db: sqlite_utils.Database) -> None:
    """A counter that changes only when the fleet's set of embeddings may have changed (a file that is or was an
    embedding written, a model's type changed), so the job checks' embedding matcher survives heartbeats and every
    other write; kept by triggers, whoever writes."""
    db["registry_versions"].create({"topic": str, "version": int}, pk="topic", not_null={"version"})
    db["registry_versions"].insert({"topic": "embeddings", "version": 0})
    bump = "UPDATE registry_versions SET version = version + 1 WHERE topic = 'embeddings';"
    is_embedding = "({row}.role IS NULL OR {row}.role IN ('embedding', 'other'))"  # content decides without a role
    for event, condition in (
        ("INSERT", is_embedding.format(row="NEW")),
        ("DELETE", is_embedding.format(row="OLD")),
        ("UPDATE", f"{is_embedding.format(row='OLD')} OR {is_embedding.format(row='NEW')}"),
    ):
        db.conn.execute(f"""CREATE TRIGGER embedding_set_{event.lower()} AFTER {event} ON model_server_availability
                            WHEN {condition} BEGIN {bump} END""")
    db.conn.execute(f"CREATE TRIGGER embedding_set_type AFTER UPDATE OF type ON models BEGIN {bump} END")

def _v7_unusable_files(db: sqlite_utils.Database) -> None:
    """Files a node lists that no job may use: "broken" (not a whole model) and "unreachable" (under a folder that
    cannot be read now), with the reason and since when. Kept apart from `model_server_availability`, so every
    read of what a node can load stays as it is; an unreachable file keeps its model_id (its hashes) for the day
    its folder is back. `servers.unavailable` holds the node's unreadable folders (JSON)."""
    db["unusable_files"].create(
        {
            "id": int,
            "server_id": str,
            "path": str,
            "state": str,
            "reason": str,
            "since": str,
            "last_seen": str,
            "model_id": int,
            "rel_name": str,
            "role": str,
            "size": int,
            "mtime_ns": int,
            "has_preview": int,
            "content_type": str,
            "content_base": str,
            "embedded": str,
        },
        pk="id",
        not_null={"server_id", "path", "state"},
        foreign_keys=[("model_id", "models", "id")],
    )
    db["unusable_files"].create_index(["server_id", "path"], unique=True)
    db["unusable_files"].create_index(["model_id"])
    db["servers"].add_column("unavailable", str)


def _v8_node_previews(db: sqlite_utils.Database) -> None:
    """A model's preview may come from a node (its own `<stem>.preview.jpeg`, which the operator chose: it wins over
    Civitai's); `source_server` names that node (NULL: Civitai's)."""
    db["model_previews"].add_column("source_server", str)


def _v9_transfers(db: sqlite_utils.Database) -> None:
    """Transfer orders: a model copied to the node that needs it (`server_id`, the destination), from a source of
    `source_kind` ('peer': another node, `source_server_id` the one in use, `requested_source_id` when the order
    names one; 'civitai' and 'url' later, `source_ref` then holds the version or the URL). `reason` is the last
    failure's stable word and `reason_at` when it was set. At most one transfer per (node, SHA256) is active or
    failed: a failed one stands until it is retried (the partial unique index). Deleting a node deletes the
    transfers to it and its exclusions; a source deleted leaves its transfers without one.
    `transfer_source_exclusions`: a source that sent wrong bytes is not used for that SHA256 until its file has
    another mtime_ns (hashed again). `servers.files_url`: the base URL peers fetch that node's files from."""
    states = "'queued', 'running', 'waiting_source', 'verifying', 'done', 'failed', 'cancelled'"
    db.conn.execute(f"""
        CREATE TABLE transfers (
            id INTEGER PRIMARY KEY,
            server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            model_id INTEGER REFERENCES models(id),
            state TEXT NOT NULL CHECK (state IN ({states})),
            source_kind TEXT NOT NULL CHECK (source_kind IN ('peer', 'civitai', 'url')),
            source_server_id TEXT REFERENCES servers(id) ON DELETE SET NULL,
            requested_source_id TEXT REFERENCES servers(id) ON DELETE SET NULL,
            source_ref TEXT,
            bytes_done INTEGER NOT NULL DEFAULT 0,
            size INTEGER,
            speed_bps REAL,
            eta_seconds REAL,
            dest_path TEXT,
            rel_name TEXT,
            role TEXT,
            reason TEXT,
            error TEXT,
            reason_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            requested_by TEXT NOT NULL CHECK (requested_by IN ('admin', 'node', 'queue')),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            finished_at TEXT
        )""")
    db.conn.execute("CREATE INDEX idx_transfers_server_id_state ON transfers (server_id, state)")
    db.conn.execute("CREATE INDEX idx_transfers_state ON transfers (state)")
    db.conn.execute("""CREATE UNIQUE INDEX idx_transfers_one_standing ON transfers (server_id, sha256)
                       WHERE state IN ('queued', 'running', 'waiting_source', 'verifying', 'failed')""")
    db.conn.execute("""
        CREATE TABLE transfer_source_exclusions (
            source_server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            mtime_ns INTEGER,
            since TEXT NOT NULL,
            PRIMARY KEY (source_server_id, sha256)
        )""")
    db["servers"].add_column("files_url", str)


def _v10_downloads(db: sqlite_utils.Database) -> None:
    """Transfers from Civitai and URLs (issue #12, the transfer orders' download sources). A 'civitai' transfer
    keeps what its order and the API show: the Civitai model, version and file (ids and names); `source_ref` holds
    the version id, or for a 'url' transfer the URL as ordered (its query may hold a token: never shown).
    `civitai_versions`: the model-version JSON a download order hands the node (one row per version)."""
    for column, kind in (("civitai_model_id", "INTEGER"), ("civitai_model_name", "TEXT"),
                         ("civitai_version_id", "INTEGER"), ("civitai_version_name", "TEXT"),
                         ("civitai_file_id", "INTEGER"), ("civitai_file_name", "TEXT")):
        db.conn.execute(f"ALTER TABLE transfers ADD COLUMN {column} {kind}")
    db.conn.execute("""
        CREATE TABLE civitai_versions (
            version_id INTEGER PRIMARY KEY,
            data TEXT NOT NULL,
            fetched_at TEXT NOT NULL
        )""")


def _v11_civitai_updates(db: sqlite_utils.Database) -> None:
    """Civitai update checks (issue #12). `civitai_update_checks`: one row per Civitai model id the fleet holds a
    version of: when it was last answered (`checked_at`, the answer's versions in `answer`, JSON), when it is due again
    (`next_check_at`), and the consecutive failures (`attempts`, `error`; a failure never changes an answer).
    `civitai_updates`: per registry model, the newer version found for the version it holds (`held_version_id`;
    `version_id` NULL: none newer), with the version's JSON for ordering it."""
    db.conn.execute("""
        CREATE TABLE civitai_update_checks (
            civitai_model_id INTEGER PRIMARY KEY,
            checked_at TEXT,
            next_check_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            answer TEXT
        )""")
    db.conn.execute("CREATE INDEX idx_civitai_update_checks_next_check_at ON civitai_update_checks (next_check_at)")
    db.conn.execute("""
        CREATE TABLE civitai_updates (
            model_id INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
            civitai_model_id INTEGER NOT NULL,
            held_version_id INTEGER NOT NULL,
            version_id INTEGER,
            name TEXT,
            published_at TEXT,
            base_model TEXT,
            download_url TEXT,
            version TEXT,
            checked_at TEXT NOT NULL
        )""")
    db.conn.execute("CREATE INDEX idx_civitai_updates_version_id ON civitai_updates (version_id)")


def _v12_node_state(db: sqlite_utils.Database) -> None:
    """What each node is doing (issue #13): loaded checkpoint, busy, free disk, GPU memory, as its last heartbeat
    reported it. `modules` and `disks` hold JSON lists; `busy` 0/1 (NULL: unknown). The counter
    `registry_versions.node_states`, kept by triggers whoever writes, lets the job checks keep the states in memory
    and notice in one read that someone else changed them."""
    db.conn.execute("""
        CREATE TABLE node_states (
            server_id TEXT PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
            reported_at TEXT NOT NULL,
            loaded_title TEXT,
            loaded_sha256 TEXT,
            selected_title TEXT,
            selected_sha256 TEXT,
            modules TEXT,
            busy INTEGER,
            gpu_total_bytes INTEGER,
            gpu_free_bytes INTEGER,
            disks TEXT,
            floor_bytes INTEGER
        )""")
    db["registry_versions"].insert({"topic": "node_states", "version": 0})
    for event in ("INSERT", "UPDATE", "DELETE"):
        db.conn.execute(f"""CREATE TRIGGER node_states_{event.lower()} AFTER {event} ON node_states BEGIN
                            UPDATE registry_versions SET version = version + 1 WHERE topic = 'node_states'; END""")


def _v13_demand(db: sqlite_utils.Database) -> None:
    """Demand analytics (issue #13): how often pre-submission job checks named each model, and how often no online
    node held it (`unmet`), per hour (UTC; `hour` is the hour's start as TIME_FORMAT text; rows older than 90 days
    are pruned). `model_key` is "sha256:<hex>" for a model the registry knows (`model_id` then set), else the
    reference as the wanted list keys it ("name:<normalised>", "civitai_version_id:<n>", ...). `demand_recording`
    holds when counting began (nothing is called cold before it has gone on for 30 days)."""
    db.conn.execute("""
        CREATE TABLE demand_hourly (
            hour TEXT NOT NULL,
            kind TEXT NOT NULL,
            model_key TEXT NOT NULL,
            model_id INTEGER REFERENCES models(id) ON DELETE SET NULL,
            label TEXT,
            requests INTEGER NOT NULL,
            unmet INTEGER NOT NULL,
            PRIMARY KEY (hour, kind, model_key)
        )""")
    db.conn.execute("CREATE INDEX idx_demand_hourly_model_key ON demand_hourly (model_key, hour)")
    db.conn.execute("CREATE INDEX idx_demand_hourly_model_id ON demand_hourly (model_id)")
    db.conn.execute("CREATE TABLE demand_recording (id INTEGER PRIMARY KEY CHECK (id = 1), started_at TEXT NOT NULL)")
    db.conn.execute("INSERT INTO demand_recording (id, started_at) VALUES (1, ?)", [utc_now()])


def _v14_webhooks(db: sqlite_utils.Database) -> None:
    """Signed webhooks (issue #13): endpoints, the durable outbox, deliveries.
    `webhook_deliveries` is the outbox and the delivery log at once: one row per (event, endpoint), delivered in id
    order per endpoint; `message_id` is the webhook-id every try of it carries; `next_attempt_at` is Unix seconds
    (retry delays may be shorter than a second). `dropped` counts what the backlog cap threw away.
    `webhook_node_watch`, `webhook_lost_models`, `webhook_blocked_refs`: the last judged state of what the events
    are about (a node online, its disk low; a used model without an online holder; a reference reported blocked),
    so a restart sends no event again."""
    db.conn.execute("""
        CREATE TABLE webhook_endpoints (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            description TEXT,
            secret TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            disabled_reason TEXT,
            disabled_at TEXT,
            dropped INTEGER NOT NULL DEFAULT 0,
            dropped_last_at TEXT,
            created_at TEXT NOT NULL
        )""")
    db.conn.execute("""
        CREATE TABLE webhook_deliveries (
            id INTEGER PRIMARY KEY,
            endpoint_id INTEGER NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
            message_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_attempt_at TEXT,
            last_status INTEGER,
            last_error TEXT,
            created_at TEXT NOT NULL,
            finished_at TEXT
        )""")
    db.conn.execute("CREATE INDEX idx_webhook_deliveries_endpoint_state ON webhook_deliveries (endpoint_id, state, id)")
    db.conn.execute("CREATE INDEX idx_webhook_deliveries_state ON webhook_deliveries (state, endpoint_id)")
    db.conn.execute("""
        CREATE TABLE webhook_node_watch (
            server_id TEXT PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
            online INTEGER NOT NULL,
            disk_low INTEGER NOT NULL DEFAULT 0,
            judged_at TEXT NOT NULL
        )""")
    db.conn.execute("""
        CREATE TABLE webhook_lost_models (
            model_id INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
            since TEXT NOT NULL
        )""")
    db.conn.execute("""
        CREATE TABLE webhook_blocked_refs (
            kind TEXT NOT NULL,
            reference_key TEXT NOT NULL,
            last_sent_at TEXT NOT NULL,
            PRIMARY KEY (kind, reference_key)
        )""")


# Append new steps; never edit a released one. Step i brings the schema to version i + 1.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_initial,
    _v2_central_registry,
    _v3_job_checks,
    _v4_rejected_matches,
    _v5_copies_by_model,
    _v6_embedding_set_version,
    _v7_unusable_files,
    _v8_node_previews,
    _v9_transfers,
    _v10_downloads,
    _v11_civitai_updates,
    _v12_node_state,
    _v13_demand,
    _v14_webhooks,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def open_catalog(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) a catalog database in WAL mode; does not migrate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return sqlite_utils.Database(conn)


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # every timestamp a catalog stores: UTC, sorts as text
SQL_VARIABLES = 500  # values per `IN (...)` list, well under SQLite's limit


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


def chunks(items: list, size: int = SQL_VARIABLES) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def placeholders(values: list) -> str:
    """`?, ?, ?` for an `IN (...)` list of these values."""
    return ",".join("?" * len(values))


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so concurrent writers queue instead of
    deadlocking on a lock upgrade. sqlite-utils calls inside nest as savepoints. Inside a write transaction
    already, it joins that one: several steps commit together or not at all."""
    if db.conn.in_transaction:
        yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


@contextlib.contextmanager
def read_snapshot(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Several reads that see one state of the database (a read transaction), not a writer's commit between two
    of them; inside a transaction already, that one's."""
    if db.conn.in_transaction:
        yield db
        return
    db.conn.execute("BEGIN")
    try:
        yield db
    finally:
        if db.conn.in_transaction:
            db.conn.execute("COMMIT")


def migrate(db: sqlite_utils.Database, before_step: Callable[[int], None] | None = None) -> list[int]:
    """Bring the schema up to SCHEMA_VERSION; `before_step(version)` runs before each step (backups)."""
    applied = []
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise RuntimeError(f"database schema version {current} is newer than this modelsync ({SCHEMA_VERSION})")
    for version in range(current, SCHEMA_VERSION):
        if before_step is not None:
            before_step(version + 1)
        with write_transaction(db):
            MIGRATIONS[version](db)
            db.conn.execute(f"PRAGMA user_version = {version + 1}")
        applied.append(version + 1)
    return applied


def adopt_node_id(db: sqlite_utils.Database, server_id: str) -> str | None:
    """In a node's own catalog, which holds one node: the rows kept under a previous id become this id's, so a
    renamed node hashes nothing again. Returns the previous id, if there was one."""
    ids = {row[0] for row in db.conn.execute(
        "SELECT server_id FROM model_server_availability UNION SELECT server_id FROM unusable_files")}
    if server_id in ids or len(ids) != 1:
        return None
    previous = ids.pop()
    with write_transaction(db):
        for table in ("model_server_availability", "model_aliases", "unusable_files"):
            db.conn.execute(f"UPDATE {table} SET server_id = ? WHERE server_id = ?", [server_id, previous])
    return previous
