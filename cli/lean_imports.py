"""Keep the command's start-up short: sqlite-utils imports pandas and numpy when they are installed (every Forge venv
has them), for conversions the command never asks for. Only the `modelsync` command calls this, before anything
imports sqlite_utils; the Forge process and the server's own tests import as usual."""
from __future__ import annotations

import sys

_OPTIONAL = ("pandas", "numpy")


def import_sqlite_utils_without_dataframes() -> None:
    if "sqlite_utils" in sys.modules:
        return
    blocked = [name for name in _OPTIONAL if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        import sqlite_utils  # noqa: F401
    finally:
        for name in blocked:
            del sys.modules[name]  # the GGUF reader may still import numpy when it needs it
