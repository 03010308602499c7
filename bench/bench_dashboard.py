"""Dashboard bench against the real server (uvicorn, its own process): the Models page, a model's page and the Nodes
page with its models x nodes matrix, with 50,000 models on 100 nodes.

The registry is filled with the server's own apply step (shared.inventory_apply.apply_inventory, what a sync runs),
one node at a time, before the server starts. Model n is a checkpoint when n % 50 == 0, else a LoRA; every node holds
the first 1,000 models, and each further model is on three nodes (n % 100, n + 1, n + 37): 247,000 files. The nodes
count as online (MODELSYNC_OFFLINE_AFTER is a day). Each page is asked for `--repeat` times over one keep-alive
connection, as a browser does (gzip accepted); the table gives the median, the slowest, and the gzip size.

python bench/bench_dashboard.py [--models 50000] [--nodes 100] [--repeat 15]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support_server import server_process  # noqa: E402

from modelsync.shared.catalog import migrate, open_catalog, utc_now  # noqa: E402
from modelsync.shared.inventory import Inventory, InventoryFile  # noqa: E402
from modelsync.shared.inventory_apply import apply_inventory  # noqa: E402

COMMON = 1000  # models on every node


def sha(n: int) -> str:
    return hashlib.sha256(f"dashboard-model-{n}".encode()).hexdigest()


def holds(node: int, n: int, nodes: int) -> bool:
    return n < COMMON or node in (n % nodes, (n + 1) % nodes, (n + 37) % nodes)


def node_inventory(server_id: str, numbers: list[int]) -> Inventory:
    files = []
    for n in numbers:
        checkpoint = n % 50 == 0
        role = "checkpoint" if checkpoint else "lora"
        rel = f"sdxl/ckpt_{n:06d}.safetensors" if checkpoint else f"group{n % 50:02d}/lora_{n:06d}.safetensors"
        folder = "Stable-diffusion" if checkpoint else "Lora"
        base = "sdxl" if n % 3 else "sd1"
        metadata = {"type": role, "base": base, "name": f"model {n}"}
        files.append(InventoryFile(
            path=f"/srv/{server_id}/models/{folder}/{rel}", rel_name=rel, role=role, size=150_000_000 + n,
            mtime_ns=1_732_400_000_000_000_000 + n, sha256=sha(n), autov1=sha(n)[10:18], type=role, base=base,
            metadata_source="embedded", metadata=metadata, field_sources={k: "embedded" for k in metadata},
        ))
    return Inventory(server_id, display_name=f"Node {server_id}", api_url=f"http://{server_id}:7860", files=files)


def populate(db_path: Path, models: int, nodes: int) -> tuple[float, int]:
    db = open_catalog(db_path)
    migrate(db)
    started = time.perf_counter()
    files = 0
    for i in range(nodes):
        server_id = f"node-{i:03d}"
        numbers = [n for n in range(models) if holds(i, n, nodes)]
        apply_inventory(db, node_inventory(server_id, numbers))
        now = utc_now()
        db.execute("INSERT INTO servers (id, display_name, api_url, last_sync, last_heartbeat) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (id) DO UPDATE SET last_sync = excluded.last_sync, last_heartbeat = excluded.last_heartbeat",
                   [server_id, f"Node {server_id}", f"http://{server_id}:7860", now, now])
        files += len(numbers)
    db.conn.close()
    return time.perf_counter() - started, files


def measure(session: requests.Session, url: str, repeat: int) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = session.get(url, timeout=60, stream=True)
        raw = response.raw.read()  # the bytes as sent (gzip)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
        size = len(raw)
    return statistics.median(times), max(times), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=50_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        elapsed, files = populate(data / "registry.db", args.models, args.nodes)
        print(f"registry: {args.models:,} models, {args.nodes} nodes, {files:,} files, filled in {elapsed:.1f} s")
        with server_process(data, offline_after_seconds=86_400) as server:
            session = requests.Session()
            common = session.get(server.url("/api/v1/models"), params={"text": sha(0)}).json()["models"][0]["id"]
            pages = [
                ("Models, first page (50, by name)", "/dashboard/models"),
                ("Models, type lora + base sdxl", "/dashboard/models?type=lora&base=sdxl"),
                ("Models, text search", "/dashboard/models?text=model+4242"),
                ("Models, one node", "/dashboard/models?server=node-042"),
                ("Models, by size, page 500", "/dashboard/models?sort=size&order=desc&page=500"),
                ("Models, 200 per page", "/dashboard/models?limit=200"),
                ("a model on all 100 nodes", f"/dashboard/models/{common}"),
                ("Nodes + matrix, checkpoints", "/dashboard/nodes"),
                ("Nodes + matrix, LoRAs, page 400", "/dashboard/nodes?type=lora&page=400"),
                ("Nodes + matrix, LoRAs missing somewhere", "/dashboard/nodes?type=lora&incomplete=1"),
            ]
            print("| page | median | slowest | gzip size |\n|---|---|---|---|")
            for label, path in pages:
                median, worst, size = measure(session, server.url(path), args.repeat)
                print(f"| {label} (`{path}`) | {median * 1000:.0f} ms | {worst * 1000:.0f} ms | {size / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
