"""Transfers between two `modelsync node` agents on this machine, against the real central server (its own process):

1. A copy of a 1 GiB .safetensors from node A to node B, from the admin's order to `done` (the node's long-poll, the
   stream with SHA256, AutoV1 and AutoV3 computed while writing, fsync, rename, the catalog, the push, the report),
   side by side with `curl -o` fetching the same bytes from the same file server (with a grant's headers), then
   `sync`, then `openssl dgst -sha256` on the file: median of --runs runs each, the file in the page cache for both.
2. A resumed copy: node B (at 100 MB/s) stopped (SIGTERM) half way and started again; the bytes A's file server sent in all, and the
   Range B asked for after the restart (A's files URL then names a byte-counting TCP relay in front of its file server;
   the timed copies in 1. go to the file server directly, as curl does).
3. A node with --files (10,000) model files: an unchanged re-scan triggered by the watcher (a model file created and
   deleted again) pushes nothing; the time from the change to the re-scan's log line.

python bench/bench_transfer.py [--size-mib 1024] [--runs 3] [--files 10000] [--dir DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_cli import make_tree
from bench_hashing import make_file
from modelsync.shared.transfer.partfiles import part_name
from modelsync.shared.transfer.protocol import GRANT_HEADER, NODE_HEADER, file_url
from support_server import RunningServer, free_port, server_process, wait_for
from test_node_agent import NodeProcess, held_by, node_process, quiet, server_entry


class CountingRelay:
    """A TCP relay in front of a file server: counts the bytes the server sends and keeps the Range headers asked."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.served = 0
        self.ranges: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.served, self.ranges = 0, []

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        buffer = bytearray(1024 * 1024)
        try:
            while (n := source.recv_into(buffer)) > 0:
                sink.sendall(memoryview(buffer)[:n])
                with self._lock:
                    if count:
                        self.served += n
                    else:
                        self.ranges += re.findall(rb"(?im)^range: *(bytes=[0-9,-]+)", bytes(buffer[:n]))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def order(central: RunningServer, node_id: str, sha256: str) -> int:
    answer = central.post("/api/v1/transfers", json={"server_id": node_id, "sha256": sha256}, headers=central.admin_headers)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def transfer(central: RunningServer, transfer_id: int) -> dict:
    return central.get(f"/api/v1/transfers/{transfer_id}").json()


def until_done(central: RunningServer, transfer_id: int, timeout: float = 600) -> dict:
    return wait_for(lambda: (t := transfer(central, transfer_id))["state"] in ("done", "failed", "cancelled") and t,
                    timeout=timeout)


def forget(central: RunningServer, node_id: str, path: Path, sha256: str) -> None:
    """Remove a copy and wait until the node's watcher has told the central server."""
    path.unlink()
    wait_for(lambda: sha256 not in held_by(central, node_id), timeout=60)


def timed_copy(central: RunningServer, b_lora: Path, sha256: str) -> float:
    started = time.perf_counter()
    done = until_done(central, order(central, "gpu-b", sha256))
    seconds = time.perf_counter() - started
    assert done["state"] == "done", done
    copy = Path(done["dest_path"])
    assert sha256_file(copy) == sha256, "the copy's bytes differ"
    forget(central, "gpu-b", copy, sha256)
    return seconds


