"""The commands that ask the central server: fleet nodes|models|wanted, job check, token issue."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .data_dirs import server_data_path
from .errors import CliError
from .output import print_json, print_table


def _client(url: str | None, token: str | None):
    from modelsync.shared.push_client import NodeCredentials, PushError, ServerClient

    url = url or os.environ.get("MODELSYNC_SERVER")
    if not url:
        raise CliError("say which central server: --server http://HOST:8188 (or MODELSYNC_SERVER)", 2)
    try:
        return ServerClient(url, NodeCredentials("modelsync-cli", token), retries=1, timeout=30)
    except PushError as exc:
        raise CliError(str(exc), 2) from None


def _ask(call, *args: Any) -> dict[str, Any]:
    from modelsync.shared.push_client import PushError

    try:
        return call(*args)
    except PushError as exc:
        hint = ""
        if exc.status == 401:
            hint = " (give the queue or admin token with --token, or MODELSYNC_QUEUE_TOKEN)"
        raise CliError(str(exc) + hint) from None


def _reader_token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("MODELSYNC_QUEUE_TOKEN") or os.environ.get("MODELSYNC_ADMIN_TOKEN") or None


def cmd_fleet(args: argparse.Namespace) -> int:
    client = _client(args.server, _reader_token(args))
    if args.what == "nodes":
        answer = _ask(client.get_json, "api/v1/servers")
        rows = answer["servers"]
        columns = ("id", "online", "file_count", "model_count", "unhashed_count", "unreachable_count", "broken_count",
                   "last_seen", "api_url")
    elif args.what == "models":
        params = {"limit": args.limit, **({"q": args.text} if args.text else {}), **({"type": args.type} if args.type else {})}
        answer = _ask(client.get_json, "api/v1/models", params)
        rows = answer["models"]
        for row in rows:
            row["nodes"] = f"{row.get('online_node_count', 0)}/{row.get('node_count', 0)}"
        columns = ("id", "type", "base", "autov2", "nodes", "name")
    else:
        answer = _ask(client.get_json, "api/v1/models/wanted", {"limit": args.limit})
        rows = answer.get("wanted", [])
        columns = ("kind", "reference", "requests", "last_wanted")
    if args.json:
        print_json(answer)
    else:
        print_table(rows, columns, empty=f"no {args.what}")
    return 0


def cmd_job_check(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.job == "-" else _read(args.job)
    try:
        job: Any = json.loads(text)
    except ValueError:
        job = text  # an infotext
    client = _client(args.server, _reader_token(args))
    body = {"job": job, "record": args.record}
    if args.node:
        answer = _ask(client.post_json, f"api/v1/servers/{args.node}/dispatch-check", body)
    else:
        answer = _ask(client.post_json, "api/v1/jobs/availability", body)
    if args.json:
        print_json(answer)
    else:
        print(_job_words(answer, args.node))
    return 0 if answer.get("ok", answer.get("model_availability", {}).get("available")) else 1


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read the job {path}: {exc.strerror or exc}", 2) from None
    except UnicodeDecodeError:
        raise CliError(f"the job {path} is not UTF-8 text: give an A1111 JSON body or an infotext", 2) from None


def _job_words(answer: dict[str, Any], node: str | None) -> str:
    lines = []
    if node:
        lines.append(f"{node}: " + ("ok, send the payload (the job in this node's names)" if answer.get("ok")
                                    else f"not ok: {answer.get('action')} ({answer.get('reason', '')})"))
        for n in answer.get("nodes") or []:
            lines.append(f"  can run it: {n.get('server_id')}")
        if answer.get("ok"):
            lines.append(json.dumps(answer.get("payload"), indent=2))
    else:
        availability = answer.get("model_availability", {})
        lines.append("can run" if availability.get("available") else f"cannot run: {availability.get('reason', '')}")
        for c in availability.get("candidates") or []:
            lines.append(f"  candidate: {c.get('server_id')}")
    requirements = answer.get("requirements") or answer.get("model_availability", {}).get("requirements") or []
    for ref in requirements:
        lines.append(f"  {ref['kind']} {ref['reference']!r}: {ref['status']}" + (f" ({ref['reason']})" if ref.get("reason") else ""))
    for w in answer.get("warnings") or []:
        lines.append(f"  warning: {w if isinstance(w, str) else json.dumps(w)}")
    return "\n".join(lines)


def cmd_token_issue(args: argparse.Namespace) -> int:
    if args.server:
        admin = args.admin_token or os.environ.get("MODELSYNC_ADMIN_TOKEN")
        if not admin:
            raise CliError("issuing a token on a remote server needs the admin token: --admin-token or MODELSYNC_ADMIN_TOKEN", 2)
        answer = _ask(_client(args.server, admin).post_json, f"api/v1/servers/{args.node_id}/token", {})
        token = answer["token"]
    else:
        token = _issue_locally(args)
    if args.json:
        print_json({"server_id": args.node_id, "token": token})
    else:
        print(token)
        print(f"give it to node {args.node_id}: modelsync scan ... --token TOKEN (it is stored after the first push)",
              file=sys.stderr)
    return 0


def _issue_locally(args: argparse.Namespace) -> str:
    from .lean_imports import import_sqlite_utils_without_dataframes

    import_sqlite_utils_without_dataframes()
    from modelsync.shared.catalog import open_catalog
    from modelsync.shared.inventory import valid_server_id

    if not valid_server_id(args.node_id):
        raise CliError(f"{args.node_id!r} is not a node id: 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)", 2)
    registry = server_data_path(args.data) / "registry.db"
    if not registry.is_file():
        raise CliError(f"no registry at {registry}: run this where the central server keeps its data (its CONFIG_DATA_PATH, "
                       "or --data), or ask a running server with --server URL --admin-token T")
    from modelsync.server.auth import issue_token

    return issue_token(open_catalog(registry), args.node_id)  # the servers table is as old as the registry: no migration
