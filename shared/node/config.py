"""The node engine's settings as a plain record: each face maps its own into it (the extension its Forge options,
`modelsync node` its flags); the engine reads them again every round, so a changed setting applies at once."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..records import DEFAULT_MAX_HASH_SIZE
from ..transfer.receiver import DEFAULT_FLOOR_BYTES

CIVITAI_HOSTS = ("civitai.com", "civitai.red")  # where the node's own key may go (and their sub-domains)
CIVITAI_IMAGE_HOSTS = ("image.civitai.com", "imagecache.civitai.com")


def _env_key() -> str | None:
    return os.environ.get("CIVITAI_API_KEY", "").strip() or None


def _key_hosts() -> tuple[str, ...]:
    """Civitai's hosts, and the host of CIVITAI_API_BASE when set (a proxy, a stand-in)."""
    base = urlsplit(os.environ.get("CIVITAI_API_BASE", "")).hostname
    return CIVITAI_HOSTS + ((base.lower(),) if base else ())


def _image_hosts() -> tuple[str, ...]:
    hosts = os.environ.get("CIVITAI_IMAGE_HOSTS", "")
    return tuple(h.strip().lower() for h in hosts.split(",") if h.strip()) or CIVITAI_IMAGE_HOSTS


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    server_url: str = ""  # "" : no usable central server (local scans only)
    server_note: str | None = None  # what the face fixed in the server setting, or why it cannot use it
    token: str | None = None  # None: the one stored at registration
    display_name: str | None = None
    api_url: str | None = None  # where the job queue reaches this node's WebUI API
    files_url: str | None = None  # where peers fetch this node's files (None: it serves none)
    hash_new_files: bool = True
    max_hash_size: int = DEFAULT_MAX_HASH_SIZE
    rescan_seconds: float = 0  # 0: no timed re-scan
    heartbeat_seconds: float = 60  # 0: none
    watch: bool = True  # re-scan soon after a change in the model folders
    receive: bool = True  # take transfer orders to this node
    max_transfers: int = 2  # in parallel
    bandwidth_bps: int | None = None  # per transfer; None: unlimited
    free_floor_bytes: int = DEFAULT_FLOOR_BYTES  # free space a transfer leaves on the destination's disk
    # the node's own Civitai key (CIVITAI_API_KEY): used for Civitai downloads before a key the server shares
    civitai_api_key: str | None = field(default_factory=_env_key, repr=False)
    civitai_key_hosts: tuple[str, ...] = field(default_factory=_key_hosts)  # the only hosts the own key goes to
    civitai_image_hosts: tuple[str, ...] = field(default_factory=_image_hosts)  # previews of downloads come from
