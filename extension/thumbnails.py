"""Small preview thumbnails for the models table, as data URIs: gradio 3.41 and 4.40 both render them in a
markdown cell, and neither needs the file to be inside its allowed paths."""
from __future__ import annotations

import base64
import os

from ..shared.images import ImageError, shrink_to_jpeg
from ..shared.push_client import preview_path

THUMBNAIL_PIXELS = 64

_cache: dict[tuple[str, int, int], str] = {}


def thumbnail_markdown(model_path: str) -> str:
    """`![preview](data:image/jpeg;base64,...)` of the model's `<stem>.preview.jpeg`; "" when it has none or
    it cannot be read. Cached by (path, size, mtime)."""
    path = preview_path(model_path)
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        _cache[key] = _render(path)
    return _cache[key]


def _render(path: str) -> str:
    try:
        data, _size = shrink_to_jpeg(path, THUMBNAIL_PIXELS, quality=80)
    except ImageError:
        return ""
    return f"![preview](data:image/jpeg;base64,{base64.b64encode(data).decode()})"
