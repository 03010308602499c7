"""Where the command keeps state: a node's catalog and token in a per-user folder (the same from any working
folder), the central server's registry in CONFIG_DATA_PATH (default ./data, as the product plan says)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CliError

SERVER_DEFAULT = Path("./data")


def node_data_path(given: str | None) -> Path:
    """--data, else $CONFIG_DATA_PATH, else the user's data folder (e.g. ~/.local/share/modelsync)."""
    if given:
        return Path(given)
    if os.environ.get("CONFIG_DATA_PATH"):
        return Path(os.environ["CONFIG_DATA_PATH"])
    from platformdirs import user_data_dir

    return Path(user_data_dir("modelsync", appauthor=False))


def server_data_path(given: str | None) -> Path:
    return Path(given or os.environ.get("CONFIG_DATA_PATH") or SERVER_DEFAULT)


def ready_folder(path: Path) -> Path:
    """The folder, created if needed; CliError saying how to fix it otherwise."""
    if path.exists() and not path.is_dir():
        raise CliError(f"the data folder {path} is a file: remove it, or give another folder with --data or CONFIG_DATA_PATH")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the data folder {path}: {exc.strerror or exc}; give another with --data or "
                       "CONFIG_DATA_PATH") from None
    if not os.access(path, os.W_OK):
        raise CliError(f"the data folder {path} is not writable: fix its permissions, or give another with --data")
    return path
