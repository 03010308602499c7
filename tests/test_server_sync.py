"""Inventory sync against the real server: inventories from real scans of generated model trees."""
import gzip
import hashlib
import json
import os

import model_factory
import pytest
from support_server import central_server, make_server, wait_for  # noqa: F401  (fixtures)

from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.inventory import Inventory, InventoryFile
from modelsync.shared.push_client import NodeCredentials, PushError, ServerClient, preview_path
from modelsync.shared.records import Root
from modelsync.shared.scan.scanner import scan


def sha256_of(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


class Node:
    """A node: its model folders, its own catalog, and its client to the central server."""

    def __init__(self, tmp_path, server, server_id: str):
        self.root = tmp_path / server_id / "models"
        self.catalog = open_catalog(tmp_path / server_id / "catalog.db")
        migrate(self.catalog)
        self.server_id = server_id
        self.client = ServerClient(server.base_url, NodeCredentials.load(tmp_path / server_id, server_id), retries=0)

    def roots(self) -> list[Root]:
        return [Root(str(self.root / "Lora"), "lora"), Root(str(self.root / "Stable-diffusion"), "checkpoint")]

    def scan(self) -> Inventory:
        for root in self.roots():
            os.makedirs(root.path, exist_ok=True)
        report = scan(self.roots(), self.catalog, self.server_id, calculate_hashes=True, workers=1,
                      display_name=f"Node {self.server_id}", api_url=f"http://{self.server_id}:7860")
        return report.inventory

    def push(self) -> dict:
        return self.client.push_inventory(self.scan())


@pytest.fixture
def node(tmp_path, central_server):
    n = Node(tmp_path, central_server, "gpu-01")
    model_factory.write_lora(n.root / "Lora" / "hero.safetensors", base="sdxl", metadata={"ss_output_name": "hero_v1"})
    model_factory.write_lora(n.root / "Lora" / "styles" / "ink.safetensors", base="sd1")
    model_factory.write_checkpoint(n.root / "Stable-diffusion" / "base.safetensors", base="sdxl")
    return n


def test_first_sync_registers_adds_everything_and_a_resend_changes_nothing(node, central_server):
    answer = node.push()
    assert (answer["added"], answer["updated"], answer["removed"]) == (3, 0, 0)
    assert answer["registered"] is True and len(answer["token"]) >= 16
    assert node.client.credentials.token == answer["token"]

    models = central_server.get("/api/v1/models", params={"limit": 10}).json()
    expected = {sha256_of(p) for p in (node.root / "Lora" / "hero.safetensors", node.root / "Lora" / "styles" / "ink.safetensors",
                                       node.root / "Stable-diffusion" / "base.safetensors")}
    assert {m["sha256"] for m in models["models"]} == expected and models["total"] == 3

    db = open_catalog(central_server.db_path)
    changes_before = db.execute("SELECT COUNT(*), MAX(last_seen) FROM model_server_availability").fetchone()
    again = node.push()
    assert (again["added"], again["updated"], again["removed"], again["unchanged"]) == (0, 0, 0, 3)
    assert again["registered"] is False and "token" not in again
    assert db.execute("SELECT COUNT(*), MAX(last_seen) FROM model_server_availability").fetchone() == changes_before
    summary = central_server.get("/api/v1/servers").json()["servers"][0]["last_sync_summary"]
    assert (summary["added"], summary["unchanged"], summary["files"]) == (0, 3, 3)  # not the first sync's "added 3"


def test_files_the_node_no_longer_has_are_removed_but_models_stay(node, central_server):
    node.push()
    (node.root / "Lora" / "styles" / "ink.safetensors").unlink()
    answer = node.push()
    assert answer["removed"] == 1
    assert central_server.get("/api/v1/models").json()["total"] == 3
    missing = central_server.get("/api/v1/models", params={"availability": "missing"}).json()
    assert [m["filename"] for m in missing["models"]] == ["ink.safetensors"]


def test_answer_returns_metadata_the_registry_has_and_the_node_lacks(node, tmp_path, central_server):
    node.push()
    hero = node.root / "Lora" / "hero.safetensors"
    other = Node(tmp_path, central_server, "gpu-02")
    other.root.joinpath("Lora").mkdir(parents=True)
    # the other node holds the same file with an A1111 user-metadata sidecar
    (other.root / "Lora" / "hero.safetensors").write_bytes(hero.read_bytes())
    (other.root / "Lora" / "hero.json").write_text(json.dumps({"description": "A hero", "activation text": "hero pose"}))
    other.push()

    answer = node.push()
    enriched = answer["enriched"][sha256_of(hero)]
    assert enriched["metadata"]["description"] == "A hero"
    assert enriched["metadata"]["trained_words"] == ["hero pose"]
    assert enriched["field_sources"]["description"] == "a1111"
    assert "output_name" not in enriched["metadata"]  # the node sent that one itself


def test_gzip_body_is_accepted(node, central_server):
    body = gzip.compress(node.scan().to_json())
    r = central_server.post("/api/v1/servers/gpu-01/models/sync", data=body,
                            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["added"] == 3


def test_truncated_gzip_is_a_clear_400(node, central_server):
    body = gzip.compress(node.scan().to_json())
    r = central_server.post("/api/v1/servers/gpu-01/models/sync", data=body[: len(body) // 2],
                            headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert r.json() == {"error": "the gzip body is truncated", "field": "body"}
    assert central_server.get("/api/v1/models").json()["total"] == 0


def test_zip_bomb_stops_at_the_decompressed_limit(make_server):
    server = make_server(max_decompressed_bytes=1_000_000)
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")
    assert len(bomb) < 100_000
    r = server.post("/api/v1/servers/n1/models/sync", data=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert "decompresses to more than 1000000 bytes" in r.json()["error"]


def test_body_and_entry_count_limits_name_the_problem(make_server):
    server = make_server(max_request_bytes=2000, max_inventory_files=2)
    r = server.post("/api/v1/servers/n1/models/sync", data=b"x" * 5000)
    assert r.status_code == 413 and r.json()["field"] == "body" and "limit is 2000" in r.json()["error"]
    files = [{"path": f"/m/{i}.safetensors", "size": 1} for i in range(3)]
    r = server.post("/api/v1/servers/n1/models/sync", json={"format": 1, "server_id": "n1", "files": files})
    assert r.status_code == 413
    assert r.json() == {"error": "the inventory lists 3 files; the limit is 2", "field": "files"}


@pytest.mark.parametrize(
    "body, status, field",
    [
        (b"{not json", 400, "body"),
        (b"[]", 400, "body"),
        (json.dumps({"format": 2, "server_id": "n1", "files": []}).encode(), 400, "format"),
        (json.dumps({"format": 1, "server_id": "n2", "files": []}).encode(), 400, "server_id"),
        (json.dumps({"format": 1, "server_id": "n1", "files": [{"path": "/a", "size": -1}]}).encode(), 400, "files[0].size"),
        (json.dumps({"format": 1, "server_id": "n1", "files": [{"path": "/a", "size": 1, "sha256": "xyz"}]}).encode(), 400,
         "files[0].sha256"),
    ],
)
def test_bad_inventories_are_rejected_naming_the_field(central_server, body, status, field):
    r = central_server.post("/api/v1/servers/n1/models/sync", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    assert r.json()["field"] == field and r.json()["error"]
    assert central_server.get("/api/v1/servers").json()["servers"] == []  # nothing registered by a bad request


def test_unsupported_encoding_and_bad_server_id(central_server):
    r = central_server.post("/api/v1/servers/n1/models/sync", data=b"{}", headers={"Content-Encoding": "br"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Encoding"
    r = central_server.post("/api/v1/servers/bad id!/models/sync", json={})
    assert r.status_code == 400 and r.json()["field"] == "server_id"


def test_unhashed_files_are_listed_then_attached(central_server, tmp_path):
    client = ServerClient(central_server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0)
    unhashed = InventoryFile(path="/m/a.safetensors", rel_name="a.safetensors", role="lora", size=5, mtime_ns=1)
    assert client.push_inventory(Inventory("n1", files=[unhashed]))["added"] == 1
    files = central_server.get("/api/v1/servers/n1/files", params={"unhashed": "true"}).json()
    assert files["total"] == 1 and files["files"][0]["model_id"] is None
    sha = hashlib.sha256(b"A").hexdigest()
    hashed = InventoryFile(path="/m/a.safetensors", rel_name="a.safetensors", role="lora", size=5, mtime_ns=1, sha256=sha)
    answer = client.push_inventory(Inventory("n1", files=[hashed]))
    assert (answer["added"], answer["updated"]) == (0, 1)
    assert central_server.get("/api/v1/servers/n1/files", params={"unhashed": "true"}).json()["total"] == 0


def test_heartbeat_keeps_a_node_online_and_silence_makes_it_offline(make_server, tmp_path):
    server = make_server(offline_after_seconds=5)  # room for a loaded machine between the heartbeat and the read
    client = ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0)
    first = client.heartbeat(display_name="Node one", api_url="http://10.0.0.5:7860")
    assert first["registered"] is True and client.credentials.token
    listed = server.get("/api/v1/servers").json()["servers"][0]
    assert (listed["id"], listed["display_name"], listed["api_url"], listed["online"]) == ("n1", "Node one", "http://10.0.0.5:7860", True)
    wait_for(lambda: server.get("/api/v1/servers").json()["servers"][0]["online"] is False, timeout=30)
    client.heartbeat()
    assert server.get("/api/v1/servers").json()["servers"][0]["online"] is True


def test_push_client_reports_refusals(central_server, tmp_path):
    client = ServerClient(central_server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0)
    client.heartbeat()
    intruder = ServerClient(central_server.base_url, NodeCredentials("n1", "x" * 40), retries=0)
    with pytest.raises(PushError) as error:
        intruder.heartbeat()
    assert error.value.status == 403 and error.value.field == "Authorization"
    unreachable = ServerClient("http://127.0.0.1:9", NodeCredentials("n1"), retries=0)
    with pytest.raises(PushError, match="nothing listens at http://127.0.0.1:9/ .connection refused.: is `modelsync serve`"):
        unreachable.heartbeat()
    with pytest.raises(PushError, match="unknown host 'no-such-host.invalid': check the server URL"):
        ServerClient("http://no-such-host.invalid:8188", NodeCredentials("n1"), retries=0).heartbeat()
    with pytest.raises(PushError, match="write it with its scheme, e.g. http://127.0.0.1:8188"):
        ServerClient("127.0.0.1:8188", NodeCredentials("n1"))
    with pytest.raises(PushError, match="not as a modelsync server does"):
        ServerClient(central_server.base_url + "/dashboard/", NodeCredentials("n1"), retries=0).heartbeat()


def test_preview_path_is_beside_the_model():
    assert preview_path("/m/Lora/hero.safetensors") == "/m/Lora/hero.preview.jpeg"


def test_an_identical_resend_reapplies_after_the_nodes_rows_changed_otherwise(node, central_server):
    inventory = node.scan()
    node.client.push_inventory(inventory)
    model_id = central_server.get("/api/v1/models", params={"text": "hero"}).json()["models"][0]["id"]
    r = central_server.delete(f"/api/v1/models/{model_id}/availability", params={"server_id": "gpu-01"},
                              headers=central_server.admin_headers)
    assert r.json()["removed"] == 1
    answer = node.client.push_inventory(inventory)
    assert (answer["added"], answer["unchanged"]) == (1, 2)
    central_server.post("/api/v1/models/reset-database", headers=central_server.admin_headers)
    assert node.client.push_inventory(inventory)["added"] == 3


def test_push_client_retries_server_errors():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls = []

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            calls.append(self.path)
            status, body = (503, b'{"error": "busy"}') if len(calls) == 1 else (200, b'{"server_id": "n1", "registered": false}')
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = ServerClient(f"http://127.0.0.1:{httpd.server_address[1]}", NodeCredentials("n1"), retries=2, backoff=0)
        assert client.heartbeat()["server_id"] == "n1"
        assert calls == ["/api/v1/servers/n1/heartbeat"] * 2
    finally:
        httpd.shutdown()
        httpd.server_close()
