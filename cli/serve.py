"""`modelsync serve`: the central server on its embedded default (SQLite in CONFIG_DATA_PATH)."""
from __future__ import annotations

import argparse

from .errors import CliError


def cmd_serve(args: argparse.Namespace) -> int:
    from modelsync.server.config import ConfigError, ServerConfig
    from modelsync.server.main import StartError, run

    from .data_dirs import ready_folder

    try:
        config = ServerConfig.from_env()
    except ConfigError as exc:
        raise CliError(f"{exc}; fix the environment variable and start again", 2) from None
    ready_folder(config.data_path)
    try:
        run(args.host, args.port, config)
    except StartError as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the live registry (SQLite's online backup: safe while the server writes)."""
    import sqlite3
    from pathlib import Path

    from modelsync.server.registry import backup_database

    from .data_dirs import ready_folder, server_data_path

    data = server_data_path(args.data)
    registry = data / "registry.db"
    if not registry.is_file():
        raise CliError(f"no registry at {registry}: give the server's data folder with --data (its CONFIG_DATA_PATH)")
    target_folder = ready_folder(Path(args.to) if args.to else data / "backups")
    source = sqlite3.connect(str(registry))
    try:
        copy = backup_database(source, target_folder, "manual")
    except sqlite3.Error as exc:
        raise CliError(f"the backup of {registry} failed: {exc}") from None
    finally:
        source.close()
    print(copy)
    return 0
