"""The shape of the node's background threads: a round, then a wait of the seconds the round asked for, until the
node stops. A round that raises is logged and the thread goes on after `failed_delay`: one bad round (a host that
changed under us, an answer nobody foresaw) must not silently end the scans, heartbeats or transfers."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("modelsync.node")


def run_rounds(round_: Callable[[], float], stopped: threading.Event, *, failed_delay: float, failure: str,
               wake: threading.Event | None = None) -> None:
    """`round_` returns the seconds until the next round. With `wake`, setting it starts the next round at once
    (whoever stops the thread sets it too); without, the wait is on `stopped`."""
    while not stopped.is_set():
        try:
            delay = round_()
        except Exception:
            log.exception(failure)
            delay = failed_delay
        if wake is None:
            if delay:
                stopped.wait(delay)
        else:
            wake.wait(delay)
            wake.clear()
