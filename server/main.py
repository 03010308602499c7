"""`modelsync serve`: run the central server with uvicorn (loopback by default, logs to stdout).

uvicorn's own proxy-header handling is off: by default it believes X-Forwarded-For from 127.0.0.1, which behind
a proxy on the same host makes every client "loopback". The app reads forwarded headers itself, and only from
MODELSYNC_TRUSTED_PROXIES (server/auth.py `real_client`). Whoever runs the app with uvicorn directly must pass
`--no-proxy-headers` too."""
from __future__ import annotations

import gc
import logging
import sys

import uvicorn

from .app import create_app
from .config import ServerConfig

# how uvicorn runs the app (tests that start one in-process use the same)
UVICORN_OPTIONS = {"proxy_headers": False, "log_config": None, "access_log": False, "timeout_graceful_shutdown": 30}


def run(host: str = "127.0.0.1", port: int = 8188, config: ServerConfig | None = None) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config or ServerConfig.from_env())
    # Everything loaded so far lives as long as the process: keep it out of the collector's full passes, which
    # otherwise stall a request for tens of milliseconds now and then (the job checks' p99).
    gc.freeze()
    uvicorn.run(app, host=host, port=port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m modelsync.server.main")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    args = parser.parse_args()
    run(args.host, args.port)
