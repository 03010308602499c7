"""Job-check bench against the real server (uvicorn, its own process):

POST /api/v1/servers/{id}/dispatch-check for an A1111 txt2img body naming a checkpoint (by title with its AutoV2)
and 5 LoRAs, with 100 nodes x 5,000 models registered, p99 under 10 ms, under concurrent load from other processes
(--concurrency client processes on keep-alive connections, each asking for a random node), while the nodes send their
heartbeats (each one a minute: a write to the registry every 0.6 s), each with the node's state changing (the
checkpoint loaded, the job's or another, busy or idle, free disk), so the ranking and `better_nodes` hint run on
states that move under the load. The job's six models are on every node (the widest answer: every reference has 100
holders); half the nodes report Windows paths.

The load is open: requests are due at a fixed total rate (--rate, default 50/s: a fleet of 100 nodes finishing a
job every 2 s), and a request's latency runs from when it was due, so a slow answer that delays the next request
counts against both. The pass mark is the dispatch-check's p99 at that rate. For information, the same for the
pre-submission check (POST /api/v1/jobs/availability, every node in the answer), and the saturated throughput
(each client sending its next request as soon as the last is answered).

The registry is filled with the server's own apply step (shared.inventory_apply.apply_inventory, what a sync runs),
one node at a time, before the server starts; the nodes count as online (MODELSYNC_OFFLINE_AFTER is a day).

python bench/bench_dispatch.py [--nodes 100] [--models-per-node 5000] [--concurrency 4] [--rate 50] [--seconds 15]
    [--data DIR]

With --data, the filled registry is kept in DIR and reused by the next run with the same DIR (filling takes minutes).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from latency import summary  # noqa: E402
from support_server import RunningServer, server_process  # noqa: E402

from modelsync.shared.catalog import migrate, open_catalog, utc_now  # noqa: E402
from modelsync.shared.inventory import Inventory, InventoryFile  # noqa: E402
from modelsync.shared.inventory_apply import apply_inventory  # noqa: E402

JOB_LORAS = (1, 2, 3, 4, 5)  # fleet-wide models: every node holds them
JOB_CHECKPOINT = 0


def sha(n: int) -> str:
    return hashlib.sha256(f"model-{n}".encode()).hexdigest()


def is_checkpoint(n: int) -> bool:
    return n % 50 == 0


def rel_name(n: int) -> str:
    return f"sdxl/ckpt_{n:06d}.safetensors" if is_checkpoint(n) else f"group{n % 50:02d}/lora_{n:06d}.safetensors"


def node_inventory(server_id: str, numbers: list[int], windows: bool) -> Inventory:
    files = []
    for n in numbers:
        folder, role = ("Stable-diffusion", "checkpoint") if is_checkpoint(n) else ("Lora", "lora")
        rel = rel_name(n)
        path = f"C:\\sd\\models\\{folder}\\{rel.replace('/', chr(92))}" if windows else f"/srv/{server_id}/models/{folder}/{rel}"
        metadata = {"type": role, "base": "sdxl", "name": f"model {n}"}
        if role == "lora":
            metadata["output_name"] = f"lora_{n}"
        files.append(InventoryFile(
            path=path, rel_name=rel.replace("/", "\\") if windows else rel, role=role, size=150_000_000 + n,
            mtime_ns=1_732_400_000_000_000_000 + n, sha256=sha(n), autov1=sha(n)[10:18],
            autov3=hashlib.sha256(sha(n).encode()).hexdigest(), type=role, base="sdxl", metadata_source="embedded",
            metadata=metadata, field_sources={k: "embedded" for k in metadata}, has_embedded_metadata=True,
        ))
    return Inventory(server_id, display_name=f"Node {server_id}", api_url=f"http://{server_id}:7860", files=files)


def populate(db_path: Path, nodes: int, per_node: int) -> dict:
    """nodes x per_node: half of each node's models are the fleet's common set, half its own slice."""
    db = open_catalog(db_path)
    migrate(db)
    common = per_node // 2
    started = time.perf_counter()
    for i in range(nodes):
        numbers = list(range(common)) + list(range(common + i * (per_node - common), common + (i + 1) * (per_node - common)))
        server_id = f"node-{i:03d}"
        apply_inventory(db, node_inventory(server_id, numbers, windows=i % 2 == 1))
        now = utc_now()
        db.execute("INSERT INTO servers (id, display_name, api_url, created_at, last_sync, last_heartbeat) VALUES (?, ?, ?, ?, ?, ?)",
                   [server_id, f"Node {server_id}", f"http://{server_id}:7860", now, now, now])
    files, models, aliases = (db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                              for t in ("model_server_availability", "models", "model_aliases"))
    db.conn.close()
    return {"nodes": nodes, "models_per_node": per_node, "files": files, "distinct_models": models, "aliases": aliases,
            "populate_s": round(time.perf_counter() - started, 1)}


def job() -> dict:
    """An A1111 /sdapi/v1/txt2img body: a checkpoint by title, 5 LoRAs with weights (one TE:UNET), a VAE left automatic."""
    loras = [f"<lora:lora_{n:06d}:{0.3 + n / 10:.1f}>" for n in JOB_LORAS[:4]] + [f"<lora:lora_{JOB_LORAS[4]:06d}:0.6:0.8>"]
    return {
        "prompt": "a knight on a horse in the rain, dramatic light, " + ", ".join(loras),
        "negative_prompt": "lowres, blurry, watermark",
        "seed": 1234, "steps": 28, "cfg_scale": 6.5, "width": 832, "height": 1216,
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 1,
        "override_settings": {"sd_model_checkpoint": f"{rel_name(JOB_CHECKPOINT)} [{sha(JOB_CHECKPOINT)[:10]}]", "sd_vae": "Automatic"},
        "override_settings_restore_afterwards": True,
    }


def load_client(url: str, path_template: str, nodes: int, seconds: float, seed: int, interval: float) -> list[float]:
    """One client on one keep-alive connection, a request due every `interval` seconds (0: back to back); latency
    from when the request was due. Errors (non-200, or a dispatch that is not ok) count as negative."""
    host, port = url.removeprefix("http://").split(":")
    rng = random.Random(seed)
    body = json.dumps({"job": job(), "format": "a1111"}).encode()
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    latencies: list[float] = []
    start = time.perf_counter()
    due = start + rng.random() * interval  # clients out of step with each other
    while due < start + seconds:
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        path = path_template.format(server_id=f"node-{rng.randrange(nodes):03d}")
        sent = time.perf_counter() if interval == 0 else due
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - sent
        good = response.status == 200 and b'"ok":true' in payload if "dispatch" in path else response.status == 200
        latencies.append(elapsed if good else -elapsed)
        due = due + interval if interval else time.perf_counter()
    conn.close()
    return latencies


def load(url: str, path_template: str, nodes: int, seconds: float, concurrency: int, rate: float) -> dict:
    interval = concurrency / rate if rate else 0.0
    with ProcessPoolExecutor(concurrency) as pool:
        args = [(url, path_template, nodes, seconds, seed, interval) for seed in range(concurrency)]
        measured = [t for run in pool.map(load_client, *zip(*args)) for t in run]
    return {**summary(measured, seconds), "concurrency": concurrency, "rate": rate or "saturated"}


def node_state(rng: random.Random) -> dict:
    """A heartbeat's state: the job's checkpoint loaded on about a third of the nodes, busy half the time."""
    loaded = rng.choice((JOB_CHECKPOINT, 50, 100))
    title = f"{rel_name(loaded)} [{sha(loaded)[:10]}]"
    return {"loaded": {"title": title, "sha256": sha(loaded)}, "selected": {"title": title, "sha256": sha(loaded)},
            "modules": [], "busy": rng.random() < 0.5, "gpu": {"total_bytes": 24 * 2**30, "free_bytes": rng.randrange(2**34)},
            "disks": [{"root": "/srv/models", "role": None, "free_bytes": rng.randrange(2**40), "total_bytes": 2**41}],
            "floor_bytes": 2 * 2**30}


@contextlib.contextmanager
def heartbeats(server: RunningServer, nodes: int, every_seconds: float) -> Iterator[Callable[[], int]]:
    """The fleet's heartbeats meanwhile (each node one every `every_seconds`, spread out), each a write to the
    registry with the node's changed state; yields how many were sent."""
    stop = threading.Event()
    sent = [0]

    def beat() -> None:
        rng = random.Random(7)
        while not stop.wait(every_seconds / nodes):
            r = server.post(f"/api/v1/servers/node-{rng.randrange(nodes):03d}/heartbeat", json={"state": node_state(rng)},
                            headers=server.admin_headers)
            assert r.status_code == 200, r.text
            sent[0] += 1

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield lambda: sent[0]
    finally:
        stop.set()
        thread.join()