def timed_curl(a: NodeProcess, files_url: str, b_lora: Path, sha256: str) -> float:
    target = b_lora.parent / "curl.safetensors"  # beside the role folder: the node does not scan it
    headers = [f"{GRANT_HEADER}: {a.grant_for(sha256, 'gpu-b')}", f"{NODE_HEADER}: gpu-b"]
    started = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(target), *[x for h in headers for x in ("-H", h)],
                    file_url(files_url, sha256)], check=True)
    subprocess.run(["sync"], check=True)
    digest = subprocess.run(["openssl", "dgst", "-sha256", str(target)], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert digest.stdout.strip().endswith(sha256), digest.stdout
    target.unlink()
    return seconds


def log_count(node: NodeProcess, text: str) -> int:
    return node.log().count(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="modelsync-bench-transfer-"))
    a_lora, b_lora = base / "a" / "Lora", base / "b" / "Lora"
    for folder in (a_lora, b_lora):
        folder.mkdir(parents=True, exist_ok=True)
    model = make_file(a_lora / "big.safetensors", args.size_mib, True)
    sha256, size = sha256_file(model), model.stat().st_size  # also puts the file in the page cache
    floor = ("--free-floor", "256MiB")

    with contextlib.ExitStack() as stack:
        central = stack.enter_context(server_process(base / "central", offline_after_seconds=3600))
        a_port, a_data = free_port(), base / "gpu-a-data"
        a_url = f"http://127.0.0.1:{a_port}"
        a = stack.enter_context(node_process(base, "gpu-a", central.base_url, f"lora={a_lora}",
                                             extra=("--listen", f"127.0.0.1:{a_port}"), data=a_data))
        b_data = base / "gpu-b-data"
        b = stack.enter_context(node_process(base, "gpu-b", central.base_url, f"lora={b_lora}", extra=floor, data=b_data))
        wait_for(lambda: sha256 in held_by(central, "gpu-a") and server_entry(central, "gpu-b"), timeout=600)

        copies, curls = [], []
        for _ in range(args.runs):
            copies.append(timed_copy(central, b_lora, sha256))
            curls.append(timed_curl(a, a_url, b_lora, sha256))
        mib = size / 1024**2
        print(f"1 GiB-class copy ({mib:.0f} MiB), median of {args.runs} runs:")
        print(f"  modelsync node -> node, order to done (SHA256+AutoV1+AutoV3, fsync, rename, push): "
              f"{statistics.median(copies):.2f} s  ({mib / statistics.median(copies):.0f} MiB/s)  runs {[round(x, 2) for x in copies]}")
        print(f"  curl -o + sync + openssl dgst -sha256:                                      "
              f"{statistics.median(curls):.2f} s  ({mib / statistics.median(curls):.0f} MiB/s)  runs {[round(x, 2) for x in curls]}")

        # a resumed copy: B (held to 100 MB/s, so that half way can be caught) stopped half way, started again;
        # A's files URL now names the counting relay in front of its file server
        relay = CountingRelay(a_port)
        a.stop()
        a = stack.enter_context(node_process(base, "gpu-a", central.base_url, f"lora={a_lora}", data=a_data, extra=(
            "--listen", f"127.0.0.1:{a_port}", "--files-url", f"http://127.0.0.1:{relay.port}")))
        quiet(a)
        b.stop()
        b = stack.enter_context(node_process(base, "gpu-b", central.base_url, f"lora={b_lora}",
                                             extra=(*floor, "--bandwidth", "100MB/s"), data=b_data))
        relay.reset()
        transfer_id = order(central, "gpu-b", sha256)
        wait_for(lambda: transfer(central, transfer_id)["bytes_done"] >= size // 2, timeout=300)
        b.stop()
        kept = (b_lora / part_name(sha256)).stat().st_size
        served_before = relay.served
        stack.enter_context(node_process(base, "gpu-b", central.base_url, f"lora={b_lora}", extra=floor, data=b_data))
        done = until_done(central, transfer_id)
        assert done["state"] == "done" and sha256_file(Path(done["dest_path"])) == sha256
        print(f"resumed copy: stopped with {kept / 1024**2:.0f} MiB on disk ({served_before / 1024**2:.0f} MiB served by then); "
              f"Range asked for: {relay.ranges}; served in all {relay.served / 1024**2:.0f} MiB "
              f"= {relay.served / size:.3f} x the size")

        # 10,000 files: an unchanged re-scan the watcher triggers pushes nothing
        c_root = base / "c"
        make_tree(c_root, args.files)
        started = time.perf_counter()
        c = stack.enter_context(node_process(base, "gpu-c", central.base_url, f"lora={c_root / 'Lora'}"))
        wait_for(lambda: (e := server_entry(central, "gpu-c")) and e["file_count"] == args.files, timeout=900)
        print(f"{args.files}-file node: first scan, hashes and push in {time.perf_counter() - started:.1f} s")
        quiet(c, 3.0)
        synced = server_entry(central, "gpu-c")["last_sync"]
        unchanged = log_count(c, "nothing changed since the last push")
        fleeting = c_root / "Lora" / "d0" / "fleeting.safetensors"
        changed_at = time.perf_counter()
        shutil.copyfile(c_root / "Lora" / "d0" / "m00000.safetensors", fleeting)
        fleeting.unlink()
        wait_for(lambda: log_count(c, "nothing changed since the last push") > unchanged, timeout=120)
        seconds = time.perf_counter() - changed_at
        time.sleep(2)
        pushed = server_entry(central, "gpu-c")["last_sync"] != synced
        print(f"{args.files}-file node, a model file created and deleted: re-scan done {seconds:.2f} s after the change "
              f"(debounce included); pushed: {'yes' if pushed else 'nothing'}")


if __name__ == "__main__":
    main()
