"""The "Model Sync" settings section (stored by the host in shared.opts) and typed access to it."""
from __future__ import annotations

import socket
from dataclasses import dataclass

SECTION = ("modelsync", "Model Sync")
MB = 1024 * 1024


@dataclass
class NodeSettings:
    server_url: str = ""
    node_id: str = ""
    display_name: str = ""
    token: str = ""
    api_url: str = ""
    push_on_startup: bool = True
    hash_new_files: bool = True
    rescan_minutes: int = 0
    heartbeat_seconds: int = 60
    max_hash_size_mb: int = 0
    extra_roots: str = ""

    @property
    def extra_root_list(self) -> list[str]:
        return [line.strip() for line in self.extra_roots.replace(";", "\n").splitlines() if line.strip()]

    @property
    def effective_node_id(self) -> str:
        return self.node_id.strip() or socket.gethostname()


# option key -> (NodeSettings field, label)
OPTIONS: dict[str, tuple[str, str]] = {
    "modelsync_server_url": ("server_url", "Central server URL (empty: local scan only)"),
    "modelsync_node_id": ("node_id", "This node's id (empty: host name)"),
    "modelsync_display_name": ("display_name", "Display name"),
    "modelsync_token": ("token", "Node token (empty: given by the server at first push)"),
    "modelsync_api_url": ("api_url", "Base URL where the job queue reaches this node's API"),
    "modelsync_push_on_startup": ("push_on_startup", "Scan and push the inventory on start-up"),
    "modelsync_hash_new_files": ("hash_new_files", "Hash new files automatically"),
    "modelsync_rescan_minutes": ("rescan_minutes", "Re-scan interval in minutes (0: off)"),
    "modelsync_heartbeat_seconds": ("heartbeat_seconds", "Heartbeat to the central server every N seconds (0: off)"),
    "modelsync_max_hash_size_mb": ("max_hash_size_mb", "Largest file to hash, MB (0: default, 15 GB)"),
    "modelsync_extra_roots": ("extra_roots", "Extra model folders (one per line)"),
}


def register_options() -> None:
    """Called from on_ui_settings."""
    from modules import shared

    defaults = NodeSettings()
    for key, (field_name, label) in OPTIONS.items():
        shared.opts.add_option(key, shared.OptionInfo(getattr(defaults, field_name), label, section=SECTION))


def read_settings() -> NodeSettings:
    """The current values; options not registered yet (API-only start) keep their defaults."""
    from modules import shared

    values = {}
    for key, (field_name, _label) in OPTIONS.items():
        value = getattr(shared.opts, key, None)
        if value is not None:
            values[field_name] = type(getattr(NodeSettings(), field_name))(value)
    return NodeSettings(**values)
