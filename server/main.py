"""`modelsync serve`: run the central server with uvicorn (loopback by default, logs to stdout).

uvicorn's own proxy-header handling is off: by default it believes X-Forwarded-For from 127.0.0.1, which behind
a proxy on the same host makes every client "loopback". The app reads forwarded headers itself, and only from
MODELSYNC_TRUSTED_PROXIES (server/auth.py `real_client`). Whoever runs the app with uvicorn directly must pass
`--no-proxy-headers` too."""
from __future__ import annotations

import errno
import gc
import logging
import socket
import sqlite3
import sys

import uvicorn

from modelsync.shared.catalog import SCHEMA_VERSION

from .app import create_app
from .config import ServerConfig

# how uvicorn runs the app (tests that start one in-process use the same)
UVICORN_OPTIONS = {"proxy_headers": False, "log_config": None, "access_log": False, "timeout_graceful_shutdown": 30}


class StartError(RuntimeError):
    """The server cannot start; str() says why and what to do. Nothing was changed."""


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, before anything else: a port in use must not cost a migration or a new admin token."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise StartError(f"cannot listen on {host!r}: not an address of this machine (try 127.0.0.1 or 0.0.0.0)") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartError(f"port {port} on {host} is in use: stop what listens there, or choose another --port") from None
        raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _check_registry(config: ServerConfig) -> None:
    """Refuse a registry written by a newer modelsync (a downgrade) before the app touches it."""
    path = config.database_path
    if not path.is_file():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise StartError(f"cannot read the registry {path}: {exc}") from None
    if version > SCHEMA_VERSION:
        raise StartError(f"the registry {path} has schema version {version}, newer than this modelsync's {SCHEMA_VERSION}: "
                         "a downgrade is refused; run the newer modelsync, or restore the backup taken before the upgrade "
                         f"({config.backups_path})")


class _Server(uvicorn.Server):
    """On SIGINT/SIGTERM the nodes' long-polls for orders are answered at once: uvicorn waits for open requests
    before it stops, and a long-poll may otherwise hold it for 30 s."""

    def handle_exit(self, sig: int, frame: object) -> None:
        ctx = getattr(self.config.app.state, "modelsync", None)
        if ctx is not None:
            ctx.signals.close()
        super().handle_exit(sig, frame)


def run(host: str = "127.0.0.1", port: int = 8188, config: ServerConfig | None = None) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config or ServerConfig.from_env()
    sock = _bind(host, port)
    try:
        _check_registry(config)
        app = create_app(config)
        # Everything loaded so far lives as long as the process: keep it out of the collector's full passes, which
        # otherwise stall a request for tens of milliseconds now and then (the job checks' p99).
        gc.freeze()
        _Server(uvicorn.Config(app, **UVICORN_OPTIONS)).run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m modelsync.server.main")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    args = parser.parse_args()
    run(args.host, args.port)
