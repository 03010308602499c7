"""The commands on this machine's own models: scan, hash, models, show."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .data_dirs import node_data_path, ready_folder
from .errors import CliError
from .lean_imports import import_sqlite_utils_without_dataframes
from .output import print_csv, print_json, print_table

log = logging.getLogger("modelsync")

LIST_COLUMNS = ("state", "role", "type", "base", "autov2", "size", "rel_name", "name", "problem")
CSV_COLUMNS = ("path", "rel_name", "role", "state", "size", "sha256", "autov2", "autov1", "autov3", "type", "base", "name",
               "metadata_source", "problem")


def open_node_catalog(args: argparse.Namespace):
    import_sqlite_utils_without_dataframes()
    from modelsync.shared.catalog import adopt_node_id, migrate, open_catalog

    folder = ready_folder(node_data_path(args.data))
    db = open_catalog(folder / "catalog.db")
    migrate(db)
    previous = adopt_node_id(db, args.server_id)
    if previous:
        log.warning("the catalog's files of node %r are now node %r's (nothing is hashed again)", previous, args.server_id)
    return db, folder


def _roots(args: argparse.Namespace):
    from modelsync.shared.scan.model_folders import roots_for

    roots = []
    for folder in args.roots:
        roots.extend(roots_for(os.path.abspath(folder)))
    roots.extend(args.role)
    return roots


def cmd_scan(args: argparse.Namespace) -> int:
    roots = _roots(args)
    if not roots:
        raise CliError("give at least one folder (ROOT or --role KIND=DIR)", 2)
    db, folder = open_node_catalog(args)
    from modelsync.shared.catalog_view import record_of
    from modelsync.shared.scan.scanner import scan

    bar = None
    if not args.json and sys.stderr.isatty():
        from .progress_bar import ScanProgressBar

        bar = ScanProgressBar()
    with _bar_logging(bar):
        try:
            report = scan(roots, db, args.server_id, calculate_hashes=args.hash, workers=args.workers,
                          max_hash_size=args.max_size, progress=bar.update if bar else None,
                          display_name=args.display_name, api_url=args.api_url, forget_unreachable=args.forget_missing)
        finally:
            if bar:
                bar.close()
    result = report.to_dict()
    push_error = None
    if args.push:
        try:
            result["push"] = _push(args, folder, report)
        except CliError as exc:
            push_error, result["push"] = str(exc), {"error": str(exc)}
    if args.json:
        result["files"] = [record_of(f).to_dict() for f in report.inventory.files]
        print_json(result)
    else:
        print(report.message)
        for problem in report.problems:
            print(f"  error: {problem.path}: {problem.reason}")
        for dup in report.duplicates:
            print(f"  duplicate {dup.sha256[:10]}: " + ", ".join(dup.paths))
        if "push" in result and push_error is None:
            print(_push_words(args.push, result["push"]))
    if report.unavailable:
        folders = ", ".join(u.path for u in report.unavailable)
        print(f"modelsync scan: unavailable: {folders}; their files are kept (use --forget-missing to drop them)",
              file=sys.stderr)
    if push_error:
        print(f"modelsync scan: the push failed: {push_error}", file=sys.stderr)
    return 1 if report.unavailable or push_error else 0


def _bar_logging(bar: Any):
    if bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _push(args: argparse.Namespace, folder: Path, report) -> dict[str, Any]:
    from modelsync.shared.push_client import NodeCredentials, PushError, ServerClient, send_previews

    credentials = NodeCredentials.load(folder, args.server_id, args.token or os.environ.get("MODELSYNC_TOKEN") or None)
    try:
        client = ServerClient(args.push, credentials, retries=2, backoff=0.3)
        answer = client.push_inventory(report.inventory)
        written = client.save_previews(report.inventory, answer)
        sent = send_previews(client, report.inventory, answer)
    except PushError as exc:
        raise CliError(str(exc)) from None
    if args.token and credentials.store is not None:
        credentials.remember(args.token)  # the server took it: next time it need not be given
    summary = {k: answer.get(k, 0) for k in ("added", "updated", "removed", "unchanged", "unusable")}
    return {**summary, "registered": bool(answer.get("registered")), "previews_written": len(written),
            "previews_sent": len(sent), "warnings": answer.get("warnings", [])}


def _push_words(url: str, push: dict[str, Any]) -> str:
    counts = ", ".join(f"{push[k]} {k}" for k in ("added", "updated", "removed", "unchanged"))
    lines = [f"Pushed to {url}: {counts}" + (f"; {push['unusable']} not usable (broken or unreachable)" if push["unusable"] else "")]
    if push["registered"]:
        lines.append("  this node is now registered; its token is stored in the data folder")
    if push["previews_written"]:
        lines.append(f"  {push['previews_written']} previews written from the central server")
    if push["previews_sent"]:
        lines.append(f"  {push['previews_sent']} local previews sent to the central server")
    for w in push["warnings"]:
        lines.append(f"  warning: {w['path']}: {w['field']}: {w['message']}")
    return "\n".join(lines)


def cmd_hash(args: argparse.Namespace) -> int:
    from modelsync.shared.scan.hashing import hash_file

    results, status = [], 0
    for path in args.files:
        try:
            if os.path.isdir(path):
                raise IsADirectoryError(path)
            h = hash_file(path)
        except OSError as exc:
            reason = ("no such file" if not os.path.lexists(path) else "is a folder" if isinstance(exc, IsADirectoryError)
                      else exc.strerror or str(exc))
            results.append({"path": path, "error": reason})
            status = 1
            continue
        results.append({"path": path, "size": os.path.getsize(path), **h.as_dict()})
    if args.json:
        print_json(results)
        return status
    for r in results:
        if "error" in r:
            print(f"modelsync hash: {r['path']}: {r['error']}", file=sys.stderr)
            continue
        print(r["path"])
        for key in ("sha256", "autov2", "autov1", "autov3"):
            print(f"  {key}  {r[key] or '-'}")
    return status


def cmd_models(args: argparse.Namespace) -> int:
    db, _ = open_node_catalog(args)
    from modelsync.shared.catalog_view import FileFilter, list_files

    filters = FileFilter(type=args.type, base=args.base, role=args.role, text=args.text, unhashed=args.unhashed,
                         duplicates=args.duplicates, problems=args.problems)
    records = [r.to_dict() for r in list_files(db, args.server_id, filters)]
    if args.json:
        print_json(records)
    elif args.csv:
        print_csv(records, CSV_COLUMNS)
    else:
        print_table(records, LIST_COLUMNS, empty=f"no files in the catalog of {args.server_id!r} match")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    db, _ = open_node_catalog(args)
    from modelsync.shared.catalog_view import find

    found = find(db, args.server_id, args.ref)
    if not found:
        raise CliError(f"the catalog of {args.server_id!r} has no file, SHA256 or AutoV2 {args.ref!r}: scan its folder first")
    if args.json:
        print_json([d.to_dict() for d in found])
        return 0
    for i, detail in enumerate(found):
        if i:
            print()
        r = detail.record
        print(r.path)
        for key in ("rel_name", "role", "state", "size", "sha256", "autov2", "autov1", "autov3", "type", "base"):
            print(f"  {key:<16} {getattr(r, key) if getattr(r, key) is not None else '-'}")
        if r.problem:
            print(f"  {'problem':<16} {r.problem}")
        for name, value in detail.fields.items():
            print(f"  {name:<16} {value['value']}  [{value['source'] or '?'}]")
        others = [p for p in detail.copies if p != r.path]
        if others:
            print(f"  {'duplicates':<16} " + ", ".join(others))
    return 0
