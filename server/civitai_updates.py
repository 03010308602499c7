"""Civitai update checks (stub)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import ServerContext


def start(ctx: "ServerContext") -> None:
    """Started after the registry opens; returns an object with stop(), or None. (Stub: filled by its issue.)"""
    return None
