"""Many nodes syncing at once, and a server killed mid-sync: the registry stays consistent."""
import hashlib
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from support_server import central_server, server_process  # noqa: F401  (fixtures)

from modelsync.shared.inventory import Inventory, InventoryFile
from modelsync.shared.push_client import NodeCredentials, ServerClient


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def inventory(server_id: str, contents: list[str], folder: str = "Lora") -> Inventory:
    return Inventory(server_id, files=[
        InventoryFile(path=f"/{server_id}/{folder}/{c}.safetensors", rel_name=f"{folder}/{c}.safetensors", role="lora",
                      size=100, mtime_ns=1, sha256=sha(c))
        for c in contents
    ])


def registry_counts(db_path) -> dict:
    conn = sqlite3.connect(db_path)
    try:
        return {
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
            "models": conn.execute("SELECT COUNT(*) FROM models").fetchone()[0],
            "files": dict(conn.execute("SELECT server_id, COUNT(*) FROM model_server_availability GROUP BY server_id").fetchall()),
            "dangling_aliases": conn.execute(
                """SELECT COUNT(*) FROM model_aliases x WHERE NOT EXISTS (SELECT 1 FROM model_server_availability a
                   WHERE a.model_id = x.model_id AND a.server_id = x.server_id)""").fetchone()[0],
        }
    finally:
        conn.close()


def test_concurrent_syncs_from_many_nodes(central_server, tmp_path):
    nodes = [f"n{i}" for i in range(8)]
    # every node shares 100 models with the others and has 50 of its own
    shared = [f"shared-{j}" for j in range(100)]
    contents = {n: shared + [f"{n}-own-{j}" for j in range(50)] for n in nodes}
    clients = {n: ServerClient(central_server.base_url, NodeCredentials.load(tmp_path, n), retries=0) for n in nodes}

    def work(node: str) -> list[dict]:
        answers = [clients[node].push_inventory(inventory(node, contents[node]))]
        answers.append(clients[node].push_inventory(inventory(node, contents[node][10:])))  # ten files gone
        answers.append(clients[node].push_inventory(inventory(node, contents[node][10:])))
        central_server.get("/api/v1/models", params={"server": node})
        return answers

    with ThreadPoolExecutor(len(nodes)) as pool:
        results = dict(zip(nodes, pool.map(work, nodes)))
    for node, (first, second, third) in results.items():
        assert (first["added"], second["removed"], third["unchanged"]) == (150, 10, 140), node
    counts = registry_counts(central_server.db_path)
    assert counts == {"integrity": "ok", "models": 100 + 8 * 50, "files": {n: 140 for n in nodes}, "dangling_aliases": 0}


def test_kill_9_mid_sync_leaves_one_snapshot_or_the_other(tmp_path):
    big_a = [f"a-{j}" for j in range(3000)]
    big_b = [f"b-{j}" for j in range(3000)]
    data = tmp_path / "data"
    with server_process(data) as server:
        client = ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0)
        client.push_inventory(inventory("n1", big_a))
        stop = threading.Event()

        def keep_syncing() -> None:
            snapshots = [big_b, big_a]
            i = 0
            while not stop.is_set():
                try:
                    client.push_inventory(inventory("n1", snapshots[i % 2], folder=f"v{i}"))
                except Exception:
                    return
                i += 1

        pusher = threading.Thread(target=keep_syncing)
        pusher.start()
        time.sleep(1.5)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        stop.set()
        pusher.join(30)

    counts = registry_counts(server.db_path)
    assert counts["integrity"] == "ok" and counts["dangling_aliases"] == 0
    assert counts["files"] == {"n1": 3000}  # a whole snapshot, never a mix or a half
    conn = sqlite3.connect(server.db_path)
    folders = conn.execute("SELECT COUNT(DISTINCT substr(rel_name, 1, instr(rel_name, '/'))) FROM model_server_availability").fetchone()
    conn.close()
    assert folders == (1,)

    # the server starts again on the same data and serves the same registry; SIGTERM stops it cleanly
    with server_process(data, admin_token=server.admin_token) as again:
        assert requests.get(again.url("/api/v1/models"), timeout=10).json()["total"] >= 3000
        again.process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it
        assert again.process.wait(30) in (0, -signal.SIGTERM)
    assert "stopped cleanly" in (data / "server.log").read_text()
