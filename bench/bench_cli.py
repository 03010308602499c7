"""The command as a user meets it: whole processes, start-up included, side by side with `python -c pass` and
`openssl dgst -sha256` in one run. Run it in the venv that has pandas and numpy (a Forge venv has both; so does
.venv, through gradio): the command must not pay for them.

python bench/bench_cli.py [--size-mib 1024] [--files 2000] [--runs 5] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_hashing import make_file


def median_seconds(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def make_tree(root: Path, files: int) -> None:
    if root.exists():
        return
    header = b'{"w":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}'
    for i in range(files):
        path = root / "Lora" / f"d{i % 50}" / f"m{i:05d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(len(header).to_bytes(8, "little") + header + i.to_bytes(16, "little"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="modelsync-bench-cli-"))
    base.mkdir(parents=True, exist_ok=True)
    modelsync = shutil.which("modelsync") or sys.exit("modelsync is not on PATH: activate the venv")
    for module in ("pandas", "numpy"):
        if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
            print(f"note: {module} is not installed here, so this run cannot show that the command avoids it")
    env = {**os.environ, "CONFIG_DATA_PATH": str(base / "data")}

    baseline = median_seconds([sys.executable, "-c", "pass"], args.runs, env)
    print(f"median of {args.runs} runs, whole processes; python -c pass: {baseline:.3f} s")
    small = base / "small.safetensors"
    make_file(small, 64, True)
    for label, argv in (("--help", [modelsync, "--help"]), ("--version", [modelsync, "--version"]),
                        ("hash (64 MiB safetensors)", [modelsync, "hash", str(small)])):
        seconds = median_seconds(argv, args.runs, env)
        print(f"  {label:28} {seconds:6.3f} s   {seconds / baseline:5.1f}x python -c pass")

    tree = base / "tree"
    make_tree(tree, args.files)
    subprocess.run([modelsync, "scan", str(tree), "--hash"], check=True, capture_output=True, env=env)
    for label, argv in ((f"scan, {args.files} unchanged files", [modelsync, "scan", str(tree), "--hash"]),
                        (f"models, {args.files} files", [modelsync, "models"]),
                        (f"models --json, {args.files} files", [modelsync, "models", "--json"])):
        seconds = median_seconds(argv, args.runs, env)
        print(f"  {label:28} {seconds:6.3f} s   {seconds / baseline:5.1f}x python -c pass")

    print(f"one {args.size_mib} MiB file, page-cached, against openssl dgst -sha256 (median of {args.runs}, interleaved)")
    for name, safetensors in (("big.bin", False), ("big.safetensors", True)):
        path = make_file(base / name, args.size_mib, safetensors)
        subprocess.run(["cat", str(path)], check=True, stdout=subprocess.DEVNULL)  # warm the page cache
        ours, openssl = [], []
        for _ in range(args.runs):
            ours.append(median_seconds([modelsync, "hash", str(path)], 1, env))
            openssl.append(median_seconds(["openssl", "dgst", "-sha256", str(path)], 1, env))
        m, o = statistics.median(ours), statistics.median(openssl)
        extra = " (SHA256 and AutoV3: two digests of the data)" if safetensors else ""
        print(f"  {name:18} modelsync hash {m:6.2f} s   openssl {o:6.2f} s   ratio {m / o:5.2f}{extra}")


if __name__ == "__main__":
    main()