def run_load(url: str, path_template: str, nodes: int, seconds: float, concurrency: int, rate: float) -> dict:
    """The load in its own process (which starts the client processes)."""
    out = subprocess.run(
        [sys.executable, __file__, "--load", url, "--path", path_template, "--nodes", str(nodes), "--seconds", str(seconds),
         "--concurrency", str(concurrency), "--rate", str(rate)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--models-per-node", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50, help="requests per second in all (0: saturate)")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--heartbeat-seconds", type=float, default=60, help="each node's heartbeat interval")
    parser.add_argument("--data", type=Path, help="keep the filled registry here and reuse it")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)  # the load process
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load(args.load, args.path, args.nodes, args.seconds, args.concurrency, args.rate)))
        return

    with tempfile.TemporaryDirectory(prefix="modelsync-bench-dispatch-") as tmp:
        data = args.data or Path(tmp) / "data"
        if (data / "registry.db").exists():
            results = {"fleet": {"reused": str(data)}}
        else:
            results = {"fleet": populate(data / "registry.db", args.nodes, args.models_per_node)}
        print(json.dumps(results["fleet"]), flush=True)
        with server_process(data, offline_after_seconds=86400) as server:
            rng = random.Random(3)
            for i in range(args.nodes):  # every node has a state from the start; the heartbeats change them
                server.post(f"/api/v1/servers/node-{i:03d}/heartbeat", json={"state": node_state(rng)},
                            headers=server.admin_headers).raise_for_status()
            check = server.post("/api/v1/servers/node-001/dispatch-check", json={"job": job()}).json()
            assert check["ok"] is True, check
            assert all(len(r["nodes"]) == args.nodes for r in check["requirements"]), check["requirements"]
            print(json.dumps({"sample_payload": check["payload"]["override_settings"], "prompt": check["payload"]["prompt"]}), flush=True)
            server.post("/api/v1/jobs/availability", json={"job": job()})  # warm
            runs = (("dispatch", "/api/v1/servers/{server_id}/dispatch-check", args.rate),
                    ("availability", "/api/v1/jobs/availability", args.rate),
                    ("dispatch_saturated", "/api/v1/servers/{server_id}/dispatch-check", 0))
            for name, path, rate in runs:
                with heartbeats(server, args.nodes, args.heartbeat_seconds) as sent:
                    results[name] = run_load(server.base_url, path, args.nodes, args.seconds, args.concurrency, rate)
                print(json.dumps({name: {**results[name], "heartbeats_meanwhile": sent()}}), flush=True)
    dispatch = results["dispatch"]
    ok = dispatch["p99_ms"] < 10 and dispatch["errors"] == 0
    print(f"{'PASS' if ok else 'FAIL'}  dispatch-check p99 < 10 ms ({dispatch['p99_ms']} ms, {dispatch['errors']} errors)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
