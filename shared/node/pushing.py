"""The inventory's way to the central server: the inventory waiting to be pushed (a newer scan's replaces it), one push
or heartbeat at a time (`lock`), a failed push tried again after the back-off delays, and nothing pushed by a re-scan
whose inventory is the one the server took last."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..inventory import Inventory
from ..push_client import PushError, send_previews
from .client import NodeClient
from .config import NodeConfig
from .contact import ANSWERED, PushStatus

log = logging.getLogger("modelsync.node")

RETRY_DELAYS_SECONDS = (5.0, 15.0, 60.0, 300.0)  # after the 1st, 2nd, 3rd, further failed pushes


@dataclass
class Schedule:
    """When the background thread next re-scans, retries the push and heartbeats (service clock; None: not planned)."""

    scan_at: float | None = None
    push_at: float | None = None
    heartbeat_at: float | None = None
    failures: int = 0


def inventory_digest(inventory: Inventory) -> str:
    return hashlib.sha256(inventory.to_json()).hexdigest()


class InventoryPusher:
    def __init__(self, config: Callable[[], NodeConfig], client_for: Callable[[NodeConfig], NodeClient],
                 status: PushStatus, schedule: Schedule, retry_delays: tuple[float, ...], clock: Callable[[], float]):
        self._config = config
        self._client_for = client_for
        self._status = status
        self._schedule = schedule
        self._retry_delays = retry_delays
        self._clock = clock
        self.lock = threading.Lock()  # one push or heartbeat at a time
        self._pending_lock = threading.Lock()
        self._pending: Inventory | None = None  # the inventory still to be pushed
        self._taken_digest: str | None = None  # of the last inventory the server took
        self.pushes_taken = 0  # pushes the server took so far

    @property
    def waiting(self) -> bool:
        """Whether an inventory waits to be pushed (a push failed and is tried again, or one is under way)."""
        return self._pending is not None

    def offer(self, inventory: Inventory | None, now: float, push_unchanged: bool = True) -> None:
        """A fresh inventory replaces any older one waiting, and is pushed at once (unless it is the one the server
        took last and nothing waits: then nothing is pushed, when `push_unchanged` is False)."""
        if inventory is None or not self._config().server_url:
            return
        with self._pending_lock:
            if not push_unchanged and self._pending is None and inventory_digest(inventory) == self._taken_digest:
                log.info("modelsync re-scan: nothing changed since the last push, nothing to push")
                return
            self._pending = inventory
            self._schedule.push_at = now

    def push_pending(self, now: float | None = None) -> bool | None:
        """Push the waiting inventory now, after any push under way; None when nothing waits (any more: a push under
        way took it). `now`: the background thread's time of a retry."""
        with self.lock:
            if self._pending is None:
                return None
            return self._push_pending(self._clock() if now is None else now)

    def _push_pending(self, now: float) -> bool:
        """Push the waiting inventory (the push lock held); on failure plan the next try by the back-off delays."""
        inventory = self._pending
        assert inventory is not None
        plan = self._schedule
        if self.push(inventory):
            with self._pending_lock:
                if self._pending is inventory:  # else a newer scan's inventory waits: its own push follows
                    self._pending = None
                    plan.push_at = None
            plan.failures = 0
            self._status.next_retry = None
            heartbeat = self._config().heartbeat_seconds
            plan.heartbeat_at = now + heartbeat if heartbeat > 0 else None
            return True
        plan.failures += 1
        delay = self._retry_delays[min(plan.failures, len(self._retry_delays)) - 1]
        plan.push_at = now + delay
        self._status.next_retry = time.time() + delay
        return False

    def push(self, inventory: Inventory) -> bool:
        """One push (no retry); True when the server took it. Then writes the previews the server offers for
        models that have none here, and sends the local previews the server asks for."""
        config = self._config()
        if not config.server_url:
            return False
        client = self._client_for(config)
        status = self._status
        status.attempts += 1
        status.pushing = True
        try:
            answer = client.push_inventory(inventory)
            status.contact, status.last_push, status.answer, status.error = ANSWERED, time.time(), answer, None
            status.previews_written = client.save_previews(inventory, answer)
            status.previews_sent = send_previews(client, inventory, answer)
            self._taken_digest = inventory_digest(inventory)
            self.pushes_taken += 1
            return True
        except PushError as exc:
            status.failed(exc)
            log.warning("modelsync push to %s failed: %s", config.server_url, exc)
            return False
        finally:
            status.pushing = False
