"""The model API over the real server: listing, info, availability, the server's own scan and hashing, reset,
migrations with backups, OpenAPI, errors as JSON."""
import hashlib
import sqlite3

import model_factory
import pytest
from support_server import central_server, make_server, push_files, run_server  # noqa: F401  (fixtures)

from modelsync.shared.catalog import MIGRATIONS, SCHEMA_VERSION, open_catalog, write_transaction


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model_file(content: str, path: str, rel: str, role: str, base: str, **extra) -> dict:
    """A hashed file entry as a node's scan sends it: content type and base also as embedded metadata."""
    metadata = {"type": role, "base": base, **extra.pop("metadata", {})}
    sources = {"type": "embedded", "base": "embedded", **extra.pop("field_sources", {})}
    return {"path": path, "rel_name": rel, "role": role, "size": 100, "sha256": sha(content), "type": role, "base": base,
            "metadata": metadata, "field_sources": sources, **extra}


def lora(content: str, rel: str, base: str = "sdxl", **extra) -> dict:
    return model_file(content, f"/models/Lora/{rel}", rel, "lora", base, **extra)


@pytest.fixture
def fleet(central_server):
    """Two nodes: n1 with three LoRAs and a checkpoint, n2 (Windows paths) with one of the LoRAs."""
    tokens = {}
    tokens["n1"] = push_files(central_server, "n1", [
        lora("hero", "Hero.safetensors", metadata={"name": "Hero"}, field_sources={"name": "a1111"}),
        lora("ink", "styles/Ink.safetensors", base="sd1"),
        lora("zap", "Zap.safetensors"),
        model_file("base", "/models/Stable-diffusion/base.safetensors", "base.safetensors", "checkpoint", "sdxl"),
    ])["token"]
    tokens["n2"] = push_files(central_server, "n2", [
        {**lora("ink", "Sub\\Ink.safetensors", base="sd1"), "path": "C:\\sd\\models\\Lora\\Sub\\Ink.safetensors"}])["token"]
    ids = {m["sha256"]: m["id"] for m in central_server.get("/api/v1/models").json()["models"]}
    return central_server, tokens, ids


def names(answer) -> list[str]:
    return [m["filename"] for m in answer["models"]]


def test_listing_filters_and_pages(fleet):
    server, _, _ = fleet
    get = lambda **p: server.get("/api/v1/models", params=p).json()  # noqa: E731
    assert get()["total"] == 4
    assert names(get(type="checkpoint")) == ["base.safetensors"]
    assert sorted(names(get(base="sd1"))) == ["Ink.safetensors"]
    assert names(get(text="her")) == ["Hero.safetensors"]
    assert names(get(text=sha("zap")[:12])) == ["Zap.safetensors"]
    assert names(get(server="n2")) == ["Ink.safetensors"]
    assert get(availability="online")["total"] == 4
    first, second = get(limit=3, sort="name"), get(limit=3, page=2, sort="name")
    assert first["pages"] == 2 and len(first["models"]) == 3 and len(second["models"]) == 1
    assert set(names(first)) | set(names(second)) == {"Hero.safetensors", "Ink.safetensors", "Zap.safetensors", "base.safetensors"}
    ink = get(text="ink")["models"][0]
    assert (ink["node_count"], ink["online_node_count"]) == (2, 2)


@pytest.mark.parametrize("params, field", [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"sort": "evil"}, "sort"),
                                           ({"availability": "maybe"}, "availability"), ({"order": "sideways"}, "order")])
def test_listing_rejects_bad_parameters(central_server, params, field):
    r = central_server.get("/api/v1/models", params=params)
    assert r.status_code == 400 and r.json()["field"] == field


def test_text_filter_treats_wildcards_literally(fleet):
    server, _, _ = fleet
    assert server.get("/api/v1/models", params={"text": "%"}).json()["total"] == 0


def test_info_has_hashes_files_aliases_and_sources(fleet):
    server, _, ids = fleet
    info = server.get(f"/api/v1/models/{ids[sha('ink')]}/info").json()
    assert info["hash_autov2"] == sha("ink")[:10]
    assert {s["server_id"] for s in info["servers"]} == {"n1", "n2"}
    n2 = next(s for s in info["servers"] if s["server_id"] == "n2")
    assert n2["local_name"] == "Ink" and n2["files"][0]["path"] == "C:\\sd\\models\\Lora\\Sub\\Ink.safetensors"
    assert {"sub/ink.safetensors", "styles/ink.safetensors", "ink"} <= {a["alias"] for a in info["aliases"]}
    hero = server.get(f"/api/v1/models/{ids[sha('hero')]}/info").json()
    assert hero["name"] == "Hero" and hero["field_sources"]["name"] == "a1111"
    assert server.get("/api/v1/models/999999/info").status_code == 404


