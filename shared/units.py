"""Sizes as people read them (the dashboard, the Forge tab, progress lines)."""
from __future__ import annotations


def human_size(size: int | None) -> str:
    """1536 -> "1.5 KB" (powers of 1024); "" when the size is unknown."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
