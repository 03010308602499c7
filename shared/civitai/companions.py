"""What a model downloaded from Civitai gets beside it, so the node's next scan already knows everything:
`<stem>.civitai.info` (the version JSON, what Civitai Helper writes and the scanner reads) and `<stem>.preview.jpeg`
(the version's first still image, from an allowed image host). Best effort: a failure is logged, never the
transfer's; a companion already there is never overwritten."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..atomic_write import write_atomic
from ..images import ImageError, shrink_to_jpeg
from ..scan.discovery import PREVIEW_SUFFIX
from ..transfer.urls import shown
from .client import CivitaiClient, ImageRejected

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".civitai.info"
PREVIEW_MAX_SIDE = 1024  # a preview that is not a JPEG is made one (the scanner and the tab read .preview.jpeg)
PREVIEW_QUALITY = 90


def write_companions(version: dict[str, Any], model_path: str, image_hosts: set[str],
                     client: CivitaiClient | None = None) -> list[str]:
    """The companions written beside `model_path` (named after its stem)."""
    written: list[str] = []
    stem = os.path.splitext(model_path)[0]
    sidecar = stem + SIDECAR_SUFFIX
    try:
        if not os.path.exists(sidecar):
            write_atomic(sidecar, json.dumps(version, indent=2, ensure_ascii=False).encode())
            written.append(sidecar)
    except OSError as exc:
        log.warning("the Civitai sidecar of %s was not written: %s", os.path.basename(model_path), exc)
    preview = stem + PREVIEW_SUFFIX
    image = next((i.get("url") for i in version.get("images") or []
                  if isinstance(i, dict) and isinstance(i.get("url"), str) and i.get("type", "image") == "image"), None)
    if image is None or os.path.exists(preview):
        return written
    try:
        data, content_type = (client or CivitaiClient()).download_image(image, image_hosts)
        if content_type != "image/jpeg":
            data, _ = shrink_to_jpeg(data, PREVIEW_MAX_SIDE, PREVIEW_QUALITY)
        write_atomic(preview, data)
        written.append(preview)
    except (ImageRejected, ImageError, OSError) as exc:
        log.warning("the preview of %s was not fetched from %s: %s", os.path.basename(model_path), shown(image), exc)
    return written
