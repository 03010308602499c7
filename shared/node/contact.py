"""How the node reaches the central server: the timeouts, one client per purpose, and how the last request went
(`PushStatus`, which the status line puts in words)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..push_client import NodeCredentials, PushError
from .client import NodeClient
from .config import NodeConfig


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Connecting never takes longer than `connect`; `push` is the wait for the answer to a sync (the
    server reads, merges and commits the whole inventory first), `counts` for one page of the fleet counts."""

    connect: float = 3.0
    push: float = 120.0
    counts: float = 10.0


# PushStatus.contact: how the last request to the central server went
NOT_CONTACTED, ANSWERED, NO_ANSWER, REFUSED = "not contacted", "answered", "no answer", "refused"


@dataclass
class PushStatus:
    contact: str = NOT_CONTACTED  # NO_ANSWER: nothing answered; REFUSED: an HTTP answer that is an error
    pushing: bool = False  # a push is under way now
    last_push: float | None = None  # wall-clock time of the last push the server took
    answer: dict[str, Any] = field(default_factory=dict)  # the server's answer to it
    previews_written: list[str] = field(default_factory=list)
    previews_sent: list[str] = field(default_factory=list)  # local previews the central server took
    last_heartbeat: float | None = None
    error: str | None = None  # the last failure, in words (push, heartbeat or fleet counts); a success clears it
    attempts: int = 0  # pushes tried
    next_retry: float | None = None  # wall-clock time of the next try of a failed push

    @property
    def reachable(self) -> bool | None:
        """None: not contacted yet; True only when the server's last answer was a modelsync answer."""
        return None if self.contact == NOT_CONTACTED else self.contact == ANSWERED

    def answered(self, push_waiting: bool) -> None:
        """The server answered a heartbeat or the fleet counts: reachable; a failed push still waiting keeps its error."""
        self.contact = ANSWERED
        if not push_waiting:
            self.error = None

    def failed(self, exc: PushError) -> None:
        self.contact = REFUSED if exc.status is not None else NO_ANSWER
        self.error = str(exc)


class NodeClients:
    """One client per purpose (the fleet counts are read beside a push, the orders beside both: each on a session of
    its own); a changed server URL, node id or token gets a new one."""

    def __init__(self, data_path: Path, timeouts: Timeouts):
        self._data_path = data_path
        self._timeouts = timeouts
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[tuple[str, str, str], NodeClient]] = {}

    def client_for(self, config: NodeConfig, purpose: str = "push") -> NodeClient:
        key = (config.server_url, config.node_id, (config.token or "").strip())
        with self._lock:
            known = self._clients.get(purpose)
            if known is None or known[0] != key:
                credentials = NodeCredentials.load(self._data_path, key[1], key[2] or None)
                client = NodeClient(key[0], credentials, timeout=self._timeouts.push,
                                    connect_timeout=self._timeouts.connect, retries=0)  # the service's own back-off retries
                known = self._clients[purpose] = (key, client)
        known[1].files_url = config.files_url
        return known[1]
