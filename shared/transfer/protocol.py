"""The peer file protocol's names, shared by the file server's faces and PeerSource."""
from __future__ import annotations

FILES_PATH = "/modelsync/v1/files/"  # + the SHA256: GET serves the file (Range, If-Range, ETag = "<sha256>")
GRANT_HEADER = "X-Modelsync-Grant"  # the grant the central server issued to the destination node
NODE_HEADER = "X-Modelsync-Node"  # the destination node's id, as the grant names it


# what a copy brings along beside the model: the A1111 JSON, Civitai Helper's info, the preview (kind -> suffix)
COMPANIONS = {"json": ".json", "civitai-info": ".civitai.info", "preview": ".preview.jpeg"}
MAX_COMPANION_BYTES = 8 * 1024 * 1024


def file_url(base_url: str, sha256: str) -> str:
    return base_url.rstrip("/") + FILES_PATH + sha256


def companion_url(base_url: str, sha256: str, kind: str) -> str:
    """GET serves the model's companion of that kind, beside the file of that SHA256, with the same grant."""
    return file_url(base_url, sha256) + "/" + kind


def etag(sha256: str) -> str:
    """The strong ETag of a file served by SHA256 (the If-Range validator a resume sends)."""
    return f'"{sha256}"'
