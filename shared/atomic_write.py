"""Writing a file so that readers see either the old content or the whole new one, never a part."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(target: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temporary file beside target, then rename it over target; `mode` (e.g. 0o600) before the rename."""
    folder = os.path.dirname(os.fspath(target)) or "."
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
