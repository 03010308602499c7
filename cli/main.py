"""The `modelsync` command: scan, hash and serve without Forge."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.hashing import hash_file
from modelsync.shared.model_folders import roots_for
from modelsync.shared.records import ROLES, Root
from modelsync.shared.scanner import DEFAULT_MAX_HASH_SIZE, scan

from .progress_bar import ScanProgressBar

log = logging.getLogger("modelsync")


def data_path() -> Path:
    return Path(os.environ.get("CONFIG_DATA_PATH", "./data"))


def _role_root(text: str) -> Root:
    kind, sep, folder = text.partition("=")
    if not sep or kind not in ROLES or not folder:
        raise argparse.ArgumentTypeError(f"expected KIND=DIR with KIND one of {', '.join(ROLES)}, got {text!r}")
    return Root(folder, kind)


def _roots(args: argparse.Namespace) -> list[Root]:
    roots: list[Root] = []
    for folder in args.roots:
        roots.extend(roots_for(folder))
    roots.extend(args.role)
    return roots


def cmd_scan(args: argparse.Namespace) -> int:
    roots = _roots(args)
    if not roots:
        print("modelsync scan: give at least one folder (ROOT or --role KIND=DIR)", file=sys.stderr)
        return 2
    db = open_catalog(Path(args.data) / "catalog.db")
    migrate(db)
    bar = None if args.json or not sys.stderr.isatty() else ScanProgressBar()
    with logging_redirect_tqdm() if bar else contextlib.nullcontext():
        try:
            report = scan(
                roots,
                db,
                args.server_id,
                calculate_hashes=args.hash,
                workers=args.workers,
                max_hash_size=args.max_size,
                progress=bar.update if bar else None,
                display_name=args.display_name,
                api_url=args.api_url,
                forget_unreachable=args.forget_missing,
            )
        finally:
            if bar:
                bar.close()
    result = report.to_dict()
    push_failed = False
    if args.push:
        result["push"] = _push(args, report)
        push_failed = "error" in result["push"]
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(report.message)
        for problem in report.problems:
            print(f"  error: {problem.path}: {problem.reason}")
        for dup in report.duplicates:
            print(f"  duplicate {dup.sha256[:10]}: " + ", ".join(dup.paths))
        if args.push:
            print(f"Pushed to {args.push}: {result['push']}")
    if report.unavailable:
        folders = ", ".join(u.path for u in report.unavailable)
        print(f"modelsync scan: unavailable: {folders}; their files are kept (use --forget-missing to drop them)",
              file=sys.stderr)
    if push_failed:
        print(f"modelsync scan: the push to {args.push} failed: {result['push']['error']}", file=sys.stderr)
    return 1 if report.unavailable or push_failed else 0


def _push(args: argparse.Namespace, report) -> dict:
    from modelsync.shared.push_client import NodeCredentials, PushError, ServerClient

    credentials = NodeCredentials.load(Path(args.data), args.server_id, args.token or os.environ.get("MODELSYNC_TOKEN") or None)
    client = ServerClient(args.push, credentials)
    try:
        answer = client.push_inventory(report.inventory)
        written = client.save_previews(report.inventory, answer)
    except PushError as exc:
        return {"error": str(exc)}
    summary = {k: v for k, v in answer.items() if k in ("added", "updated", "removed", "unchanged", "unusable", "registered")}
    return {**summary, "previews_written": len(written), "warnings": answer.get("warnings", [])}


def cmd_hash(args: argparse.Namespace) -> int:
    results, status = [], 0
    for path in args.files:
        try:
            h = hash_file(path)
        except OSError as exc:
            results.append({"path": path, "error": str(exc)})
            status = 1
            continue
        results.append({"path": path, "size": os.path.getsize(path), **h.as_dict()})
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return status
    for r in results:
        if "error" in r:
            print(f"{r['path']}\n  error   {r['error']}", file=sys.stderr)
            continue
        print(r["path"])
        print(f"  sha256  {r['sha256']}")
        print(f"  autov2  {r['autov2']}")
        print(f"  autov1  {r['autov1'] or '-'}")
        print(f"  autov3  {r['autov3'] or '-'}")
    return status


def cmd_serve(args: argparse.Namespace) -> int:
    from modelsync.server.main import run

    run(args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelsync", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log every file's decisions")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="scan model folders into the local catalog")
    p.add_argument("roots", nargs="*", metavar="ROOT", help="a folder; a Forge/A1111 models/ folder maps its sub-folders to roles")
    p.add_argument("--role", action="append", default=[], type=_role_root, metavar="KIND=DIR", help="a folder with a role")
    p.add_argument("--hash", action="store_true", help="calculate hashes of new and changed files")
    p.add_argument("--json", action="store_true", help="print the full result as JSON (no progress bar)")
    p.add_argument("--workers", type=int, default=None, help="files hashed in parallel (default: CPU count)")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_HASH_SIZE, help="skip hashing files over this many bytes")
    p.add_argument("--data", default=str(data_path()), help="catalog folder (default: $CONFIG_DATA_PATH or ./data)")
    p.add_argument("--server-id", default=socket.gethostname(), help="this node's id (default: host name)")
    p.add_argument("--display-name", default=None)
    p.add_argument("--api-url", default=None, help="where the job queue reaches this node's A1111 API")
    p.add_argument("--push", metavar="URL", default=None, help="push the inventory to this central server")
    p.add_argument("--token", default=None, help="this node's push token (default: $MODELSYNC_TOKEN, or the one stored at registration)")
    p.add_argument("--forget-missing", action="store_true",
                   help="drop the catalog's files under folders that cannot be read now (by default they are kept, "
                        "flagged unreachable, and the command exits 1)")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("hash", help="print every hash of files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser("serve", help="run the central server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "json", False) and not args.verbose
    level = logging.WARNING if quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
