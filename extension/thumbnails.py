"""Small preview thumbnails for the models table, as data URIs: gradio 3.41 and 4.40 both render them in a
markdown cell, and neither needs the file to be inside its allowed paths."""
from __future__ import annotations

import base64
import io
import os

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
    from PIL import Image  # the host always has Pillow (gradio needs it)

    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""
    return f"![preview](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})"
