"""Central server benches, against the real server (uvicorn, its own process):

1. sync of a 10,000-file inventory from a new node (limit 3 s), the same inventory again (limit 0.5 s);
2. GET /api/v1/models (the dashboard's list) over the whole registry, a few typical filters;
3. GET /api/v1/models/{id}/availability p99 (limit 10 ms) with 100 nodes x 5,000 models registered, under
   concurrent load from another process (N client processes on keep-alive connections).

python bench/bench_server.py [--nodes 100] [--models-per-node 5000] [--concurrency 4] [--seconds 15]
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from latency import summary  # noqa: E402
from support_server import server_process  # noqa: E402

from modelsync.shared.inventory import Inventory, InventoryFile  # noqa: E402
from modelsync.shared.push_client import NodeCredentials, ServerClient  # noqa: E402


def sha(n: int) -> str:
    return hashlib.sha256(f"model-{n}".encode()).hexdigest()


def node_inventory(server_id: str, model_numbers: list[int], windows: bool = False) -> Inventory:
    """What a node's scan sends: hashes, content type/base, embedded metadata with its sources."""
    files = []
    for n in model_numbers:
        rel = f"group{n % 50:02d}/lora_{n:06d}.safetensors"
        path = ("C:\\sd\\models\\Lora\\" + rel.replace("/", "\\")) if windows else f"/srv/{server_id}/models/Lora/{rel}"
        files.append(InventoryFile(
            path=path, rel_name=rel, role="lora", size=150_000_000 + n, mtime_ns=1_732_400_000_000_000_000 + n,
            sha256=sha(n), autov1=sha(n)[10:18], autov3=hashlib.sha256(sha(n).encode()).hexdigest(),
            type="lora", base="sdxl", metadata_source="embedded",
            metadata={"type": "lora", "base": "sdxl", "output_name": f"lora_{n}", "name": f"LoRA {n}", "resolution": "1024x1024"},
            field_sources={"type": "embedded", "base": "embedded", "output_name": "embedded", "name": "embedded",
                           "resolution": "embedded"},
            has_embedded_metadata=True,
        ))
    return Inventory(server_id, display_name=f"Node {server_id}", api_url=f"http://{server_id}:7860", files=files)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def bench_sync(base_url: str, workdir: Path) -> dict:
    """The server's side (POST of the ready gzip body), and the node's whole push (serialising included)."""
    import gzip

    import requests

    client = ServerClient(base_url, NodeCredentials.load(workdir, "sync-node"), retries=0)
    token = client.heartbeat()["token"]
    inventory = node_inventory("sync-node", list(range(1_000_000, 1_010_000)))
    body = gzip.compress(inventory.to_json(), compresslevel=6)
    headers = {"Authorization": f"Bearer {token}", "Content-Encoding": "gzip", "Content-Type": "application/json"}
    post = lambda: requests.post(f"{base_url}/api/v1/servers/sync-node/models/sync", data=body, headers=headers).json()  # noqa: E731
    first, answer = timed(post)
    assert answer["added"] == 10_000, answer
    again, answer = timed(post)
    assert answer["unchanged"] == 10_000, answer
    push_again, answer = timed(lambda: client.push_inventory(inventory))
    assert answer["unchanged"] == 10_000, answer
    return {"files": 10_000, "gzip_body_bytes": len(body), "first_sync_s": round(first, 3), "same_again_s": round(again, 3),
            "node_push_same_again_s": round(push_again, 3)}


def populate(base_url: str, workdir: Path, nodes: int, per_node: int) -> dict:
    """nodes x per_node: half of each node's models are the fleet's common set, half its own slice."""
    common = per_node // 2
    total_distinct = common + nodes * (per_node - common)

    def one(i: int) -> float:
        numbers = list(range(common)) + list(range(common + i * (per_node - common), common + (i + 1) * (per_node - common)))
        client = ServerClient(base_url, NodeCredentials.load(workdir, f"node-{i:03d}"), retries=0)
        seconds, _ = timed(lambda: client.push_inventory(node_inventory(f"node-{i:03d}", numbers, windows=i % 2 == 1)))
        return seconds

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        times = list(pool.map(one, range(nodes)))
    return {"nodes": nodes, "models_per_node": per_node, "distinct_models": total_distinct,
            "populate_s": round(time.perf_counter() - started, 1), "median_node_sync_s": round(statistics.median(times), 3)}


