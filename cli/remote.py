"""The commands that ask the central server: fleet (what it knows), job check, token issue; the client, token and
error handling that cli/orders.py shares."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote

from .data_dirs import server_data_path
from .errors import CliError
from .output import print_json


def _client(url: str | None, token: str | None):
    from modelsync.shared.push_client import NodeCredentials, PushError, ServerClient

    url = url or os.environ.get("MODELSYNC_SERVER")
    if not url:
        raise CliError("say which central server: --server http://HOST:8188 (or MODELSYNC_SERVER)", 2)
    try:
        return ServerClient(url, NodeCredentials("modelsync-cli", token), retries=1, timeout=30)
    except PushError as exc:
        raise CliError(str(exc), 2) from None


READER_TOKEN = "the queue token (or the admin token): --token, or MODELSYNC_QUEUE_TOKEN"
ADMIN_TOKEN = "the admin token: --admin-token, or MODELSYNC_ADMIN_TOKEN"


def _ask(call, *args: Any, token: str = READER_TOKEN) -> dict[str, Any]:
    """The server's answer; a refusal or an unreachable server as one CliError line (401/403 name the token to use)."""
    from modelsync.shared.push_client import PushError

    try:
        return call(*args)
    except PushError as exc:
        hint = f" (give {token})" if exc.status in (401, 403) else ""
        raise CliError(str(exc) + hint) from None


def _reader_token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("MODELSYNC_QUEUE_TOKEN") or os.environ.get("MODELSYNC_ADMIN_TOKEN") or None


def admin_client(args: argparse.Namespace, doing: str):
    """A client with the admin token; a usage error (exit 2) before anything is sent when there is none."""
    admin = args.admin_token or os.environ.get("MODELSYNC_ADMIN_TOKEN")
    if not admin:
        raise CliError(f"{doing} needs {ADMIN_TOKEN}", 2)
    return _client(args.server, admin)


def ask_admin(call, *args: Any) -> dict[str, Any]:
    return _ask(call, *args, token=ADMIN_TOKEN)


def _fleet_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The path and query of a `fleet` verb (options a verb does not have are None)."""
    option = lambda name: getattr(args, name, None)  # noqa: E731
    paths = {
        "nodes": ("api/v1/servers", {}),
        "models": ("api/v1/models", {"q": option("text"), "type": option("type")}),
        "wanted": ("api/v1/models/wanted", {}),
        "transfers": ("api/v1/transfers", {"state": option("state"), "server_id": option("node")}),
        "updates": ("api/v1/models", {"update": "available"}),
        "demand": ("api/v1/analytics/demand", {"window": option("window"), "kind": option("kind")}),
        "risks": ("api/v1/analytics/fleet", {}),
        "recommendations": (f"api/v1/servers/{quote(option('node_id') or '', safe='')}/recommendations", {}),
    }
    path, params = paths[args.what]
    params["limit"] = option("limit")
    return path, {k: v for k, v in params.items() if v is not None}


def cmd_fleet(args: argparse.Namespace) -> int:
    from . import fleet_tables

    path, params = _fleet_request(args)
    token_hint = READER_TOKEN + (f", or node {args.node_id}'s own token" if args.what == "recommendations" else "")
    answer = _ask(_client(args.server, _reader_token(args)).get_json, path, params or None, token=token_hint)
    if args.json:
        print_json(answer)
    else:
        getattr(fleet_tables, args.what)(answer)
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
        client = admin_client(args, "issuing a token on a remote server")
        answer = ask_admin(client.post_json, f"api/v1/servers/{quote(args.node_id, safe='')}/token", {})
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
