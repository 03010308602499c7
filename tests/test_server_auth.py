"""Node tokens (register once, then required; one node cannot touch another's inventory) and admin-only actions."""
import hashlib
import os
import stat

import pytest
from support_server import central_server, make_server, run_server  # noqa: F401  (fixtures)

from modelsync.shared.catalog import open_catalog


def inventory(server_id: str, *contents: str) -> dict:
    return {
        "format": 1,
        "server_id": server_id,
        "files": [
            {"path": f"/m/{c}.safetensors", "rel_name": f"{c}.safetensors", "role": "lora", "size": 1,
             "sha256": hashlib.sha256(c.encode()).hexdigest()}
            for c in contents
        ],
    }


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def register(server, server_id: str, *contents: str) -> str:
    r = server.post(f"/api/v1/servers/{server_id}/models/sync", json=inventory(server_id, *contents))
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_token_is_returned_once_stored_hashed_and_required_afterwards(central_server):
    token = register(central_server, "n1", "a")
    row = open_catalog(central_server.db_path)["servers"].get("n1")
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest() != token

    r = central_server.post("/api/v1/servers/n1/models/sync", json=inventory("n1", "a", "b"))
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
    r = central_server.post("/api/v1/servers/n1/models/sync", json=inventory("n1", "a", "b"), headers=bearer(token))
    assert r.status_code == 200 and r.json()["added"] == 1 and "token" not in r.json()


def test_a_node_cannot_change_another_nodes_inventory(central_server):
    token_1 = register(central_server, "n1", "a")
    register(central_server, "n2", "b")
    r = central_server.post("/api/v1/servers/n2/models/sync", json=inventory("n2"), headers=bearer(token_1))
    assert r.status_code == 403
    r = central_server.post("/api/v1/servers/n2/heartbeat", headers=bearer(token_1))
    assert r.status_code == 403
    model_b = central_server.get("/api/v1/models", params={"server": "n2"}).json()["models"][0]["id"]
    r = central_server.delete(f"/api/v1/models/{model_b}/availability", params={"server_id": "n2"}, headers=bearer(token_1))
    assert r.status_code == 403
    assert central_server.get("/api/v1/models", params={"server": "n2"}).json()["total"] == 1


def test_a_node_may_bring_its_own_token_at_registration(central_server):
    own = "a-token-the-operator-chose-0123456789"
    r = central_server.post("/api/v1/servers/n1/heartbeat", headers=bearer(own))
    assert r.status_code == 200 and r.json()["registered"] is True and "token" not in r.json()
    assert central_server.post("/api/v1/servers/n1/heartbeat", headers=bearer(own)).json()["registered"] is False


def test_admin_resets_a_token_and_the_old_one_stops_working(central_server):
    old = register(central_server, "n1", "a")
    assert central_server.post("/api/v1/servers/n1/token").status_code == 401
    assert central_server.post("/api/v1/servers/n1/token", headers=bearer(old)).status_code == 403
    r = central_server.post("/api/v1/servers/n1/token", headers=central_server.admin_headers)
    new = r.json()["token"]
    assert r.status_code == 200 and new != old
    assert central_server.post("/api/v1/servers/n1/heartbeat", headers=bearer(old)).status_code == 403
    assert central_server.post("/api/v1/servers/n1/heartbeat", headers=bearer(new)).status_code == 200


def test_admin_only_endpoints_refuse_node_tokens(central_server):
    token = register(central_server, "n1", "a")
    for method, path in (("POST", "/api/v1/models/reset-database"), ("DELETE", "/api/v1/servers/n1")):
        assert central_server.request(method, path).status_code == 401
        assert central_server.request(method, path, headers=bearer(token)).status_code == 403
    assert central_server.get("/api/v1/models").json()["total"] == 1


def test_admin_deletes_a_node_its_files_go_models_stay(central_server):
    register(central_server, "n1", "a", "b")
    r = central_server.delete("/api/v1/servers/n1", headers=central_server.admin_headers)
    assert r.json() == {"deleted": "n1", "files_removed": 2}
    assert central_server.get("/api/v1/servers").json()["servers"] == []
    assert central_server.get("/api/v1/models", params={"availability": "missing"}).json()["total"] == 2
    assert central_server.delete("/api/v1/servers/n1", headers=central_server.admin_headers).status_code == 404


def test_closed_registration_needs_an_admin_issued_token(make_server):
    server = make_server(registration="closed")
    r = server.post("/api/v1/servers/n1/models/sync", json=inventory("n1", "a"))
    assert r.status_code == 403 and "/api/v1/servers/n1/token" in r.json()["error"]
    token = server.post("/api/v1/servers/n1/token", headers=server.admin_headers).json()["token"]
    r = server.post("/api/v1/servers/n1/models/sync", json=inventory("n1", "a"), headers=bearer(token))
    assert r.status_code == 200 and r.json()["added"] == 1


def test_loopback_registration_refuses_a_client_from_elsewhere(tmp_path):
    # a proxy on loopback that the server is told to trust forwards a remote client: that client is judged
    with run_server(tmp_path, trusted_proxies=("127.0.0.1",)) as server:
        r = server.post("/api/v1/servers/n1/heartbeat", headers={"X-Forwarded-For": "10.1.2.3"})
        assert r.status_code == 403 and "10.1.2.3" in r.json()["error"] and "modelsync token issue n1" in r.json()["error"]


def test_admin_token_is_generated_once_with_owner_only_permissions(tmp_path):
    with run_server(tmp_path, admin_token=None) as server:
        stored = (tmp_path / "admin_token").read_text().strip()
        assert stat.S_IMODE(os.stat(tmp_path / "admin_token").st_mode) == 0o600
        r = server.post("/api/v1/servers/n1/token", headers=bearer(stored))
        assert r.status_code == 200
    with run_server(tmp_path, admin_token=None):
        assert (tmp_path / "admin_token").read_text().strip() == stored


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "bearer  "])
def test_malformed_authorization_counts_as_none(central_server, header):
    register(central_server, "n1", "a")
    r = central_server.post("/api/v1/servers/n1/heartbeat", headers={"Authorization": header})
    assert r.status_code == 401


def test_issued_tokens_never_start_with_a_dash_so_a_command_line_takes_them_after_an_option():
    from modelsync.server.auth import new_token

    tokens = [new_token() for _ in range(3000)]  # a leading "-" is 1 in 64 of url-safe base64: ~47 expected
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and {len(t) for t in tokens} == {43}