def bench_listing(server) -> dict:
    """The dashboard's model list over the whole registry: median of 5 calls per query, in ms."""
    queries = {
        "first_page": {},
        "type_filter": {"type": "lora", "limit": 100},
        "text_filter": {"text": "lora_0042"},
        "on_one_node": {"server": "node-007"},
        "missing_anywhere": {"availability": "missing"},
        "sorted_by_size_page_100": {"sort": "size", "order": "desc", "page": 100},
    }
    timings = {}
    for name, params in queries.items():
        runs = []
        for _ in range(5):
            seconds, r = timed(lambda: server.get("/api/v1/models", params=params))
            assert r.status_code == 200, r.text
            runs.append(seconds)
        timings[f"{name}_ms"] = round(statistics.median(runs) * 1000, 1)
    return timings


def common_model_ids(db_path: Path, common: int) -> list[int]:
    conn = sqlite3.connect(db_path)
    try:
        hashes = [sha(n) for n in range(common)]
        return [row[0] for i in range(0, len(hashes), 500)
                for row in conn.execute(f"SELECT id FROM models WHERE hash_sha256 IN ({','.join('?' * len(hashes[i:i + 500]))})",
                                        hashes[i : i + 500])]
    finally:
        conn.close()


def load_client(url: str, max_id: int, popular: list[int], seconds: float, seed: int) -> list[float]:
    """One client on one keep-alive connection: half the requests ask for a model every node holds (the
    largest answers), half for any model. Returns the latencies and counts errors as negative values."""
    host, port = url.removeprefix("http://").split(":")
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        model_id = rng.choice(popular) if rng.random() < 0.5 else rng.randint(1, max_id)
        started = time.perf_counter()
        conn.request("GET", f"/api/v1/models/{model_id}/availability")
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        latencies.append(elapsed if response.status == 200 else -elapsed)
    conn.close()
    return latencies


def load(url: str, max_id: int, popular: list[int], seconds: float, concurrency: int) -> dict:
    """Run in the load process: `concurrency` client processes (no shared GIL), merged statistics."""
    with ProcessPoolExecutor(concurrency) as pool:
        runs = pool.map(load_client, *zip(*[(url, max_id, popular, seconds, seed) for seed in range(concurrency)]))
        measured = [t for run in runs for t in run]
    return {**summary(measured, seconds), "concurrency": concurrency}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--models-per-node", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)  # the load process
    parser.add_argument("--max-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--popular", help=argparse.SUPPRESS)  # file of model ids every node holds
    args = parser.parse_args()
    if args.load:
        popular = json.loads(Path(args.popular).read_text())
        print(json.dumps(load(args.load, args.max_id, popular, args.seconds, args.concurrency)))
        return

    with tempfile.TemporaryDirectory(prefix="modelsync-bench-server-") as tmp:
        workdir = Path(tmp)
        with server_process(workdir / "data") as server:
            results = {"sync": bench_sync(server.base_url, workdir)}
            print(json.dumps(results["sync"]), flush=True)
            results["fleet"] = populate(server.base_url, workdir, args.nodes, args.models_per_node)
            print(json.dumps(results["fleet"]), flush=True)
            results["listing"] = bench_listing(server)
            print(json.dumps(results["listing"]), flush=True)
            max_id = server.get("/api/v1/models", params={"limit": 1, "sort": "id", "order": "desc"}).json()["models"][0]["id"]
            popular = workdir / "popular.json"
            popular.write_text(json.dumps(common_model_ids(server.db_path, args.models_per_node // 2)))
            out = subprocess.run(
                [sys.executable, __file__, "--load", server.base_url, "--max-id", str(max_id), "--popular", str(popular),
                 "--seconds", str(args.seconds), "--concurrency", str(args.concurrency)],
                check=True, capture_output=True, text=True,
            )
            results["availability"] = json.loads(out.stdout)
            print(json.dumps(results["availability"]), flush=True)
    sync, avail = results["sync"], results["availability"]
    verdicts = {
        "first sync < 3 s": sync["first_sync_s"] < 3,
        "same again < 0.5 s": sync["same_again_s"] < 0.5,
        "availability p99 < 10 ms": avail["p99_ms"] < 10 and avail["errors"] == 0,
    }
    for name, ok in verdicts.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    sys.exit(0 if all(verdicts.values()) else 1)


if __name__ == "__main__":
    main()
