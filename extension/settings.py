"""The extension's settings (a section of the host's Settings tab, kept by the host in shared.opts) and typed access to it."""
from __future__ import annotations

import inspect
import socket
from dataclasses import dataclass

from ..shared.node.config import NodeConfig
from ..shared.push_client import PushError, check_server_url
from ..shared.records import DEFAULT_MAX_HASH_SIZE
from ..shared.transfer.receiver import DEFAULT_FLOOR_BYTES

SECTION = ("modelsync", "Model Sync")
CATEGORY = "system"  # the Settings tab's heading above the section (A1111 1.7+ and Forge); older hosts have none
MB = 1024 * 1024
GB = 1024 * MB


@dataclass
class ServerURL:
    """The central server's URL as the node uses it: `url` is "" when none is set or the setting cannot be used;
    `note` says what was fixed in the setting, or why it cannot be used."""

    url: str
    note: str | None = None


def server_url_of(setting: str) -> ServerURL:
    """"127.0.0.1:8188" is taken as "http://127.0.0.1:8188" (and said so); a URL that cannot be fixed is not used."""
    text = setting.strip()
    if not text:
        return ServerURL("")
    try:
        return ServerURL(check_server_url(text).rstrip("/"))
    except PushError as exc:
        problem = str(exc)
    if "://" not in text:
        try:
            fixed = check_server_url("http://" + text).rstrip("/")
        except PushError:
            pass
        else:
            return ServerURL(fixed, f"the setting {text!r} has no http://, so {fixed} is used: write it so in Settings > Model Sync")
    return ServerURL("", f"{problem}; fix it in Settings > Model Sync")


@dataclass
class NodeSettings:
    server_url: str = ""
    node_id: str = ""
    display_name: str = ""
    token: str = ""
    api_url: str = ""
    push_on_startup: bool = True
    hash_new_files: bool = True  # also the default of the tab's "Calculate Hashes"
    rescan_minutes: int = 0
    heartbeat_seconds: int = 60
    max_hash_size_mb: int = 0
    extra_roots: str = ""
    watch_folders: bool = True
    allow_transfers: bool = True  # take transfer orders to this node
    allow_serving: bool = True  # serve this node's files to peers holding a grant
    files_url: str = ""  # where peers fetch this node's files (empty: serve none)
    max_transfers: int = 2
    bandwidth_mb: float = 0.0  # MB/s per transfer (0: unlimited); a float default: read_settings casts to its type
    free_floor_gb: float = DEFAULT_FLOOR_BYTES / GB

    @property
    def extra_root_list(self) -> list[str]:
        return [line.strip() for line in self.extra_roots.replace(";", "\n").splitlines() if line.strip()]

    @property
    def effective_node_id(self) -> str:
        return self.node_id.strip() or socket.gethostname()

    @property
    def server(self) -> ServerURL:
        return server_url_of(self.server_url)

    def node_config(self) -> NodeConfig:
        """These settings as the node engine takes them."""
        server = self.server
        return NodeConfig(
            node_id=self.effective_node_id, server_url=server.url, server_note=server.note,
            token=self.token.strip() or None, display_name=self.display_name or None, api_url=self.api_url or None,
            files_url=(self.files_url.strip().rstrip("/") or None) if self.allow_serving else None,
            hash_new_files=self.hash_new_files, max_hash_size=self.max_hash_size_mb * MB or DEFAULT_MAX_HASH_SIZE,
            rescan_seconds=self.rescan_minutes * 60, heartbeat_seconds=self.heartbeat_seconds, watch=self.watch_folders,
            receive=self.allow_transfers, max_transfers=max(1, self.max_transfers),
            bandwidth_bps=int(self.bandwidth_mb * MB) or None, free_floor_bytes=int(self.free_floor_gb * GB),
        )


# option key -> (NodeSettings field, label)
OPTIONS: dict[str, tuple[str, str]] = {
    "modelsync_server_url": ("server_url", "Central server URL, e.g. http://central:8188 (empty: local scan only)"),
    "modelsync_node_id": ("node_id", "This node's id (empty: host name)"),
    "modelsync_display_name": ("display_name", "Display name"),
    "modelsync_token": ("token", "Node token (empty: given by the server at first push)"),
    "modelsync_api_url": ("api_url", "Base URL where the job queue reaches this node's API"),
    "modelsync_push_on_startup": ("push_on_startup", "Scan and push the inventory on start-up"),
    "modelsync_hash_new_files": ("hash_new_files", "Hash new files automatically (also the default of the tab's Calculate Hashes)"),
    "modelsync_rescan_minutes": ("rescan_minutes", "Re-scan interval in minutes (0: off)"),
    "modelsync_heartbeat_seconds": ("heartbeat_seconds", "Heartbeat to the central server every N seconds (0: off)"),
    "modelsync_max_hash_size_mb": ("max_hash_size_mb", "Largest file to hash, MB (0: default, 15 GB)"),
    "modelsync_extra_roots": ("extra_roots", "Extra model folders (one per line)"),
    "modelsync_watch_folders": ("watch_folders", "Re-scan soon after model files appear, change or disappear"),
    "modelsync_allow_transfers": ("allow_transfers", "Allow transfers to this node (models copied from peers)"),
    "modelsync_allow_serving": ("allow_serving", "Allow serving this node's models to peers (with a grant from the central server)"),
    "modelsync_files_url": ("files_url", "Base URL peers fetch this node's files from, e.g. http://10.0.0.5:7860"),
    "modelsync_max_transfers": ("max_transfers", "Transfers to this node at the same time"),
    "modelsync_bandwidth_mb": ("bandwidth_mb", "Bandwidth limit per transfer, MB/s (0: none)"),
    "modelsync_free_floor_gb": ("free_floor_gb", "Free disk space a transfer leaves, GB"),
}


def register_options() -> None:
    """Called from on_ui_settings. The section goes under the "System" category where the host has categories
    (OptionInfo's `category_id`, A1111 1.7+ and Forge); elsewhere it would land under "Uncategorized"."""
    import gradio as gr
    from modules import shared

    defaults = NodeSettings()
    category = {"category_id": CATEGORY} if "category_id" in inspect.signature(shared.OptionInfo).parameters else {}
    for key, (field_name, label) in OPTIONS.items():
        default = getattr(defaults, field_name)
        # the host's Settings tab makes a component for str, int and bool defaults only; a float needs its own
        component = {"component": gr.Number} if isinstance(default, float) else {}
        shared.opts.add_option(key, shared.OptionInfo(default, label, section=SECTION, **component, **category))


def read_settings() -> NodeSettings:
    """The current values; options not registered yet (API-only start) keep their defaults."""
    from modules import shared

    values = {}
    for key, (field_name, _label) in OPTIONS.items():
        value = getattr(shared.opts, key, None)
        if value is not None:
            values[field_name] = type(getattr(NodeSettings(), field_name))(value)
    return NodeSettings(**values)
