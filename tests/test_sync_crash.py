"""A sync interrupted anywhere (an error, kill -9) leaves the node's rows and the inventory digest of one state:
a re-send of the previous inventory is then applied, never answered "unchanged" over the newer files."""
import hashlib
import signal
import sqlite3
import threading
import time

import pytest
import requests
from support_server import central_server, push_files, server_process  # noqa: F401  (fixtures)

import modelsync.server.sync as sync_module


def inventory_files(prefix: str, count: int) -> list[dict]:
    return [
        {"path": f"/models/Lora/{prefix}-{i:05d}.safetensors", "rel_name": f"{prefix}-{i:05d}.safetensors", "role": "lora",
         "size": 1000 + i, "mtime_ns": i, "sha256": hashlib.sha256(f"{prefix}{i}".encode()).hexdigest(), "type": "lora"}
        for i in range(count)
    ]


def node_paths(db_path, server_id: str) -> set[str]:
    with sqlite3.connect(db_path) as conn:
        return {row[0] for row in conn.execute("SELECT path FROM model_server_availability WHERE server_id = ?", [server_id])}


def test_an_error_after_the_files_are_applied_rolls_the_digest_back_with_them(central_server, monkeypatch):
    old = inventory_files("old", 3)
    token = push_files(central_server, "gpu-01", old)["token"]
    original = sync_module._record_sync

    def crash_after_recording(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError("simulated crash between the files and the digest")

    monkeypatch.setattr(sync_module, "_record_sync", crash_after_recording)
    try:  # the server answers 500, or drops the connection after its handler raised
        r = requests.post(central_server.url("/api/v1/servers/gpu-01/models/sync"), timeout=30, headers={
                          "Authorization": f"Bearer {token}"}, json={"format": 1, "server_id": "gpu-01",
                          "files": inventory_files("new", 2)})
        assert r.status_code == 500
    except requests.ConnectionError:
        pass
    monkeypatch.setattr(sync_module, "_record_sync", original)

    assert node_paths(central_server.db_path, "gpu-01") == {f["path"] for f in old}
    again = push_files(central_server, "gpu-01", old, token)
    assert node_paths(central_server.db_path, "gpu-01") == {f["path"] for f in old}
    assert again["unchanged"] == 3


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3, 0.5, 0.8])
def test_kill_9_mid_sync_then_the_previous_inventory_is_applied(tmp_path, delay):
    """The server process is killed while it applies a large inventory; after a restart, whatever the kill left,
    the node's re-send of its previous inventory makes the registry hold exactly that inventory."""
    data = tmp_path / "data"
    old, new = inventory_files("old", 50), inventory_files("new", 6000)
    with server_process(data) as server:
        token = push_files(server, "gpu-01", old)["token"]
        headers = {"Authorization": f"Bearer {token}"}
        body = {"format": 1, "server_id": "gpu-01", "files": new}
        sender = threading.Thread(target=lambda: _post_ignoring_drop(server.url("/api/v1/servers/gpu-01/models/sync"), body, headers))
        sender.start()
        time.sleep(delay)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        sender.join(30)
        admin_token = server.admin_token
    after_kill = node_paths(data / "registry.db", "gpu-01")
    assert after_kill in ({f["path"] for f in old}, {f["path"] for f in new})
    with server_process(data, admin_token=admin_token) as again:
        answer = push_files(again, "gpu-01", old, token)
        assert node_paths(again.db_path, "gpu-01") == {f["path"] for f in old}
        if after_kill != {f["path"] for f in old}:
            assert answer["removed"] == len(new) and answer["added"] == len(old)


def _post_ignoring_drop(url: str, body: dict, headers: dict) -> None:
    try:
        requests.post(url, json=body, headers=headers, timeout=30)
    except requests.ConnectionError:
        pass