def test_availability_lists_nodes_with_local_names(fleet):
    server, _, ids = fleet
    answer = server.get(f"/api/v1/models/{ids[sha('ink')]}/availability").json()
    assert answer["available"] is True and answer["online"] is True
    assert {(s["server_id"], s["local_name"]) for s in answer["servers"]} == {("n1", "Ink"), ("n2", "Ink")}
    assert all(s["last_seen"] for s in answer["servers"])
    missing = server.get("/api/v1/models/424242/availability")
    assert missing.status_code == 404 and missing.json() == {"error": "no model with id 424242", "field": "id"}


def test_a_node_marks_and_unmarks_one_model(fleet):
    server, tokens, ids = fleet
    hero = ids[sha("hero")]
    auth = {"Authorization": f"Bearer {tokens['n2']}"}
    r = server.post(f"/api/v1/models/{hero}/availability", json={"server_id": "n2", "path": "D:\\Lora\\Hero.safetensors",
                                                                 "rel_name": "Hero.safetensors", "role": "lora"}, headers=auth)
    assert r.status_code == 200 and r.json()["created"] is True
    nodes = server.get(f"/api/v1/models/{hero}/availability").json()["servers"]
    assert {n["server_id"] for n in nodes} == {"n1", "n2"}
    aliases = {(a["server_id"], a["alias"]) for a in server.get(f"/api/v1/models/{hero}/info").json()["aliases"]}
    assert ("n2", "hero") in aliases

    r = server.delete(f"/api/v1/models/{hero}/availability", params={"server_id": "n2"}, headers=auth)
    assert r.json()["removed"] == 1
    info = server.get(f"/api/v1/models/{hero}/info").json()
    assert {s["server_id"] for s in info["servers"]} == {"n1"}
    assert {a["server_id"] for a in info["aliases"]} == {"n1"}
    assert server.delete(f"/api/v1/models/{hero}/availability", params={"server_id": "n2"}, headers=auth).status_code == 404
    assert server.post(f"/api/v1/models/{hero}/availability", json={}, headers=auth).json()["field"] == "server_id"


def test_servers_list_counts(fleet):
    server, _, _ = fleet
    servers = {s["id"]: s for s in server.get("/api/v1/servers").json()["servers"]}
    assert (servers["n1"]["model_count"], servers["n1"]["file_count"], servers["n1"]["online"]) == (4, 4, True)
    assert servers["n2"]["model_count"] == 1 and servers["n2"]["last_sync"]


@pytest.fixture
def model_path(tmp_path):
    root = tmp_path / "models"
    model_factory.write_lora(root / "Lora" / "a.safetensors", base="sdxl")
    model_factory.write_lora(root / "Lora" / "b.safetensors", base="sd1")
    model_factory.write_checkpoint(root / "Stable-diffusion" / "c.safetensors", base="sd1")
    return root


def test_scan_of_model_path_without_then_with_hashes(make_server, model_path):
    server = make_server(model_paths=[model_path])
    first = server.post("/api/v1/models/scan", json={"calculate_hashes": False}).json()
    assert first["success"] is True and (first["total"], first["added"], first["hashesCalculated"]) == (3, 3, 0)
    assert "Scan complete! Found 3 model files" in first["message"]
    assert server.get("/api/v1/models").json()["total"] == 0
    unhashed = server.get("/api/v1/servers/central/files", params={"unhashed": "1"}).json()
    assert unhashed["total"] == 3

    # hash one file by its id, then the rest with a scan
    one = unhashed["files"][0]
    r = server.post(f"/api/v1/files/{one['id']}/calculate-hash").json()
    assert r["files"][0]["sha256"] == hashlib.sha256(open(one["path"], "rb").read()).hexdigest()
    assert r["model_id"] is not None
    second = server.post("/api/v1/models/scan", json={"calculate_hashes": True}).json()
    assert (second["hashesCalculated"], second["hashesCached"]) == (2, 1)
    models = server.get("/api/v1/models").json()["models"]
    assert {m["sha256"] for m in models} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in model_path.rglob("*.safetensors")}
    servers = server.get("/api/v1/servers").json()["servers"]
    assert servers[0]["id"] == "central" and servers[0]["online"] is True


