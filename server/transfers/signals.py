"""Wake-ups for the nodes' long-polls for orders, without polling the registry.

A long-poll takes `version(node)` BEFORE it reads the node's orders and, finding none, awaits `wait(node, version,
timeout)`: a change between the read and the wait makes the wait return at once, so no wake-up is lost.
`notify(node)`: that node's transfers changed (ordered, retried, cancelled, a source failed). `notify_holders_changed()`:
a source may have appeared for any node (a node back online or with a new files URL, a sync that added files,
exclusions ended): every waiting node reads its orders again. Safe to call from any thread.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Callable


class OrderSignals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._node_versions: dict[str, int] = {}
        self._holders_version = 0
        self._waiters: dict[str, set[Callable[[], None]]] = {}
        self._closed = False  # the server is stopping: every wait ends at once

    def close(self) -> None:
        """End every long-poll now (their answers go out before the server stops) and any later one at once."""
        with self._lock:
            self._closed = True
            wakers = [wake for waiting in self._waiters.values() for wake in waiting]
        for wake in wakers:
            wake()

    def _version(self, server_id: str) -> int:
        return self._holders_version + self._node_versions.get(server_id, 0)

    def version(self, server_id: str) -> int:
        with self._lock:
            return self._version(server_id)

    def notify(self, server_id: str) -> None:
        with self._lock:
            self._node_versions[server_id] = self._node_versions.get(server_id, 0) + 1
            wakers = list(self._waiters.get(server_id, ()))
        for wake in wakers:
            wake()

    def notify_holders_changed(self) -> None:
        with self._lock:
            self._holders_version += 1
            wakers = [wake for waiting in self._waiters.values() for wake in waiting]
        for wake in wakers:
            wake()

    async def wait(self, server_id: str, since: int, timeout: float) -> bool:
        """True as soon as something changed for the node since version `since`; False after `timeout` seconds, or
        once the server is stopping."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop has closed: nobody waits any more
                pass

        with self._lock:
            if self._closed:
                return False
            if self._version(server_id) != since:
                return True
            self._waiters.setdefault(server_id, set()).add(wake)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return not self._closed
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                waiting = self._waiters.get(server_id)
                if waiting is not None:
                    waiting.discard(wake)
                    if not waiting:
                        del self._waiters[server_id]
