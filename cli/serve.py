"""`modelsync serve`: the central server on its embedded default (SQLite in CONFIG_DATA_PATH)."""
from __future__ import annotations

import argparse

from .errors import CliError


def cmd_serve(args: argparse.Namespace) -> int:
    from modelsync.server.config import ConfigError
    from modelsync.server.main import run

    try:
        run(args.host, args.port)
    except ConfigError as exc:
        raise CliError(f"{exc}; fix the environment variable and start again", 2) from None
    return 0
