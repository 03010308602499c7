"""The registry's v9 step: a v8 registry file migrates keeping its data (a backup first), and the transfer tables keep
themselves right: deleting a node takes the transfers to it and its exclusions along, a deleted source leaves its
transfers without one, and the listings read from indexes."""
from __future__ import annotations

import sqlite3

import pytest

from modelsync.server.auth import issue_token, token_hash
from modelsync.server.registry import Registry
from modelsync.server.transfers import store
from modelsync.server.transfers import get_transfer, list_transfers, order_transfer, report_progress, set_files_url
from modelsync.shared.catalog import MIGRATIONS, SCHEMA_VERSION, open_catalog, schema_version, write_transaction
from modelsync.shared.inventory import Inventory, InventoryFile
from modelsync.shared.inventory_apply import apply_inventory

SHA = "ab" * 32


def lora(path: str) -> InventoryFile:
    return InventoryFile(path=path, rel_name="style.safetensors", role="lora", size=1000, mtime_ns=7, sha256=SHA,
                         type="lora", base="sdxl")


def v8_registry(path) -> None:
    db = open_catalog(path)
    for version, step in enumerate(MIGRATIONS[:8], start=1):
        with write_transaction(db):
            step(db)
            db.conn.execute(f"PRAGMA user_version = {version}")
    db.conn.close()


def test_a_v8_registry_migrates_to_v9_keeping_its_data(tmp_path):
    path = tmp_path / "registry.db"
    v8_registry(path)
    db = open_catalog(path)
    token = issue_token(db, "a")
    apply_inventory(db, Inventory("a", files=[lora("/m/style.safetensors")]))
    # registry_versions is bookkeeping: later steps add their own change counters to it
    before = {table: db[table].count for table in db.table_names() if table != "registry_versions"}
    db.conn.close()

    registry = Registry(path, tmp_path / "backups")
    assert registry.open() == list(range(9, SCHEMA_VERSION + 1))
    db = registry.db()
    assert schema_version(db) == SCHEMA_VERSION
    assert {table: db[table].count for table in before} == before
    assert db.conn.execute("SELECT token_hash, files_url FROM servers").fetchall() == [(token_hash(token), None)]
    assert {"transfers", "transfer_source_exclusions"} <= set(db.table_names())
    [backup] = (tmp_path / "backups").glob("*before-v9*")
    assert sqlite3.connect(backup).execute("PRAGMA user_version").fetchone()[0] == 8
    issue_token(db, "b")
    transfer, created = order_transfer(db, server_id="b", sha256=SHA, requested_by="admin")
    assert created and transfer.size == 1000
    registry.close()


@pytest.fixture
def db(tmp_path):
    registry = Registry(tmp_path / "registry.db", tmp_path / "backups")
    registry.open()
    yield registry.db()
    registry.close()


def delete_node(db, server_id: str) -> None:
    """As DELETE /api/v1/servers/{id} does."""
    with write_transaction(db):
        for table in ("model_aliases", "model_server_availability", "unusable_files"):
            db.conn.execute(f"DELETE FROM {table} WHERE server_id = ?", [server_id])
        db.conn.execute("DELETE FROM servers WHERE id = ?", [server_id])


def test_deleting_a_node_takes_its_transfers_and_exclusions_and_frees_its_sources(db):
    for node in ("src", "dest", "other"):
        issue_token(db, node)
        set_files_url(db, node, "http://10.0.0.1:7860")
    apply_inventory(db, Inventory("src", files=[lora("/m/style.safetensors")]))
    apply_inventory(db, Inventory("other", files=[lora("/o/style.safetensors")]))
    to_dest, _ = order_transfer(db, server_id="dest", sha256=SHA, from_server_id="src", requested_by="admin")
    report_progress(db, to_dest.id, "dest", state="running", bytes_done=10, source_server_id="src")
    failed = report_progress(db, to_dest.id, "dest", state="failed", bytes_done=10, reason="hash_mismatch")
    assert failed.state == "failed"  # the requested source sent wrong bytes: no other may be used
    assert db["transfer_source_exclusions"].count == 1
    delete_node(db, "src")
    after = get_transfer(db, to_dest.id)
    assert (after.source_server_id, after.requested_source_id) == (None, None)
    assert db["transfer_source_exclusions"].count == 0
    delete_node(db, "dest")
    assert list_transfers(db).total == 0


@pytest.mark.parametrize("sql, index", [(store.ACTIVE_OF_SQL, "idx_transfers_server_id_state"),
                                        (store.STANDING_SQL, "idx_transfers_one_standing")])
def test_a_node_s_transfers_are_read_from_their_indexes(db, sql, index):
    params = ["n", SHA][: sql.count("?")]
    plan = " ".join(row[3] for row in db.conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert f"USING INDEX {index}" in plan, plan


def test_listings_by_node_or_state_read_from_indexes(db):
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    list_transfers(db, state="failed")
    list_transfers(db, server_id="n", state="queued")
    db.conn.set_trace_callback(None)
    reads = [sql for sql in statements if "FROM transfers" in sql]
    assert len(reads) == 4
    for sql in reads:
        plan = " ".join(row[3] for row in db.conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "USING INDEX idx_transfers_" in plan or "USING COVERING INDEX idx_transfers_" in plan, (sql, plan)
