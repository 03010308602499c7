"""What a refused request costs the server (its own process, uvicorn): a registered node's sync URL, no token.

1. one gzip bomb: ~0.5 MiB of gzip that inflates to ~500 MiB of valid JSON;
2. one huge plain body (60 MiB);
3. both kinds at once, N of each (default 4 + 4);
each measured as the growth of the server process's peak RSS (VmHWM, reset through /proc/PID/clear_refs before each
scenario) over its RSS then. Limit: a refused request costs the server less than 8 MiB, whatever its body.
4. for scale, the same bomb with the node's token: the body is read (within MODELSYNC_MAX_DECOMPRESSED_BYTES).

python bench/bench_hostile.py [--bomb-mib 500] [--plain-mib 60] [--at-once 4] [--skip-admitted]
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support_server import RunningServer, server_process  # noqa: E402

MIB = 1024 * 1024
LIMIT_MIB = 8.0


def gzip_bomb(server_id: str, inflated_mib: int) -> bytes:
    """Valid JSON (an inventory with a huge unknown field), gzip-compressed a MiB at a time."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [deflater.compress(json.dumps({"format": 1, "server_id": server_id, "files": []})[:-1].encode() + b', "pad": "')]
    block = b"a" * MIB
    parts.extend(deflater.compress(block) for _ in range(inflated_mib))
    parts.append(deflater.compress(b'"}'))
    parts.append(deflater.flush())
    return b"".join(parts)


def status_of(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> int:
    """Set the process's peak RSS back to its current RSS (Linux 4.0+); the RSS then."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_of(pid)["VmRSS"]


def post(server: RunningServer, path: str, body: bytes | int, headers: dict[str, str]) -> str:
    """Send a request over a raw socket (a body given as an int: that many bytes, sent as the server takes them);
    the answer's status, or how the server ended the connection."""
    host, port = server.base_url.removeprefix("http://").split(":")
    length = body if isinstance(body, int) else len(body)
    head = f"POST {path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sent = 0
    with socket.create_connection((host, int(port)), timeout=120) as conn:
        conn.sendall(head.encode())
        try:
            if isinstance(body, int):
                block = b" " * MIB
                while sent < body:
                    conn.sendall(block[: min(MIB, body - sent)])
                    sent += min(MIB, body - sent)
            else:
                conn.sendall(body)
                sent = len(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed without reading the rest: expected for a refused request
        try:
            answer = conn.recv(4096)
        except ConnectionResetError:
            return f"reset after {sent / MIB:.1f} MiB sent"
    status = answer.split(b" ", 2)[1].decode() if answer else "closed"
    return f"{status} after {sent / MIB:.1f} MiB sent"


def scenario(server: RunningServer, pid: int, name: str, requests: list[tuple[bytes | int, dict[str, str]]]) -> dict:
    rss = reset_peak(pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: post(server, "/api/v1/servers/gpu-01/models/sync", *r), requests))
    seconds = time.perf_counter() - started
    time.sleep(0.2)
    growth = status_of(pid)["VmHWM"] - rss
    return {"scenario": name, "requests": len(requests), "answers": sorted(set(answers)), "seconds": round(seconds, 3),
            "rss_before_mib": round(rss / MIB, 1), "peak_growth_mib": round(growth / MIB, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bomb-mib", type=int, default=500, help="what the gzip bomb inflates to")
    parser.add_argument("--plain-mib", type=int, default=60, help="the plain body's size (under the 64 MiB limit)")
    parser.add_argument("--at-once", type=int, default=4, help="requests of each kind sent together")
    parser.add_argument("--skip-admitted", action="store_true", help="leave out the bomb sent with the node's token")
    args = parser.parse_args()

    bomb = gzip_bomb("gpu-01", args.bomb_mib)
    print(f"gzip bomb: {len(bomb) / MIB:.2f} MiB inflating to {args.bomb_mib} MiB of valid JSON", flush=True)
    gzip_headers = {"Content-Encoding": "gzip"}
    results = []
    with tempfile.TemporaryDirectory() as data, server_process(Path(data) / "server") as server:
        pid = server.process.pid
        token = server.post("/api/v1/servers/gpu-01/models/sync", json={"format": 1, "server_id": "gpu-01", "files": []}).json()["token"]
        refused = [
            ("gzip bomb, no token", [(bomb, gzip_headers)]),
            (f"{args.plain_mib} MiB plain body, no token", [(args.plain_mib * MIB, {})]),
            (f"{args.at_once} bombs + {args.at_once} plain bodies at once, no token",
             [(bomb, gzip_headers)] * args.at_once + [(args.plain_mib * MIB, {})] * args.at_once),
            ("gzip bomb, a wrong token", [(bomb, {**gzip_headers, "Authorization": "Bearer " + "x" * 43})]),
        ]
        for name, requests in refused:
            results.append(scenario(server, pid, name, requests))
            print(json.dumps(results[-1]), flush=True)
        if not args.skip_admitted:
            admitted = scenario(server, pid, "gzip bomb with the node's token (read: for scale)",
                                [(bomb, {**gzip_headers, "Authorization": f"Bearer {token}"})])
            print(json.dumps(admitted), flush=True)

    ok = True
    for result in results:
        passed = result["peak_growth_mib"] < LIMIT_MIB and all(a.startswith(("401", "403")) for a in result["answers"])
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {result['scenario']}: peak RSS +{result['peak_growth_mib']} MiB "
              f"(limit {LIMIT_MIB:.0f} MiB), {', '.join(result['answers'])}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
