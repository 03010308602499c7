"""The checks of what a route passes through from a request body: a wrong value is a 400 naming its field."""
from __future__ import annotations

import math
import re
from typing import Any

from ..errors import ApiError
from ..registry import MAX_ROW_ID

_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def node_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _NODE_ID.fullmatch(value):
        raise ApiError(400, f"{name} must be a node id (1-64 of A-Z a-z 0-9 . _ -)", name)
    return value


def sha256_hex(value: Any, name: str) -> str:
    """64 hex digits, lowercased."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ApiError(400, f"{name} must be 64 hex digits", name)
    return value.lower()


def byte_count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ROW_ID:
        raise ApiError(400, f"{name} must be a whole number of bytes, 0 or more", name)
    return value


def rate(value: Any, name: str) -> float | None:
    """A number, 0 or more; an int too large for a float (10**400) is refused before it is converted."""
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or (isinstance(value, int) and value > MAX_ROW_ID) or not math.isfinite(value) or value < 0):
        raise ApiError(400, f"{name} must be a number from 0 to {MAX_ROW_ID}, or null", name)
    return float(value)


def text(value: Any, name: str, limit: int, *, cut: bool = False) -> str | None:
    """A string of at most `limit` characters (longer: refused, or cut when `cut`), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", name)
    if len(value) > limit and not cut:
        raise ApiError(400, f"{name} must have at most {limit} characters", name)
    return value[:limit]
