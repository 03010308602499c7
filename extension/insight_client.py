"""What the central server advises this node, for the Forge tab (extension/tab.py shows it)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..shared.push_client import NodeCredentials, PushError, ServerClient
from .node_service import NodeService


class NodeInsight:
    """What the central server advises this node, read in a thread of its own with short timeouts (the tab never
    waits on the server): its recommendations (GET /api/v1/servers/{id}/recommendations), the SHA256s of its models
    with a Civitai update (GET /api/v1/models?update=available), and ordering a recommended copy for itself
    (POST /api/v1/transfers with the node's own token)."""

    TIMEOUT, CONNECT_TIMEOUT = 4.0, 2.0  # each of the two reads; the tab shows "Reading..." meanwhile

    def __init__(self, service: NodeService):
        self.service = service
        self.recommendations: dict[str, Any] | None = None
        self.updates: set[str] = set()
        self.error: str | None = None
        self.order_note = ""
        self.order_placed = False  # the last order made a transfer (its note can go once the advice shows it)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _client(self) -> ServerClient:
        config = self.service.config()
        credentials = NodeCredentials.load(self.service.data_path, config.node_id, (config.token or "").strip() or None)
        return ServerClient(config.server_url, credentials, timeout=self.TIMEOUT, connect_timeout=self.CONNECT_TIMEOUT,
                            retries=0)

    def _start(self, work: Callable[[], None]) -> bool:
        """Runs `work` in the background unless a read or an order runs already (then False)."""
        with self._lock:
            if self.busy():
                return False
            self._thread = threading.Thread(target=work, name="modelsync-insight", daemon=True)
            self._thread.start()
            return True

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def read(self) -> None:
        self._start(self._read)

    def _read(self) -> None:
        config = self.service.config()
        if not config.server_url:
            self.recommendations, self.error = None, None
            return
        try:
            client = self._client()
            self.recommendations = client.get_json(f"api/v1/servers/{config.node_id}/recommendations")
            listing = client.get_json("api/v1/models", {"update": "available", "server": config.node_id, "limit": 500})
        except PushError as exc:
            self.error = str(exc)
            return
        self.updates = {m["sha256"] for m in listing.get("models", []) if isinstance(m, dict) and m.get("update")}
        self.error = None

    def order(self, model_id: int, label: str) -> None:
        self.order_note = f"Ordering {label}..."  # before the thread starts: its answer comes after
        self.order_placed = False
        if not self._start(lambda: self._order(model_id, label)):
            self.order_note = f"Not ordered: a read or an order of the advice is under way; order {label} again."

    def _order(self, model_id: int, label: str) -> None:
        config = self.service.config()
        try:
            answer = self._client().post_json("api/v1/transfers", {"server_id": config.node_id, "model_id": model_id})
        except PushError as exc:
            self.order_note = f"**The order failed:** {exc}"
            return
        self.order_note = f"Transfer {answer.get('id')} of {label}: {answer.get('state')}."
        self.order_placed = True
        self._read()
