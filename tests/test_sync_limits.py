"""What a node may send: metadata bounded per field (cut with a marker and a warning, never a refused inventory), and
the inventory format of nodes that predate file states still accepted as it is."""
import hashlib
import sqlite3

from support_server import central_server, push_files  # noqa: F401  (fixtures)

from modelsync.shared.inventory import CUT_MARK, FIELD_LIMITS


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(stem: str, **metadata) -> dict:
    return {"path": f"/models/Lora/{stem}.safetensors", "rel_name": f"{stem}.safetensors", "role": "lora", "size": 10,
            "mtime_ns": 1, "sha256": sha(stem), "type": "lora", "metadata": metadata,
            "field_sources": {k: "a1111" for k in metadata}}


def test_oversized_metadata_is_cut_with_a_marker_and_named_in_warnings(central_server):
    huge = "d" * (10 * 1024 * 1024)
    words = [f"word{i}" for i in range(100_000)]
    answer = push_files(central_server, "gpu-01", [
        entry("big", description=huge, trained_words=words, name="n" * 5000, civitai_id=2**70, notes={"not": "text"}),
        entry("fine", description="short"),
    ])
    assert answer["added"] == 2
    warned = {(w["path"], w["field"]) for w in answer["warnings"]}
    assert warned == {("/models/Lora/big.safetensors", f"metadata.{f}")
                      for f in ("description", "trained_words", "name", "civitai_id", "notes")}
    with sqlite3.connect(central_server.db_path) as conn:
        description, trained, name, civitai_id, notes = conn.execute(
            "SELECT description, trained_words, name, civitai_id, notes FROM models WHERE hash_sha256 = ?", [sha("big")]).fetchone()
        assert len(description) == FIELD_LIMITS["description"][1] and description.endswith(CUT_MARK)
        assert len(name) == FIELD_LIMITS["name"][1]
        assert trained.count('"word') == FIELD_LIMITS["trained_words"][1][0]
        assert civitai_id is None and notes is None
        assert conn.execute("SELECT description FROM models WHERE hash_sha256 = ?", [sha("fine")]).fetchone()[0] == "short"
        size = conn.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()").fetchone()[0]
    assert size < 2 * 1024 * 1024  # three such files made a 35 MB registry


def test_warnings_are_capped_and_counted(central_server):
    files = [entry(f"m{i}", description="x" * 70_000) for i in range(130)]
    answer = push_files(central_server, "gpu-01", files)
    assert len(answer["warnings"]) == 100 and answer["warnings_omitted"] == 30


def test_an_inventory_from_a_node_of_the_previous_release_still_syncs(central_server):
    """Format 1 as nodes sent it before file states and unavailable folders existed (no "state", no "unavailable";
    a broken file listed like any other, with its problem)."""
    old = {
        "format": 1, "server_id": "old-node", "display_name": "Old node", "api_url": "http://old:7860",
        "roots": [{"path": "/models/Lora", "role": "lora"}],
        "files": [
            {**entry("hero"), "autov1": None, "autov3": sha("hero-addnet"), "base": "sdxl", "metadata_source": "embedded",
             "has_embedded_metadata": True, "has_preview": False, "problem": None},
            {**entry("garbage"), "sha256": None, "problem": "header is not valid JSON", "has_preview": False},
        ],
        "unhashed": 1,
    }
    r = central_server.post("/api/v1/servers/old-node/models/sync", json=old)
    assert r.status_code == 200, r.text
    assert (r.json()["added"], r.json()["unusable"]) == (2, 0)
    node = next(s for s in central_server.get("/api/v1/servers").json()["servers"] if s["id"] == "old-node")
    assert (node["file_count"], node["unhashed_count"], node["unavailable"]) == (2, 1, [])
    check = central_server.post("/api/v1/servers/old-node/dispatch-check", json={"job": {"prompt": "<lora:hero:1>"}}).json()
    assert check["ok"] is True
