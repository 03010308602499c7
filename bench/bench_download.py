"""A download from a local HTTP server, interrupted once and resumed, end to end as processes, side by side in one run:

- modelsync: a process running the node's receiver on a URL source (`UrlSource` + `receive`: Range + If-Range resume,
  SHA256/AutoV3 while writing, fsync, the SHA256 check, the rename);
- curl: `curl -o` (dropped), `curl -C - -o` (resumed), `sync`, `openssl dgst -sha256` on the file.
The server (a plain http.server with Range, reading the file from disk, in this process) drops each client's first
connection half way. The source file is read once before either run, so both find it in the page cache.

python bench/bench_download.py [--size-mib 1024] [--dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MIB = 1024 * 1024
CHILD = """
import json, sys, time
from modelsync.shared.transfer.receiver import ReceiveOptions, receive
from modelsync.shared.transfer.url_source import UrlSource
url, sha256, folder = sys.argv[1:4]
started = time.perf_counter()
received = receive(UrlSource(url, sha256), folder, "model.bin", options=ReceiveOptions(floor_bytes=0))
print(json.dumps({"seconds": time.perf_counter() - started, "sha256": received.hashes.sha256,
                  "fetched": received.bytes_fetched}))
"""


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        block = os.urandom(4 * MIB)
        for offset in range(0, size, len(block)):
            piece = block[: min(len(block), size - offset)]
            piece = offset.to_bytes(8, "little") + piece[8:]  # no two blocks alike
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def serve(path: Path) -> tuple[ThreadingHTTPServer, dict[str, int]]:
    """GET /<client>/model.bin with Range; each client's first answer stops half way."""
    size = path.stat().st_size
    dropped: dict[str, int] = {}
    requests_seen: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            client = self.path.split("/")[1]
            requests_seen[client] = requests_seen.get(client, 0) + 1
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                start = int(ranged[6:].split("-")[0] or 0)
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size - start))
            self.send_header("ETag", '"bench-file"')
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            stop = size // 2 if client not in dropped else size
            with open(path, "rb") as f:
                f.seek(start)
                left = max(0, stop - start)
                while left > 0:
                    chunk = f.read(min(MIB, left))
                    self.wfile.write(chunk)
                    left -= len(chunk)
            if client not in dropped:
                dropped[client] = stop
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests_seen


def run_modelsync(url: str, sha256: str, folder: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, url, sha256, str(folder)], check=True, capture_output=True,
                          text=True)
    return time.perf_counter() - started, json.loads(done.stdout)


def run_curl(url: str, target: Path) -> tuple[float, str]:
    started = time.perf_counter()
    first = subprocess.run(["curl", "-s", "-o", str(target), url])
    assert first.returncode != 0, "the first curl was meant to be interrupted"
    subprocess.run(["curl", "-sf", "-C", "-", "-o", str(target), url], check=True)
    subprocess.run(["sync"], check=True)
    digest = subprocess.run(["openssl", "dgst", "-sha256", str(target)], check=True, capture_output=True, text=True)
    return time.perf_counter() - started, digest.stdout.strip().split()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="a folder on the disk to test (default: a temp folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=args.dir))
    try:
        source = work / "source.bin"
        sha256 = make_file(source, args.size_mib * MIB)
        with open(source, "rb") as f:  # into the page cache for both runs
            while f.read(16 * MIB):
                pass
        server, seen = serve(source)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        (work / "modelsync").mkdir()
        ours, answer = run_modelsync(f"{base}/modelsync/model.bin?token=not-shown", sha256, work / "modelsync")
        assert answer["sha256"] == sha256 and (work / "modelsync" / "model.bin").stat().st_size == args.size_mib * MIB
        theirs, digest = run_curl(f"{base}/curl/model.bin", work / "curl.bin")
        assert digest == sha256
        server.shutdown()
        print(f"download of {args.size_mib} MiB, dropped half way once and resumed (requests: {seen})")
        print(f"  modelsync (process, receive + verify + fsync + rename): {ours:8.2f} s  "
              f"(in the receiver {answer['seconds']:.2f} s, {answer['fetched'] / MIB:.0f} MiB fetched)")
        print(f"  curl -C - + sync + openssl dgst -sha256:                {theirs:8.2f} s")
        print(f"  ratio modelsync / curl: {ours / theirs:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
