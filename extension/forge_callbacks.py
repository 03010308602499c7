"""Wires the node service into the host: settings section, start-up sync, the tab, and the model-loaded event
(the node's state: a loaded model is reported within seconds)."""
from __future__ import annotations

from pathlib import Path

from .host_paths import host_roots
from .host_state import HostState
from .node_service import NodeService
from .settings import read_settings, register_options

_service: NodeService | None = None
_host_state = HostState(changed=lambda: service().state_changed())


def host_data_path() -> Path:
    """`<host data folder>/modelsync` (Forge/A1111 --data-dir; the host's own folder by default)."""
    from modules import paths

    return Path(getattr(paths, "data_path", None) or paths.script_path) / "modelsync"


def host_listens_everywhere() -> bool:
    """Whether other machines reach the host's port: --listen, or a --server-name that is not loopback."""
    from modules import shared

    options = shared.cmd_opts
    if getattr(options, "listen", False):
        return True
    name = getattr(options, "server_name", None)
    return bool(name) and name not in ("127.0.0.1", "localhost", "::1")


def service() -> NodeService:
    global _service
    if _service is None:
        _service = NodeService(host_data_path(), read_settings, host_roots, listens_everywhere=host_listens_everywhere,
                               activity=_host_state.activity)
    return _service


def on_app_started(demo, app) -> None:  # demo is None in API-only mode
    """Register the peers' file route on the host's app (answered only while serving to peers is allowed), and
    start the background thread: the start-up scan and push (when set), then push retries, heartbeats, re-scans
    and transfers; it returns at once."""
    node = service()
    if app is not None:
        node.register_files_route(app)
    node.start_background(initial_sync=read_settings().push_on_startup)


def on_model_loaded(sd_model) -> None:
    """Runs in the host's model load: records the event and wakes the state thread, nothing more."""
    _host_state.model_loaded(sd_model)


def on_ui_tabs() -> list[tuple[object, str, str]]:
    from .tab import build_tab

    return [(build_tab(service()), "Model Sync", "modelsync_tab")]


def register() -> None:
    from modules import script_callbacks

    script_callbacks.on_ui_settings(register_options)
    script_callbacks.on_app_started(on_app_started)
    script_callbacks.on_model_loaded(on_model_loaded)
    script_callbacks.on_ui_tabs(on_ui_tabs)
