"""The node engine as the extension runs it (shared/node/service.py, shared with `modelsync node`): the host's
settings mapped into the engine's, the host's model folders as its roots, the host's lists refreshed after a
received file, the peers' file route, and this node's transfers as the tab shows them."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..shared.node import service as engine
from ..shared.push_client import PushError
from ..shared.records import Root
from ..shared.transfer.receiver import Received
from .files_route import HostFileServer, loopback_only, register_route
from .host_refresh import HostRefresher
from .settings import NodeSettings

log = logging.getLogger("modelsync.extension")

TRANSFERS_SHOWN = 20  # the newest of this node's transfers in the tab


class NodeService(engine.NodeService):
    def __init__(self, data_path: Path, settings: Callable[[], NodeSettings], roots: Callable[[list[str]], list[Root]],
                 refresher: HostRefresher | None = None, listens_everywhere: Callable[[], bool] = lambda: True,
                 **options):
        super().__init__(data_path, lambda: settings().node_config(), lambda: roots(settings().extra_root_list), **options)
        self._host_settings = settings
        self._listens_everywhere = listens_everywhere
        self.refresher = refresher or HostRefresher()
        self.transfers.on_recorded = self._host_sees
        self.files = HostFileServer(self.data_path, self.config, lambda: settings().allow_serving, self.request_rescan)
        self.node_transfers: list[dict[str, Any]] | None = None  # the last read (None: none yet, or no server)
        self.transfers_error: str | None = None
        self._transfers_thread: threading.Thread | None = None

    def settings(self) -> NodeSettings:
        """The host's settings as the tab shows them."""
        return self._host_settings()

    def _host_sees(self, root: Root, received: Received) -> None:
        """A received file is in the catalog and pushed: the host's list of its kind is refreshed, once it is idle."""
        self.refresher.request(root.role)

    def register_files_route(self, app) -> None:
        register_route(app, self.files)

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        self.refresher.stop(timeout)

    # this node's transfers, for the tab

    def read_node_transfers(self) -> None:
        """Read this node's transfers into `node_transfers` in a thread of its own, unless a read is under way."""
        with self._state_lock:
            if self.reading_node_transfers():
                return
            self._transfers_thread = threading.Thread(target=self._read_node_transfers, name="modelsync-transfers",
                                                      daemon=True)
            self._transfers_thread.start()

    def reading_node_transfers(self) -> bool:
        return self._transfers_thread is not None and self._transfers_thread.is_alive()

    def _read_node_transfers(self) -> None:
        config = self.config()
        if not config.server_url:
            self.node_transfers, self.transfers_error = None, None
            return
        try:
            answer = self._client_for(config, "transfers").get_json(
                "api/v1/transfers", {"server_id": config.node_id, "limit": TRANSFERS_SHOWN})
        except PushError as exc:
            self.transfers_error = str(exc)
            log.warning("modelsync could not read this node's transfers: %s", exc)
            return
        found = answer.get("transfers")
        self.node_transfers = [t for t in found if isinstance(t, dict)] if isinstance(found, list) else []
        self.transfers_error = None

    # the status line

    def serving_note(self) -> str | None:
        """Why peers may not reach this node's files URL, when they may not."""
        config, settings = self.config(), self.settings()
        if not settings.allow_serving or not config.files_url:
            return None
        return loopback_only(config.files_url, self._listens_everywhere())

    def status_line(self, now: float | None = None) -> str:
        note = self.serving_note()
        line = super().status_line(now)
        return f"{line} Warning: {note}." if note else line
