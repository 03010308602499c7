"""`modelsync node`: the node agent without Forge, a long-running process. The engine is the extension's
(shared/node/service.py): the start-up scan with hashes and its push, heartbeats, timed re-scans and re-scans after a
change, push retries, and the transfers the central server orders; beside it the file server for peers (`--listen`).
Its heartbeats carry the state it knows: the free disk of each folder and the floor (no host: loaded checkpoint,
busy and GPU are null; torch is never imported here).
SIGINT and SIGTERM stop it cleanly: a transfer under way is left to resume from its temp file."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .errors import CliError
from .local import _roots, open_node_catalog

log = logging.getLogger("modelsync.node")

STOP_TIMEOUT_SECONDS = 30


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CliError(f"--listen wants HOST:PORT, got {text!r}", 2)
    return host, int(port)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _files_url(given: str | None, host: str, port: int) -> str:
    if given:
        parts = urlsplit(given)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise CliError(f"--files-url must be an http(s) URL with a host, e.g. http://10.0.0.5:{port}, got {given!r}", 2)
        return given.rstrip("/")
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"


def cmd_node(args: argparse.Namespace) -> int:
    from modelsync.shared.node.config import NodeConfig
    from modelsync.shared.node.service import NodeService
    from modelsync.shared.push_client import PushError, check_server_url

    roots = _roots(args)
    if not roots:
        raise CliError("give at least one folder (ROOT or --role KIND=DIR)", 2)
    try:
        server_url = check_server_url(args.server).rstrip("/")
    except PushError as exc:
        raise CliError(str(exc), 2) from None
    db, folder = open_node_catalog(args)
    db.close()
    logging.getLogger("modelsync").setLevel(min(logging.getLogger("modelsync").getEffectiveLevel(), logging.INFO))

    service = NodeService(folder, lambda: config, lambda: roots)  # config: read from the first round on, set below
    file_server, files_url = None, None
    if not args.no_serve:
        file_server, files_url = _start_file_server(args, folder, service.request_rescan)
    config = NodeConfig(
        node_id=args.server_id, server_url=server_url, token=args.token or os.environ.get("MODELSYNC_TOKEN") or None,
        display_name=args.display_name, api_url=args.api_url, files_url=files_url, hash_new_files=True,
        max_hash_size=args.max_size, rescan_seconds=args.rescan, heartbeat_seconds=args.heartbeat, watch=not args.no_watch,
        receive=not args.no_receive, max_transfers=args.max_transfers, bandwidth_bps=args.bandwidth or None,
        free_floor_bytes=args.free_floor,
    )

    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    log.info("modelsync node %s: %d folders, central server %s, files %s, transfers %s", args.server_id, len(roots),
             server_url, files_url or "not served", "taken" if config.receive else "refused")
    service.start_background(initial_sync=True)
    stopping.wait()
    log.info("modelsync node %s: stopping", args.server_id)
    service.stop(STOP_TIMEOUT_SECONDS)
    if file_server is not None:
        file_server.stop()
    log.info("modelsync node %s: stopped", args.server_id)
    return 0


def _start_file_server(args: argparse.Namespace, folder: Path, on_changed: Callable[[tuple[str, ...]], None]):
    from .node_files import FileServer, files_app

    host, port = _listen_address(args.listen)
    app = files_app(args.server_id, folder, args.token or os.environ.get("MODELSYNC_TOKEN") or None, on_changed)
    try:
        server = FileServer(app, host, port)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1) from None
    files_url = _files_url(args.files_url, host, server.port)
    if _is_loopback(urlsplit(files_url).hostname) and not _is_loopback(urlsplit(args.server).hostname):
        print(f"modelsync node: warning: peers are told to fetch this node's files from {files_url}, a loopback address "
              "only this machine reaches; give --listen and --files-url with an address the other nodes reach",
              file=sys.stderr)
    server.start()
    return server, files_url
