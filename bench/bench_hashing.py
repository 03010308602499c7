"""Hashing speed: one large file against `openssl dgst -sha256`, and a tree hashed in parallel vs serially.

python bench/bench_hashing.py [--size-mib 2048] [--files 4] [--file-mib 1024] [--dir DIR]
Files are generated once (page-cached by a warm-up pass), so both sides measure hashing, not the disk.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from modelsync.shared.scan.hashing import hash_file, hash_files


def make_file(path: Path, mib: int, safetensors: bool) -> Path:
    if path.exists() and path.stat().st_size >= mib * 1024 * 1024:
        return path
    with open(path, "wb") as f:
        if safetensors:
            header = b'{"w":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (mib * 1024 * 1024, mib * 1024 * 1024)
            f.write(len(header).to_bytes(8, "little") + header)
        block = os.urandom(64 * 1024 * 1024)
        for _ in range(mib // 64):
            f.write(block)
    return path


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def best_of(n: int, fn) -> float:
    return min(timed(fn) for _ in range(n))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-mib", type=int, default=1024)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="modelsync-bench-hash-"))
    base.mkdir(parents=True, exist_ok=True)

    print(f"one {args.size_mib} MiB file (best of 3, page-cached)")
    for name, st in (("big.bin", False), ("big.safetensors", True)):
        path = make_file(base / name, args.size_mib, st)
        hash_file(str(path))  # warm-up: page cache
        ours = best_of(3, lambda: hash_file(str(path)))
        openssl = best_of(3, lambda: subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, capture_output=True))
        print(f"  {name:18} modelsync {ours:6.2f} s   openssl {openssl:6.2f} s   ratio {ours / openssl:5.2f}")

    paths = [str(make_file(base / f"tree{i}.bin", args.file_mib, False)) for i in range(args.files)]
    hash_files(paths, workers=1)
    serial = best_of(2, lambda: hash_files(paths, workers=1))
    parallel = best_of(2, lambda: hash_files(paths, workers=2))
    total = args.files * args.file_mib
    print(f"tree of {args.files} x {args.file_mib} MiB (best of 2)")
    print(f"  one after another  {serial:6.2f} s  {total / serial:7.0f} MiB/s")
    print(f"  2 workers          {parallel:6.2f} s  {total / parallel:7.0f} MiB/s   speed-up {serial / parallel:4.2f}x")


if __name__ == "__main__":
    main()
