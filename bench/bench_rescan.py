"""Re-scan of an unchanged tree of N model files: must take under 2 s and read no model bytes.

python bench/bench_rescan.py [--files 10000] [--dir /tmp/modelsync-bench-rescan]
"""
from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
from pathlib import Path

from modelsync.shared.scan import scanner as scanner_module
from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.records import Root
from modelsync.shared.scan.scanner import scan


def write_tree(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"group{i % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"__metadata__": {"ss_output_name": f"lora{i}"},
                             "lora_unet_down.lora_down.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        (folder / f"lora{i:05d}.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<f", i))


class ReadCounter:
    def __init__(self) -> None:
        self.headers = 0
        self.hashed_files = 0
        self.read_header = scanner_module.read_header
        self.hash_files = scanner_module.hash_files
        scanner_module.read_header = self.count_header
        scanner_module.hash_files = self.count_hash

    def count_header(self, path):
        self.headers += 1
        return self.read_header(path)

    def count_hash(self, paths, **kwargs):
        self.hashed_files += len(paths)
        return self.hash_files(paths, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="modelsync-bench-rescan-"))
    tree = base / "Lora"
    if not tree.exists():
        write_tree(tree, args.files)
    db = open_catalog(base / "catalog.db")
    migrate(db)
    roots = [Root(str(tree), "lora")]
    started = time.perf_counter()
    first = scan(roots, db, "bench", calculate_hashes=True)
    first_s = time.perf_counter() - started
    counter = ReadCounter()
    started = time.perf_counter()
    again = scan(roots, db, "bench", calculate_hashes=True)
    rescan_s = time.perf_counter() - started
    print(f"files                      {again.stats.total}")
    print(f"first scan with hashes     {first_s:.2f} s ({first.stats.hashesCalculated} hashed)")
    print(f"re-scan, unchanged tree    {rescan_s:.2f} s (limit 2 s)")
    print(f"model files read on re-scan: headers {counter.headers}, hashed {counter.hashed_files}")
    print(f"re-scan result: added {again.stats.added}, updated {again.stats.updated}, calculated {again.stats.hashesCalculated}")


if __name__ == "__main__":
    main()
