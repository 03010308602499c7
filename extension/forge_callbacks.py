"""Wires the node service into the host: settings section, start-up sync, and the tab."""
from __future__ import annotations

from pathlib import Path

from .host_paths import host_roots
from .node_service import NodeService
from .settings import read_settings, register_options

_service: NodeService | None = None


def host_data_path() -> Path:
    """`<host data folder>/modelsync` (Forge/A1111 --data-dir; the host's own folder by default)."""
    from modules import paths

    return Path(getattr(paths, "data_path", None) or paths.script_path) / "modelsync"


def service() -> NodeService:
    global _service
    if _service is None:
        _service = NodeService(host_data_path(), read_settings, host_roots)
    return _service


def on_app_started(demo, app) -> None:  # demo is None in API-only mode
    """Start the background thread: the start-up scan and push (when set), then push retries, heartbeats
    and re-scans; it returns at once."""
    service().start_background(initial_sync=read_settings().push_on_startup)


def on_ui_tabs() -> list[tuple[object, str, str]]:
    from .tab import build_tab

    return [(build_tab(service()), "Model Sync", "modelsync_tab")]


def register() -> None:
    from modules import script_callbacks

    script_callbacks.on_ui_settings(register_options)
    script_callbacks.on_app_started(on_app_started)
    script_callbacks.on_ui_tabs(on_ui_tabs)
