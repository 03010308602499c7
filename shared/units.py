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


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
               "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """"15GB" -> 15 * 10**9, "1.5GiB" -> 1.5 * 2**30, "4096" -> 4096 bytes; ValueError says what is accepted."""
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _SIZE_UNITS or not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a size: give bytes, or a number with KB, MB, GB, TB (powers of 1000) or "
                         "KiB, MiB, GiB, TiB")
    return int(value * _SIZE_UNITS[unit])