def test_calculate_hash_notices_changed_content(make_server, model_path):
    server = make_server(model_paths=[model_path])
    server.post("/api/v1/models/scan", json={"calculate_hashes": True})
    target = model_path / "Lora" / "a.safetensors"
    model_id = next(m["id"] for m in server.get("/api/v1/models").json()["models"]
                    if m["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest())
    model_factory.write_lora(target, base="sdxl")  # new content, same path
    result = server.post(f"/api/v1/models/{model_id}/calculate-hash").json()
    assert result["files"][0]["changed"] is True
    assert result["files"][0]["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert server.get(f"/api/v1/models/{model_id}/availability").json()["available"] is False
    assert server.post(f"/api/v1/models/{model_id}/calculate-hash").status_code == 409


def test_scan_and_hash_need_model_path(central_server, fleet):
    server, _, ids = fleet
    r = server.post("/api/v1/models/scan", json={})
    assert r.status_code == 409 and r.json()["field"] == "MODEL_PATH"
    assert server.post(f"/api/v1/models/{ids[sha('hero')]}/calculate-hash").status_code == 409
    assert server.post("/api/v1/models/scan", json={"calculate_hashes": "yes"}).status_code == 400


def test_a_nodes_file_is_never_hashed_by_the_server(make_server, model_path):
    server = make_server(model_paths=[model_path])
    push_files(server, "n1", [{"path": str(model_path / "Lora" / "a.safetensors"), "rel_name": "a.safetensors", "size": 1}])
    file_id = server.get("/api/v1/servers/n1/files").json()["files"][0]["id"]
    r = server.post(f"/api/v1/files/{file_id}/calculate-hash")
    assert r.status_code == 409 and "n1" in r.json()["error"]


def test_reset_database_backs_up_then_empties(fleet):
    server, tokens, _ = fleet
    r = server.post("/api/v1/models/reset-database", headers=server.admin_headers).json()
    assert r["reset"] is True
    backup = sqlite3.connect(r["backup"])
    assert backup.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 4
    backup.close()
    assert server.get("/api/v1/models").json()["total"] == 0
    # nodes keep their identity and token: the next sync refills the registry
    assert push_files(server, "n2", [lora("ink", "Ink.safetensors")], tokens["n2"])["added"] == 1


def test_migrations_run_at_start_after_a_backup(tmp_path):
    db = open_catalog(tmp_path / "registry.db")  # a database as the first release left it
    with write_transaction(db):
        MIGRATIONS[0](db)
        db.execute("PRAGMA user_version = 1")
    db.conn.close()
    with run_server(tmp_path) as server:
        assert server.get("/api/v1/health").json()["schema_version"] == SCHEMA_VERSION
    backups = list((tmp_path / "backups").glob("registry-*-before-v2.db"))
    assert len(backups) == 1
    assert sqlite3.connect(backups[0]).execute("PRAGMA user_version").fetchone()[0] == 1


def test_health_openapi_and_json_errors(central_server):
    health = central_server.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["schema_version"] == SCHEMA_VERSION
    spec = central_server.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/models", "/api/v1/servers/{server_id}/models/sync", "/api/v1/models/{id}/availability",
                 "/api/v1/models/reset-database", "/api/v1/health"):
        assert path in spec["paths"]
    assert set(spec["paths"]["/api/v1/models/{id}/availability"]) == {"get", "post", "delete"}
    r = central_server.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]
    r = central_server.request("PUT", "/api/v1/models")
    assert r.status_code == 405 and r.json()["error"]


def test_preview_404_when_none_is_stored(fleet):
    server, _, ids = fleet
    r = server.get(f"/api/v1/models/{ids[sha('hero')]}/preview")
    assert r.status_code == 404 and r.json()["field"] == "id"


def test_type_lora_includes_the_lycoris_variants(fleet):
    server, _, _ = fleet
    push_files(server, "n3", [{**lora("cond", "Cond.safetensors"), "type": "locon", "metadata": {"type": "locon"}}])
    lora_names = names(server.get("/api/v1/models", params={"type": "lora"}).json())
    assert "Cond.safetensors" in lora_names and "Hero.safetensors" in lora_names
    assert names(server.get("/api/v1/models", params={"type": "locon"}).json()) == ["Cond.safetensors"]
