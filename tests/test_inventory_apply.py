import hashlib

import pytest

from modelsync.shared import inventory_apply
from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.inventory import Inventory, InventoryFile
from modelsync.shared.inventory_apply import apply_inventory


@pytest.fixture
def db(tmp_path):
    catalog = open_catalog(tmp_path / "registry.db")
    migrate(catalog)
    return catalog


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lora_file(path: str, rel: str, content: str, **metadata) -> InventoryFile:
    sources = {k: "a1111" for k in metadata}
    return InventoryFile(
        path=path, rel_name=rel, role="lora", size=10, mtime_ns=1, sha256=sha(content), type="lora", base="sdxl",
        metadata=metadata, field_sources=sources, metadata_source="a1111" if metadata else None,
    )


def total_changes(db) -> int:
    return db.execute("SELECT total_changes()").fetchone()[0]


def test_reapplying_the_same_inventory_writes_nothing(db):
    inv = Inventory("n1", files=[lora_file("/m/a.safetensors", "a.safetensors", "A", description="d"),
                                 lora_file("/m/b.safetensors", "b.safetensors", "B")])
    first = apply_inventory(db, inv)
    assert (first.added, first.updated, first.removed) == (2, 0, 0)
    before = total_changes(db)
    second = apply_inventory(db, inv)
    assert (second.added, second.updated, second.removed, second.unchanged) == (0, 0, 0, 2)
    assert total_changes(db) == before


def test_a_node_changes_only_its_own_rows(db):
    apply_inventory(db, Inventory("n1", files=[lora_file("/m/a.safetensors", "a.safetensors", "A")]))
    apply_inventory(db, Inventory("n2", files=[lora_file("D:\\m\\a.safetensors", "a.safetensors", "A")]))
    result = apply_inventory(db, Inventory("n2", files=[]))
    assert result.removed == 1
    rows = list(db.query("SELECT server_id FROM model_server_availability"))
    assert rows == [{"server_id": "n1"}]
    assert {r["server_id"] for r in db.query("SELECT DISTINCT server_id FROM model_aliases")} == {"n1"}
    assert db["models"].count == 1  # models stay when no node has them


def test_null_fields_are_filled_never_overwritten_and_overrides_win(db):
    apply_inventory(db, Inventory("n1", files=[lora_file("/a.safetensors", "a.safetensors", "A", description="first")]))
    model_id = db["models"].get(1)["id"]
    db.execute("UPDATE models SET name = 'Operator name', overrides = '{\"name\": \"Operator name\"}' WHERE id = ?", [model_id])
    result = apply_inventory(db, Inventory("n2", files=[
        lora_file("/b.safetensors", "b.safetensors", "A", description="second", notes="note", name="node name")]))
    model = db["models"].get(model_id)
    assert model["description"] == "first" and model["notes"] == "note" and model["name"] == "Operator name"
    assert result.changed_models == {model_id}


def test_windows_paths_give_the_same_aliases(db):
    f = lora_file("C:\\sd\\models\\Lora\\Sub\\Hero.safetensors", "Sub\\Hero.safetensors", "H")
    apply_inventory(db, Inventory("win", files=[f]))
    aliases = {(r["kind"], r["alias"], r["local_name"]) for r in db.query("SELECT kind, alias, local_name FROM model_aliases")}
    assert ("rel_name", "sub/hero.safetensors", "Hero") in aliases
    assert ("stem", "hero", "Hero") in aliases


def test_unhashed_file_is_listed_then_attached_when_hashed(db):
    f = lora_file("/a.safetensors", "a.safetensors", "A")
    unhashed = InventoryFile(path=f.path, rel_name=f.rel_name, role="lora", size=10, mtime_ns=1)
    assert apply_inventory(db, Inventory("n1", files=[unhashed])).added == 1
    assert db["models"].count == 0
    result = apply_inventory(db, Inventory("n1", files=[f]))
    assert (result.added, result.updated) == (0, 1)
    row = next(db.query("SELECT model_id FROM model_server_availability"))
    assert row["model_id"] == db["models"].get(1)["id"]


def test_a_failure_mid_apply_leaves_the_catalog_as_it_was(db, monkeypatch):
    apply_inventory(db, Inventory("n1", files=[lora_file("/a.safetensors", "a.safetensors", "A")]))
    before = {t: db[t].count for t in ("models", "model_server_availability", "model_aliases")}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(inventory_apply, "_desired_aliases", boom)
    with pytest.raises(RuntimeError):
        apply_inventory(db, Inventory("n1", files=[lora_file("/b.safetensors", "b.safetensors", "B")]))
    assert {t: db[t].count for t in before} == before
    assert not db.conn.in_transaction
