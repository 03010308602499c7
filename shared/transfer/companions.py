"""Bringing a copied model's companions along (its A1111 JSON, Civitai info, preview) from the source that served
it, with the same grant, so the node's next scan already knows everything. Best effort: a companion that is missing
or cannot be fetched is skipped (logged); one already beside the copy is never overwritten."""
from __future__ import annotations

import logging
import os

import requests

from ..atomic_write import write_atomic
from .protocol import (
    COMPANIONS,
    GRANT_HEADER,
    MAX_COMPANION_BYTES,
    NODE_HEADER,
    companion_url,
)

log = logging.getLogger(__name__)


def fetch_companions(base_url: str, sha256: str, node_id: str, grant: str, model_path: str,
                     timeout: float = 30) -> list[str]:
    """The companions written beside `model_path` (named after its stem)."""
    written: list[str] = []
    stem = os.path.splitext(model_path)[0]
    with requests.Session() as session:
        for kind, suffix in COMPANIONS.items():
            target = stem + suffix
            if os.path.exists(target):
                continue
            try:
                with session.get(companion_url(base_url, sha256, kind), headers={GRANT_HEADER: grant, NODE_HEADER: node_id},
                                 timeout=timeout, stream=True) as response:
                    if response.status_code != 200:
                        continue
                    data = bytearray()
                    for chunk in response.iter_content(64 * 1024):
                        data.extend(chunk)
                        if len(data) > MAX_COMPANION_BYTES:
                            raise ValueError(f"over {MAX_COMPANION_BYTES} bytes")
                write_atomic(target, bytes(data))
                written.append(target)
            except (requests.RequestException, OSError, ValueError) as exc:
                log.warning("the %s of %s did not come along: %s", suffix, os.path.basename(model_path), exc)
    return written
